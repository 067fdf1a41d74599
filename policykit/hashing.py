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


def content_id(data: Any) -> str:
    """The id of JSON-able data: sha256 of its :func:`canonical_json`. Values JSON cannot spell
    (paths, enums) are written with ``str``, so ids of settings objects stay stable."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=str)
    return sha256_hex(text.encode("ascii"))


def derived_seed(text: str) -> int:
    """A 63-bit seed derived from ``text`` (the first 8 bytes of its sha256, little-endian): seeds that
    depend on what is drawn (a prompt and image index, a concept and template), never on batching."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def tensors_sha256(named_tensors) -> str:
    """sha256 over ``(name, tensor)`` pairs in name order: names, shapes, dtypes and bytes (the id of
    a module's weights, :func:`policykit.realera.noise_alignment.model_fingerprint`)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
