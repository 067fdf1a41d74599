"""Byte-identical artifacts: rewrite safetensors headers in one canonical form.

safetensors keeps ``__metadata__`` in a hash map, so two saves of the same
tensors with the same metadata can order the header's keys differently, and
two identical edits would hash differently. The header is JSON followed by
the raw tensor bytes, whose offsets are relative to the end of the header, so
re-serializing the header with sorted keys changes no tensor.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

_ALIGN = 8  # safetensors pads the header with spaces to a multiple of 8 bytes


def canonicalize_safetensors(path: str | Path) -> bool:
    """Rewrite ``path`` with a sorted, compact header; True when the bytes changed."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file")
    (length,) = struct.unpack("<Q", data[:8])
    if 8 + length > len(data):
        raise ValueError(f"{path}: truncated safetensors header")
    header = json.loads(data[8:8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    text += b" " * (-len(text) % _ALIGN)
    rewritten = struct.pack("<Q", len(text)) + text + data[8 + length:]
    if rewritten == data:
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(rewritten)
    tmp.replace(path)
    return True


def canonicalize_tree(root: str | Path) -> int:
    """Canonicalize every ``*.safetensors`` below ``root``; returns how many changed."""
    return sum(canonicalize_safetensors(p) for p in sorted(Path(root).rglob("*.safetensors")))
