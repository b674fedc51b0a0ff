"""The audit log: one JSON line per request, rejected ones included, in a file that rotates.

Each line holds the time, the request id (the caller's X-Request-Id if tame, else a fresh one, echoed in the
response), the key's id (never the key), the client's address, the method and path, the model and version,
the HTTP status, the latency, the request's rows and the rows of the merged model call it ran in. Never a
payload. `scripts/serve.py --audit_log FILE` turns it on; the file rotates at `--audit_max_mb`, keeping
`--audit_backups` old files (FILE.1, FILE.2, ...).
"""

from __future__ import annotations

import datetime
import json
import logging
import logging.handlers
from pathlib import Path

from research.errors import ConfigError


class AuditLog:
  """`AuditLog(path, max_bytes, backups).write(record)` appends `record`, with the time first, as one JSON line."""

  def __init__(self, path: str | Path, max_bytes: int = 64 << 20, backups: int = 5):
    try:
      handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    except OSError as e:
      raise ConfigError(f"cannot open the audit log {path}: {e.strerror}; give a writable --audit_log.") from None
    handler.setFormatter(logging.Formatter("%(message)s"))
    self._log = logging.Logger(f"research.audit:{path}")  # not in logging's tree: nothing else sees these lines
    self._log.addHandler(handler)
    self._handler = handler

  def write(self, record: dict) -> None:
    time = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
    self._log.info(json.dumps({"time": time, **record}, separators=(",", ":")))

  def close(self) -> None:
    self._handler.close()
