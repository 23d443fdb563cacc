"""Print the service's OpenAPI schema (committed as docs/openapi.json; a test keeps it current):

    python -m nap_gpu.serve.openapi > docs/openapi.json
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

from .app import create_app
from .settings import Settings


def schema() -> dict:
    """The schema; it depends on no state, so none is opened."""
    return create_app(SimpleNamespace(settings=Settings(_env_file=None))).openapi()


if __name__ == "__main__":
    json.dump(schema(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
