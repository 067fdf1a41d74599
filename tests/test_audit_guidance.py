"""The audit samples at every guidance scale of the plan and judges each threshold on the worst one.

A stand-in pipeline writes into every image the guidance scale it was drawn at
and whether the edit is on; a stand-in classifier says an edited model keeps
its preserved concept only below guidance 6. So the edit passes at 4.0 (where
builtin:shapes used to be audited) and fails at the 7.5 a diffusers pipeline
samples at by default: deterministic, no model, no training.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from policykit.audit.sampling import AuditPrompt
from policykit.plan import compile_plan
from policykit.policy.loader import load_policy

POLICY = """\
apiVersion: policykit/v1alpha1
kind: ErasurePolicy
metadata:
  name: guidance
  version: 1.0.0
base_model:
  id: builtin:shapes
erase:
  - concept: red circle
    anchor: gray circle
    templates: ["a {}", "a picture of a {}"]
    associated: [apple]
preserve:
  - concept: blue circle
audit:
  samples_per_prompt: 2
"""


class GuidancePipe:
    """Stands in for a diffusers pipeline: an image's grey level records its guidance scale and the edit."""

    device = torch.device("cpu")
    text_encoder = SimpleNamespace(dtype=torch.float32)
    tokenizer = None  # an SD 1.x-style pipeline: one text encoder, conditionings passed as prompt_embeds

    def __init__(self):
        self.edited = False
        self.calls: list[tuple[float, int, bool]] = []

    def __call__(self, *, num_inference_steps, guidance_scale, generator, output_type, prompt=None,
                 prompt_embeds=None, negative_prompt=None):
        self.calls.append((guidance_scale, num_inference_steps, self.edited))
        level = guidance_scale / 20 + (0.5 if self.edited else 0.0)
        return SimpleNamespace(images=np.full((len(generator), 4, 4, 3), level))


class PreservesOnlyAtLowGuidance:
    """The erased concept never shows after the edit; a preserved one survives it only below guidance 6."""

    name = "test:guidance"

    def shows(self, images, concept):
        answers = []
        for image in images:
            level = float(image.mean()) / 255
            edited = level >= 0.5
            guidance = (level - 0.5 * edited) * 20
            answers.append(not edited if concept == "red circle" else (not edited or guidance < 6))
        return answers


@pytest.fixture
def stand_ins(monkeypatch):
    """No model: the edit flips the stand-in's flag, and two held-out neighbours come from nowhere."""
    import policykit.audit.sampling as sampling
    import policykit.realera.edit as engine

    def neighbours(plan, pipe, *, seed, per_concept=2):
        prompts = [AuditPrompt(f"a red circle [held-out neighbour {i}]", "red circle", "neighbor") for i in (1, 2)]
        return prompts, torch.zeros(2, 3, 8)

    monkeypatch.setattr(engine, "apply_edit", lambda pipe, edit: setattr(pipe, "edited", True))
    monkeypatch.setattr(sampling, "neighbor_conditionings", neighbours)


def _plan(tmp_path, extra=""):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY + extra)
    loaded = load_policy(path)
    assert loaded.ok, [d.message for d in loaded.diagnostics]
    return compile_plan(loaded)


def _audit(plan, events=None):
    from policykit.audit.run import audit_edit

    pipe = GuidancePipe()
    result = audit_edit(plan, pipe, edit=None, classifier=PreservesOnlyAtLowGuidance(),
                        emit=lambda event, **f: events.append((event, f)) if events is not None else None)
    return result, pipe


def test_the_worst_guidance_scale_decides_the_verdict(tmp_path, stand_ins):
    passing, _ = _audit(_plan(tmp_path, "  guidance_scales: [4.0]\n"))
    assert passing.passed and passing.metrics_after.acc_s == 1.0

    events = []
    result, pipe = _audit(_plan(tmp_path, "  guidance_scales: [4.0, 7.5, 9.0]\n"), events)
    assert not result.passed
    assert [s.guidance for s in result.scales] == [4.0, 7.5, 9.0]
    assert [s.metrics_after.acc_s for s in result.scales] == [1.0, 0.0, 0.0]
    assert [s.metrics_before.acc_s for s in result.scales] == [1.0, 1.0, 1.0]
    failed = [c for c in result.thresholds if not c.passed]
    assert [(c.name, c.setting, c.guidance) for c in failed] == [("Acc_s", "min_specificity_accuracy", 7.5)]
    assert failed[0].describe() == "Acc_s 0.0% at guidance 7.5 is below audit.thresholds.min_specificity_accuracy 85.0%"
    assert result.metrics_after.acc_s == 0.0 and result.metrics_after.acc_e == 0.0
    # both models at every scale, at the model's steps
    assert {(g, steps, edited) for g, steps, edited in pipe.calls} == \
        {(g, 25, e) for g in (4.0, 7.5, 9.0) for e in (False, True)}
    assert [f["guidance"] for e, f in events if e == "audit_scale"] == [4.0, 7.5, 9.0]
    verdict = [f for e, f in events if e == "audit"]
    assert verdict and verdict[0]["verdict"] == "failed"


def test_reports_show_every_scale_and_the_scale_a_threshold_failed_at(tmp_path, stand_ins):
    import json

    from policykit.audit.report import render_html, render_json, render_markdown

    result, _ = _audit(_plan(tmp_path, "  guidance_scales: [4.0, 9.0]\n"))
    doc = json.loads(render_json(result))
    assert doc["format_version"] == 2 and doc["verdict"] == "failed"
    assert [s["guidance"] for s in doc["scales"]] == [4.0, 9.0]
    assert [s["metrics"]["after"]["acc_s"] for s in doc["scales"]] == [1.0, 0.0]
    acc_s = next(t for t in doc["thresholds"] if t["name"] == "Acc_s")
    assert acc_s == {"name": "Acc_s", "setting": "min_specificity_accuracy", "kind": "min", "bound": 0.85,
                     "measured": 0.0, "guidance": 9.0, "passed": False}
    md = render_markdown(result)
    assert "| Acc_s | 100.0% | 0.0% | 9 | >= 85.0% | **FAIL** |" in md
    assert "| 4 | " in md and "| 9 | " in md
    page = render_html(result)
    # images: the scale nearest diffusers' default (9 here) is also the failing one; 4 is only counted
    assert "guidance 9</h3>" in page and "Erased concept, guidance 9" in page
    assert "Erased concept, guidance 4" not in page


def test_the_audit_counts_every_prompt_it_draws(tmp_path, stand_ins):
    plan = _plan(tmp_path, "  guidance_scales: [4.0]\n")
    events = []
    _audit(plan, events)
    stage = next(f for e, f in events if e == "stage")
    # 2 erased templates + apple + blue circle from the plan, and 2 held-out neighbours
    assert stage["message"].startswith("auditing 6 prompts (4 from the plan, 2 held-out neighbours) x 2 images")
    assert stage["total"] == 2 * 6 * 2


def test_default_guidance_scales_span_3_to_9_and_include_diffusers_default(tmp_path):
    from policykit.audit.report import DIFFUSERS_DEFAULT_GUIDANCE

    settings = _plan(tmp_path).stage("audit").settings
    assert settings.guidance_scales == (3.0, 7.5, 9.0) and settings.steps == 25
    assert DIFFUSERS_DEFAULT_GUIDANCE in settings.guidance_scales
    import inspect

    from diffusers import StableDiffusionPipeline

    # what a user of the exported pipeline gets when they do not pass guidance_scale
    default = inspect.signature(StableDiffusionPipeline.__call__).parameters["guidance_scale"].default
    assert default == DIFFUSERS_DEFAULT_GUIDANCE


@pytest.mark.parametrize("scales, message", [("[3.0, 3.0]", "must not repeat"), ("[0.5]", "must be at least 1"),
                                             ("[]", "at least 1")])
def test_guidance_scales_are_checked(tmp_path, scales, message):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY + f"  guidance_scales: {scales}\n")
    loaded = load_policy(path)
    assert not loaded.ok and any(message in d.message for d in loaded.diagnostics), \
        [d.message for d in loaded.diagnostics]


def test_associated_words_read_with_the_right_article(tmp_path):
    from policykit.audit.sampling import audit_prompts

    prompts = [p.prompt for p in audit_prompts(_plan(tmp_path))]
    assert "a picture of an apple" in prompts and "a picture of a apple" not in prompts
    assert "a red circle" in prompts and "a blue circle" in prompts  # no "an" before a consonant
