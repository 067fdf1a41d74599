"""Canonical safetensors headers: same tensors and metadata, same bytes."""

import json
import struct

import torch
from safetensors.torch import load_file, save_file

from policykit.artifact.canonical import canonicalize_safetensors


def _header(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return data[8:8 + n]


def test_metadata_order_no_longer_matters(tmp_path):
    tensors = {"b.weight": torch.arange(6.0).reshape(2, 3), "a.weight": torch.ones(3)}
    meta_a = {"x": "1", "y": "2", "z": "3"}
    meta_b = {"z": "3", "x": "1", "y": "2"}
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(tensors, pa, metadata=meta_a)
    save_file(tensors, pb, metadata=meta_b)
    canonicalize_safetensors(pa)
    canonicalize_safetensors(pb)
    assert pa.read_bytes() == pb.read_bytes()
    assert len(_header(pa)) % 8 == 0
    assert json.loads(_header(pa))["__metadata__"] == meta_a
    loaded = load_file(pa)
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    assert canonicalize_safetensors(pa) is False  # idempotent
