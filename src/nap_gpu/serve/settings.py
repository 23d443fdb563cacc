"""The service's configuration: flags, ``NAP_*`` environment variables, or a ``.env`` file.

Precedence (highest first): command-line flags, environment variables, the ``.env`` file in
the working directory, the defaults below. The API token is a secret: it is held as a
``SecretStr`` and never logged or echoed (``Settings.public()`` is what the logs show).
"""

from __future__ import annotations

import ipaddress
import pathlib
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NAP_", env_file=".env", extra="ignore",
                                      frozen=True)

    state_dir: pathlib.Path = Field(pathlib.Path("nap-state"),
                                    description="durable state: snapshots + write-ahead log")
    memories: int | None = Field(None, ge=1, description="population size, to create the state")
    seed: int = Field(0, ge=0, description="seed of the initial weights (creation only)")
    backend: str = Field("auto", description="auto, cuda, cpp or numpy")
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=0, le=65535, description="port to bind (0: any free port)")
    api_token: SecretStr | None = Field(None, description="bearer token for writes")
    api_token_file: pathlib.Path | None = Field(None, description="file holding the token")
    public_reads: bool = Field(False, description="GET endpoints need no token")
    fsync: Literal["always", "group"] = Field("always", description="log fsync policy")
    group_ms: float = Field(10.0, gt=0, description="group commit period (fsync=group)")
    snapshot_every: int = Field(1000, ge=0, description="snapshot every this many log records")
    keep: int = Field(3, ge=1, description="snapshots kept")
    max_body_bytes: int = Field(16 << 20, ge=1024, description="largest request body accepted")
    max_queued_events: int = Field(10_000_000, ge=1,
                                   description="events waiting for the writer before 503")
    max_read_ids: int = Field(100_000, ge=1, description="ids per weights/rank request")
    labels: pathlib.Path | None = Field(None, description=".npy of R/P labels (1/0) per memory")
    stats_interval: float = Field(15.0, gt=0, description="seconds between health checks")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _token_or_loopback(self) -> Settings:
        if self.token() is None and not _is_loopback(self.host):
            raise ValueError(f"no API token is configured (NAP_API_TOKEN or NAP_API_TOKEN_FILE): "
                             f"refusing to bind {self.host!r}, which is not a loopback address")
        return self

    def token(self) -> str | None:
        """The bearer token (from the file if one is named), or None."""
        if self.api_token_file is not None:
            try:
                text = self.api_token_file.read_text().strip()
            except OSError as exc:
                raise ValueError(f"cannot read the API token file {self.api_token_file}: "
                                 f"{exc.strerror}") from None
            if not text:
                raise ValueError(f"the API token file {self.api_token_file} is empty")
            return text
        if self.api_token is not None and self.api_token.get_secret_value():
            return self.api_token.get_secret_value()
        return None

    def public(self) -> dict:
        """The settings as the logs may show them (no secret)."""
        shown = self.model_dump(mode="json", exclude={"api_token"})
        shown["api_token"] = "(set)" if self.api_token is not None else None
        return shown


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
