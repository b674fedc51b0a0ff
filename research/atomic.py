"""Atomic file writes that several processes may race on.

Every process of a multi-host run writes the same workdir files (config.json,
fitted preprocessing state, tokenizers). A fixed temporary name such as
`config.json.tmp` lets one process rename the other's half-written file away,
so each writer gets its own temporary file in the target's directory and
renames it over the target: readers see the old file or the new one, never a
mix, and a crash leaves no partial target.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
  """Yields a fresh temporary path beside `path`; on success it replaces `path`, on error it is removed."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  # A name, not a file (mkstemp's 0600 mode would stick to the target): writers create it with the umask.
  tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
  try:
    yield tmp
    os.replace(tmp, path)
  except OSError as e:  # (a full disk fails at a write, which names no file): name the target
    tmp.unlink(missing_ok=True)
    raise OSError(e.errno, e.strerror, str(path)) from e
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def write_text(path: str | os.PathLike, text: str) -> None:
  with replacing(path) as tmp:
    tmp.write_text(text)
