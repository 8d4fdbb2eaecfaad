"""Print the API's OpenAPI document without a server: ``python -m devtools.openapi``.

The document does not depend on settings (the suite's web processes serve this same one), so
``make ts-schema`` regenerates the TypeScript client's types from it after an API change; the
suite then checks them against the live document.
"""

from __future__ import annotations

import json
import sys

from app.api import create_app
from app.settings import load_settings


def main() -> None:
    # Never connected to: the app is built, not started.
    settings = load_settings(_env_file=None, api_docs=True,
                             database_url="postgresql+psycopg://unused@127.0.0.1:9/unused")
    json.dump(create_app(settings).openapi(), sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
