"""API keys: stored as salted hashes, compared in constant time, each with scopes and a rate limit.

The key file is JSON, a list of entries written by `scripts/serve.py --add_key` (the key itself is printed
once and never stored):

    [{"id": "team-a", "salt": "<hex>", "sha256": "<hex of sha256(salt + key)>",
      "models": ["mnist"] or ["*"], "admin": false, "rate_per_s": 50}]

A request sends `Authorization: Bearer <key>` (or `X-API-Key: <key>`). Keys are 32 random bytes, so one
salted SHA-256 is enough: there is nothing to guess. Logs and metrics name a key by its id only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path

from research import atomic
from research.errors import ConfigError


@dataclasses.dataclass
class Key:
  id: str
  salt: str
  sha256: str
  models: list[str]
  admin: bool = False
  rate_per_s: float = 0.0  # 0: no limit
  _tokens: float = dataclasses.field(default=0.0, repr=False)
  _refilled: float = dataclasses.field(default=0.0, repr=False)

  def may_call(self, model: str) -> bool:
    return "*" in self.models or model in self.models

  def take(self, now: float | None = None) -> float:
    """A token bucket of `rate_per_s` (burst: one second's worth): 0 if this request may go, else the seconds
    until it may."""
    if self.rate_per_s <= 0:
      return 0.0
    now = time.monotonic() if now is None else now
    burst = max(self.rate_per_s, 1.0)
    self._tokens = min(burst, self._tokens + (now - self._refilled) * self.rate_per_s) if self._refilled else burst
    self._refilled = now
    if self._tokens >= 1:
      self._tokens -= 1
      return 0.0
    return (1 - self._tokens) / self.rate_per_s


def _digest(salt: str, key: str) -> str:
  return hashlib.sha256(bytes.fromhex(salt) + key.encode()).hexdigest()


class KeyRing:
  def __init__(self, keys: list[Key]):
    self.keys = keys

  @classmethod
  def load(cls, path: str | Path) -> "KeyRing":
    try:
      entries = json.loads(Path(path).read_text())
      keys = [Key(e["id"], e["salt"], e["sha256"], list(e["models"]), bool(e.get("admin", False)),
                  float(e.get("rate_per_s", 0))) for e in entries]
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise ConfigError(f"--keys {path} cannot be read as a key file ({e}); create one with "
                        f"scripts/serve.py --keys {path} --add_key ID.") from None
    if not keys:
      raise ConfigError(f"--keys {path} holds no key; add one with scripts/serve.py --keys {path} --add_key ID.")
    return cls(keys)

  def authenticate(self, presented: str | None) -> Key | None:
    """The key whose hash matches, checking every entry in constant time; None if none does."""
    if not presented:
      return None
    found = None
    for key in self.keys:
      if hmac.compare_digest(_digest(key.salt, presented), key.sha256):
        found = key
    return found


def add_key(path: str | Path, key_id: str, models: list[str], admin: bool = False, rate_per_s: float = 0) -> str:
  """Adds an entry to the key file (created if missing) and returns the new key, which is stored nowhere."""
  path = Path(path)
  entries = json.loads(path.read_text()) if path.exists() else []
  if any(e["id"] == key_id for e in entries):
    raise ConfigError(f"--add_key {key_id}: {path} already has a key with that id; choose another id.")
  key, salt = "rk_" + secrets.token_urlsafe(32), secrets.token_hex(16)
  entries.append({"id": key_id, "salt": salt, "sha256": _digest(salt, key), "models": models, "admin": admin,
                  "rate_per_s": rate_per_s})
  atomic.write_text(path, json.dumps(entries, indent=2) + "\n")
  path.chmod(0o600)
  return key
