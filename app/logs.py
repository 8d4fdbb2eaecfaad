"""Logging set-up: one line per event, the stable ``action`` name and the ids that matter.

Secrets never reach logs: settings hold them as SecretStr, and a filter masks bearer tokens in
case a library logs a header.
"""

from __future__ import annotations

import logging
import re
import sys

from app.settings import Settings

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "color_message"}  # uvicorn's coloured copy of the message
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',]+")


class KeyValueFormatter(logging.Formatter):
    """``time level logger message key=value ...`` with the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD)
        line = f"{base} {extras}" if extras else base
        return _BEARER.sub(r"\1***", line)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # The drivers are chatty at INFO; their warnings still show.
    for noisy in ("neo4j", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
