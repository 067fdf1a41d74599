"""What `policykit apply` prints: one summary, the right prompt count, the threshold a failed audit
missed, progress lines where no terminal shows rich's bar, a --json stream that starts with its
format_version, and the manifest's record of where the edit ran."""

import io
import json
import re
import time

import pytest

from policykit.cli import main

POLICY = """\
apiVersion: policykit/v1alpha1
kind: ErasurePolicy
metadata:
  name: tiny
  version: 1.0.0
base_model:
  id: {model}
defaults:
  neighbors:
    samples: 2
  templates: ["a photo of {{}}", "a picture of {{}}"]
erase:
  - concept: red circle
    anchor: blue circle
    synonyms: [red square]
preserve:
  - concept: cat
training:
  seed: 3
  lora:
    steps: 2
    batch_size: 2
    rank: 2
audit:
  samples_per_prompt: 1
  thresholds:
    max_efficacy_accuracy: 0.0
    max_generality_accuracy: 1.0
"""


class AlwaysShows:
    """Every image shows every concept: erasure fails its Acc_e bound at every scale."""

    name = "test:always"

    def shows(self, images, concept):
        return [True] * len(images)


@pytest.mark.slow
def test_apply_prints_one_summary_naming_the_missed_threshold(tmp_path, tiny_model, monkeypatch, capsys):
    import torch

    import policykit.audit.run as audit_run
    from policykit.audit.sampling import audit_prompts
    from policykit.plan import compile_plan
    from policykit.policy.loader import load_policy

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(audit_run, "build_audit_classifier", lambda plan, spec=None: AlwaysShows())
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(model=tiny_model))
    threads = torch.get_num_threads()
    try:
        assert main(["apply", str(policy), "--threads", "1"]) == 3  # published, audit failed
    finally:
        torch.set_num_threads(threads)
    err = " ".join(capsys.readouterr().err.split())

    prompts = len(audit_prompts(compile_plan(load_policy(policy)))) + 2  # and 2 held-out neighbours
    assert f"auditing {prompts} prompts ({prompts - 2} from the plan, 2 held-out neighbours) x 1 images" in err
    assert err.count("published artifacts/tiny/1.0.0") == 1 and err.count("audit FAILED") == 1
    assert "Acc_e 100.0% at guidance 3 is above audit.thresholds.max_efficacy_accuracy 0.0%" in err
    assert "guidance 7.5: Acc_e 100.0%" in err
    assert re.search(rf"images {2 * 3 * prompts}/{2 * 3 * prompts} \(100%", err)  # a line, not an invisible bar

    manifest = json.loads((tmp_path / "artifacts/tiny/1.0.0/manifest.json").read_text())
    assert manifest["runtime"] == {"threads": 1, "device": "cpu", "dtype": "float32",
                                   "deterministic_algorithms": False,
                                   "precision": {"model": "float32", "closed_form": "float64",
                                                 "lora_weights": "float32"}}
    assert manifest["audit"]["guidance_scales"] == [3.0, 7.5, 9.0]
    assert [s["guidance"] for s in manifest["metrics"]["by_guidance"]] == [3.0, 7.5, 9.0]
    failed = [c for c in manifest["audit"]["checks"] if not c["passed"]]
    assert [(c["setting"], c["guidance"]) for c in failed] == [("max_efficacy_accuracy", 3.0)]


def test_json_events_start_with_their_format_version(tmp_path, capsys):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(model=tmp_path / "no-such-model"))
    assert main(["apply", str(policy), "--json", "--output", str(tmp_path / "out")]) == 1
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0]["event"] == "start" and events[0]["format_version"] == 1 and events[0]["command"] == "apply"
    assert events[-1]["event"] == "error" and "not available" in events[-1]["message"]


def _plain_progress(monkeypatch, **settings):
    from rich.console import Console

    from policykit.commands.apply import Progress

    for name, value in settings.items():
        monkeypatch.setattr(Progress, name, value)
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False)
    assert not console.is_terminal  # as in CI, or with stderr sent to a file
    return Progress(console), out


def test_without_a_terminal_progress_is_printed_as_lines(monkeypatch):
    progress, out = _plain_progress(monkeypatch)
    progress.handle("stage", {"name": "audit", "message": "auditing", "total": 200})
    for done in range(8, 201, 8):
        progress.handle("progress", {"name": "audit", "completed": done, "total": 200})
    progress.stop()
    shares = re.findall(r"images \d+/200 \((\d+)%", out.getvalue())
    assert shares == ["12", "20", "32", "40", "52", "60", "72", "80", "92", "100"]


def test_without_a_terminal_a_long_stage_prints_a_heartbeat(monkeypatch):
    progress, out = _plain_progress(monkeypatch, HEARTBEAT_SECONDS=0.05)
    progress.handle("stage", {"name": "edit", "message": "editing: closed_form_refinement -> noise_alignment"})
    time.sleep(0.4)
    progress.stop()
    beats = out.getvalue().count("edit still running")
    assert beats >= 2
    time.sleep(0.2)
    assert out.getvalue().count("edit still running") == beats  # stopped with the stage
