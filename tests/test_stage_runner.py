"""The stage runner caches by content hash and resumes after a crash."""

import pytest
import torch

from policykit.realera.runner import StageOutput, StageRunner, StageSpec


def _stages(calls, fail_at=None, scale=2.0):
    def mine(prev):
        calls.append("mine")
        return StageOutput({"x": torch.arange(4.0)}, {"accepted": 4})

    def refine(prev):
        calls.append("refine")
        if fail_at == "refine":
            raise RuntimeError("crash")
        return StageOutput({"y": prev["mine"].tensors["x"] * scale}, {"residual": 0.5})

    def align(prev):
        calls.append("align")
        return StageOutput({"z": prev["refine"].tensors["y"] + 1}, {"loss": 0.1})

    return [StageSpec("mine", {"samples": 4}, mine), StageSpec("refine", {"scale": scale}, refine),
            StageSpec("align", {}, align)]


def test_resume_after_crash_runs_only_what_is_missing(tmp_path):
    calls = []
    with pytest.raises(RuntimeError):
        StageRunner(tmp_path).run(_stages(calls, fail_at="refine"))
    assert calls == ["mine", "refine"]

    calls.clear()
    lines = []
    outputs, records = StageRunner(tmp_path, log=lines.append).run(_stages(calls))
    assert calls == ["refine", "align"]
    assert [r.cached for r in records] == [True, False, False]
    assert torch.equal(outputs["align"].tensors["z"], torch.tensor([1.0, 3.0, 5.0, 7.0]))
    assert lines[0].startswith("mine: cached") and "residual=0.5" in lines[1]

    calls.clear()
    StageRunner(tmp_path).run(_stages(calls))
    assert calls == []


def test_changed_setting_reruns_that_stage_and_the_ones_after(tmp_path):
    calls = []
    StageRunner(tmp_path).run(_stages(calls))
    calls.clear()
    outputs, _ = StageRunner(tmp_path).run(_stages(calls, scale=3.0))
    assert calls == ["refine", "align"]
    assert outputs["align"].tensors["z"][1].item() == 4.0


def test_inputs_key_invalidates_everything(tmp_path):
    calls = []
    StageRunner(tmp_path, inputs_key="model-a").run(_stages(calls))
    calls.clear()
    StageRunner(tmp_path, inputs_key="model-b").run(_stages(calls))
    assert calls == ["mine", "refine", "align"]


def test_no_cache_dir_runs_everything(tmp_path):
    calls = []
    StageRunner(None).run(_stages(calls))
    StageRunner(None).run(_stages(calls))
    assert calls == ["mine", "refine", "align"] * 2
