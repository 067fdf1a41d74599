"""Content hashing, in one place: every id policykit prints or checks is made here.

- :func:`canonical_json`: the one JSON spelling hashes are computed over
  (sorted keys, compact, ASCII, no NaN), so equal data gives equal bytes;
- :func:`sha256_hex` of bytes and :func:`file_sha256` of a file (streamed:
  model weights can be gigabytes).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def canonical_json(data: Any) -> str:
    """JSON with sorted keys, compact separators, ASCII only; NaN/inf are errors."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
