"""benchmarks/speed.py: the two closed-form paths it compares agree, its row model matches the engine's
counts, its peak-memory probe sees an allocation, and a partial run keeps the other parts of its section."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def speed():
    sys.path.insert(0, str(BENCHMARKS))  # speed.py imports its sibling report.py, as when run as a script
    try:
        spec = importlib.util.spec_from_file_location("bench_speed", BENCHMARKS / "speed.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_speed", None)
        sys.path.remove(str(BENCHMARKS))


def test_shared_and_per_layer_solves_agree(speed):
    import torch

    layers = [("a", 5), ("b", 7), ("c", 12)]
    projections = speed.sd15_projections(seed=0, d=12, layers=layers, dtype=torch.float64)
    inputs = speed.cfr_inputs(2, d=12, seed=3, dtype=torch.float64)
    shared, seconds = speed.shared_refine(projections, inputs, lam=0.1)
    plain, info = speed.per_layer_refine(projections, inputs, lam=0.1)
    assert set(shared) == set(plain) == {f"{b}.transformer_blocks.0.attn2.{t}.weight" for b, _ in layers
                                         for t in ("to_k", "to_v")}
    assert info["layers"] == 6 and set(seconds) == {"grams", "solve", "apply", "total"}
    diff, scale, compared = speed.max_weight_difference(shared, plain)
    assert compared == 6 and diff < 1e-10 * scale
    # and the edit is not the identity: the comparison would be empty otherwise
    w = projections["a.transformer_blocks.0.attn2.to_k"].weight.detach()
    assert float((shared["a.transformer_blocks.0.attn2.to_k.weight"] - w).abs().max()) > 1e-3


def test_per_layer_budget_stops_early_and_says_so(speed):
    projections = speed.sd15_projections(seed=0, d=8, layers=[(f"l{i}", 4) for i in range(6)])
    inputs = speed.cfr_inputs(1, d=8)
    weights, info = speed.per_layer_refine(projections, inputs, lam=0.1, budget_s=0.0, min_layers=2)
    assert info["layers"] == len(weights) == 2


def test_row_model_matches_the_engine_counts(speed):
    # gpu_check.py on the real engine, 1 concept of 2 tokens, 3 templates, 16 neighbors, one preserve:
    # 357 erase rows and 336 shell rows (docs/benchmarks-gpu.md).
    model = speed.RowModel()
    assert sum(model.erase_rows(1)) == 357
    assert model.preserve_rows(1)[1] == 336
    assert speed.SD15_CROSS_ATTENTION and len(speed.SD15_CROSS_ATTENTION) == 16
    assert sum(w for _, w in speed.SD15_CROSS_ATTENTION) == 12480  # output rows of the to_k (and of the to_v)


def test_peak_rss_sees_an_allocation(speed):
    import torch

    with speed.PeakRSS() as memory:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del block
    assert memory.extra_mib > 48, (memory.method, memory.start_mib, memory.peak_mib)


def test_partial_run_keeps_the_other_parts(speed):
    existing = "\n<!-- speed:apply -->\nold apply\n\n<!-- speed:cfr -->\nold cfr\n"
    merged = speed.merge_section(existing, {"cfr": "<!-- speed:cfr -->\nnew cfr", "lora": "<!-- speed:lora -->\nnew"})
    assert merged == "<!-- speed:apply -->\nold apply\n\n<!-- speed:cfr -->\nnew cfr\n\n<!-- speed:lora -->\nnew"
