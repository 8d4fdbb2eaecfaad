"""Logging set-up: one line per event, the stable ``action`` name and the ids that matter.

Secrets never reach logs: settings hold them as SecretStr, and the one redactor here masks every
configured secret (API keys, server passwords) and any bearer token, wherever a line carries them.
"""

from __future__ import annotations

import logging
import re
import sys

from app.settings import Settings

MASK = "***"
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "color_message"}  # uvicorn's coloured copy of the message
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',]+")


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value the settings hold, longest first (so no prefix is left showing)."""
    values = [*settings.api_service_keys, *settings.api_admin_keys, *settings.metrics_keys,
              settings.neo4j_password,
              settings.embedding_api_key, settings.llm_api_key,
              settings.console_session_secret]
    found = {v.get_secret_value() for v in values if len(v.get_secret_value()) >= 4}
    return sorted(found, key=len, reverse=True)


class KeyValueFormatter(logging.Formatter):
    """``time level logger message key=value ...`` with the record's extra fields, redacted."""

    def __init__(self, fmt: str, secrets: list[str] | None = None) -> None:
        super().__init__(fmt)
        self.secrets = secrets or []

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD)
        line = f"{base} {extras}" if extras else base
        for secret in self.secrets:
            line = line.replace(secret, MASK)
        return _BEARER.sub(rf"\1{MASK}", line)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                           secrets_of(settings)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # The drivers are chatty at INFO; their warnings still show. Alembic logs its plugin
    # set-up at INFO whenever a process first reads the migration scripts (readiness).
    for noisy in ("neo4j", "httpx", "urllib3", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
