"""The service's configuration: flags, ``NAP_*`` environment variables, or a ``.env`` file.

Precedence (highest first): command-line flags, environment variables, the ``.env`` file in
the working directory, the defaults below. The API tokens are secrets: held as a
``SecretStr``, never logged or echoed (``Settings.public()`` is what the logs show).
"""

from __future__ import annotations

import ipaddress
import pathlib
import re
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "parse_tokens", "read_token_file"]

#: Several tokens may be accepted at once (key rotation): separated by commas or whitespace.
_TOKEN_SEP = re.compile(r"[\s,]+")


class Settings(BaseSettings):
    """The service's settings: ``nap-gpu serve``'s flags, ``NAP_*`` environment variables or
    a ``.env`` file (flags win, then the environment, then ``.env``, then the defaults);
    frozen once made. A field ``snapshot_every`` is the flag ``--snapshot-every`` and the
    variable ``NAP_SNAPSHOT_EVERY`` (the token itself has no flag).

    Writes need a bearer token (``NAP_API_TOKEN``, several comma-separated, or the file
    ``NAP_API_TOKEN_FILE``, re-read on change or SIGHUP); without one the service refuses to
    bind anything but a loopback address.

    Examples
    --------
    >>> from nap_gpu.serve import Settings
    >>> s = Settings(memories=1000, snapshot_every=100, api_token="old,new", _env_file=None)
    >>> s.snapshot_every, s.tokens()
    (100, ('old', 'new'))
    >>> s.public()["api_token"]  # what the logs show
    '(set)'
    """

    model_config = SettingsConfigDict(env_prefix="NAP_", env_file=".env", extra="ignore",
                                      frozen=True)

    state_dir: pathlib.Path = Field(pathlib.Path("nap-state"),
                                    description="durable state: snapshots + write-ahead log")
    memories: int | None = Field(None, ge=1, description="population size, to create the state")
    seed: int = Field(0, ge=0, description="seed of the initial weights (creation only)")
    lr: float | None = Field(None, ge=0, le=1, description="law: learning rate (creation only)")
    gate: float | None = Field(None, ge=0, le=1, description="law: quality gate (creation only)")
    decay: float | None = Field(None, ge=0, le=1,
                                description="law: passive decay per round (creation only)")
    backend: str = Field("auto", description="auto, cuda, cpp or numpy")
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=0, le=65535, description="port to bind (0: any free port)")
    api_token: SecretStr | None = Field(None, description="bearer token(s) for writes")
    api_token_file: pathlib.Path | None = Field(None, description="file holding the token(s)")
    public_reads: bool = Field(False, description="GET endpoints need no token")
    fsync: Literal["always", "group"] = Field("always", description="log fsync policy")
    group_ms: float = Field(10.0, gt=0, description="group commit period (fsync=group)")
    snapshot_every: int = Field(1000, ge=0, description="snapshot every this many log records")
    keep: int = Field(3, ge=1, description="snapshots kept")
    wal_retention: Literal["kept", "newest"] = Field(
        "kept", description="log kept back to the oldest kept snapshot, or the newest only")
    decay_every_s: float = Field(0.0, ge=0, description="seconds between scheduled decays "
                                                        "(0: none)")
    max_body_bytes: int = Field(16 << 20, ge=1024, description="largest request body accepted")
    max_queued_events: int = Field(10_000_000, ge=1,
                                   description="events waiting for the writer before 503")
    max_read_ids: int = Field(100_000, ge=1, description="ids per weights/rank request")
    max_connections: int = Field(1000, ge=16, description="open connections at most")
    header_timeout_s: float = Field(10.0, gt=0, description="seconds to send a request head")
    body_timeout_s: float = Field(60.0, gt=0, description="seconds to send a request body")
    keep_alive_s: float = Field(5.0, gt=0, description="idle keep-alive connections close "
                                                       "after this")
    http: Literal["auto", "httptools", "h11"] = Field(
        "auto", description="HTTP parser: httptools (C), h11 (pure Python), auto: httptools "
                            "where installed")
    labels: pathlib.Path | None = Field(None, description=".npy of R/P labels (1/0) per memory")
    stats_interval: float = Field(15.0, gt=0, description="seconds between health checks")
    health_warmup: int = Field(10, ge=0, description="logged writes before the separation rule "
                                                     "applies (with labels)")
    health_settle: int = Field(50, ge=0, description="logged writes before the inversion-ratio "
                                                     "rule applies (with labels)")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _token_or_loopback(self) -> Settings:
        if not self.tokens() and not _is_loopback(self.host):
            raise ValueError(f"no API token is configured (NAP_API_TOKEN or NAP_API_TOKEN_FILE): "
                             f"refusing to bind {self.host!r}, which is not a loopback address")
        return self

    def tokens(self) -> tuple[str, ...]:
        """The accepted bearer tokens (from the file if one is named), or () for none.

        A token that is set but blank is refused: it is a mistake (an unset variable would
        be ``""``), and taken as "a token is configured" it would open a public address."""
        if self.api_token_file is not None:
            return read_token_file(self.api_token_file)
        if self.api_token is None or not self.api_token.get_secret_value():
            return ()
        tokens = parse_tokens(self.api_token.get_secret_value())
        if not tokens:
            raise ValueError("NAP_API_TOKEN is set but blank (only whitespace or commas)")
        return tokens

    def token(self) -> str | None:
        """The first accepted token, or None."""
        tokens = self.tokens()
        return tokens[0] if tokens else None

    def params(self) -> dict[str, float]:
        """The law's parameters given here (lr, gate, decay; unset ones left out)."""
        return {k: getattr(self, k) for k in ("lr", "gate", "decay")
                if getattr(self, k) is not None}

    def public(self) -> dict:
        """The settings as the logs may show them (no secret)."""
        shown = self.model_dump(mode="json", exclude={"api_token"})
        shown["api_token"] = "(set)" if self.api_token is not None else None
        return shown


def parse_tokens(text: str) -> tuple[str, ...]:
    """Tokens separated by commas, spaces or newlines (lines starting with # are comments)."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return tuple(t for t in _TOKEN_SEP.split("\n".join(lines)) if t)


def read_token_file(path: pathlib.Path) -> tuple[str, ...]:
    """The tokens in ``path`` (one a line: current and next during a rotation)."""
    try:
        text = pathlib.Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the API token file {path}: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    tokens = parse_tokens(text)
    if not tokens:
        raise ValueError(f"the API token file {path} is empty")
    return tokens


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
