"""apply on a tiny random pipeline: artifact layout, signing, re-apply, refusal, determinism.

The audit's classifier is a stand-in here (random weights draw nothing a real
classifier could judge); tests/test_apply_shapes.py runs the real thing.
"""

import json

import pytest

from policykit.apply import ApplyError, apply_policy
from policykit.artifact.signing import generate_key_pair
from policykit.artifact.verify import verify_artifact
from policykit.cli import main
from policykit.testing import HalfBright


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
    radius: 0.2
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
  samples_per_prompt: 2
  thresholds:
    max_efficacy_accuracy: 1.0
    max_generality_accuracy: 1.0
    min_specificity_accuracy: 0.0
output:
  dir: artifacts
"""


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path, monkeypatch):
    """apply writes where the policy says, inside the directory it runs in: here, tmp_path."""
    monkeypatch.chdir(tmp_path)


def _policy(tmp_path, model, version="1.0.0", radius="0.2"):
    path = tmp_path / "policy.yaml"
    text = POLICY.format(model=model).replace("version: 1.0.0", f"version: {version}")
    path.write_text(text.replace("radius: 0.2", f"radius: {radius}"))
    return path


@pytest.mark.slow
def test_apply_publishes_a_signed_artifact_and_refuses_to_overwrite(tmp_path, tiny_model):
    keys = generate_key_pair(tmp_path / "keys")
    policy = _policy(tmp_path, tiny_model)
    events = []
    outcome = apply_policy(policy, sign_key=keys.private_key, cache_dir=tmp_path / "cache", classifier=HalfBright(),
                           emit=lambda event, **f: events.append(event))
    assert outcome.status == "created" and outcome.signed
    root = outcome.path
    assert root.resolve() == (tmp_path / "artifacts" / "tiny" / "1.0.0").resolve()
    for name in ("manifest.json", "policy.yaml", "plan.json", "weights/cross_attention_delta.safetensors",
                 "weights/lora/pytorch_lora_weights.safetensors", "audit/report.html", "audit/report.md",
                 "audit/report.json"):
        assert (root / name).is_file(), name
    assert (root.parent / "1.0.0.sig").is_file()
    assert (root / "policy.yaml").read_bytes() == policy.read_bytes()
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["status"] == "passed" and manifest["signer"].startswith("sha256:")
    assert manifest["base_model"]["sha256"] and manifest["toolkit"]["torch"]
    assert {"stage", "log"} <= set(events)
    report_doc = json.loads((root / "audit" / "report.json").read_text())
    assert [s["guidance"] for s in report_doc["scales"]] == [3.0, 7.5, 9.0]  # the default guidance scales
    for scale in report_doc["scales"]:
        roles = [p["role"] for p in scale["prompts"]]
        assert roles.count("neighbor") == 2 and {"erased", "synonym", "preserved"} <= set(roles)

    report = verify_artifact(root, keys.public_key)
    assert report.ok, report.problems

    # the same inputs again: nothing changes
    again = apply_policy(policy, sign_key=keys.private_key, cache_dir=tmp_path / "cache", classifier=HalfBright())
    assert again.status == "unchanged" and again.manifest["content_id"] == manifest["content_id"]

    # different content under the same version: refused, the artifact untouched
    changed = _policy(tmp_path, tiny_model, radius="0.25")
    with pytest.raises(ApplyError, match="bump metadata.version"):
        apply_policy(changed, cache_dir=tmp_path / "cache", classifier=HalfBright())
    assert verify_artifact(root, keys.public_key).ok


@pytest.mark.slow
def test_same_policy_and_seed_give_identical_weights(tmp_path, tiny_model):
    hashes = []
    policy = _policy(tmp_path, tiny_model)
    for run in ("a", "b"):  # no stage cache: both runs compute everything
        outcome = apply_policy(policy, output_dir=tmp_path / run, classifier=HalfBright())
        files = outcome.manifest["files"]
        hashes.append({k: v["sha256"] for k, v in files.items() if k.startswith("weights/") and k.endswith(".safetensors")})
    assert hashes[0] and hashes[0] == hashes[1]


def test_unusable_classifier_fails_before_any_work(tmp_path, tiny_model, capsys):
    policy = _policy(tmp_path, tiny_model)
    assert main(["apply", str(policy), "--classifier", "builtin:pixel-truth"]) == 1
    err = capsys.readouterr().err
    assert "audit-classifier" in err and "only judges images of builtin:shapes" in err
    assert main(["apply", str(policy)]) == 1  # a real model needs a CLIP directory for its audit
    assert "set audit.classifier" in capsys.readouterr().err
    assert not (tmp_path / "artifacts").exists()


def test_bad_policy_and_missing_model_publish_nothing(tmp_path, capsys):
    policy = _policy(tmp_path, tmp_path / "no-such-model")
    with pytest.raises(ApplyError, match="not available"):
        apply_policy(policy)
    assert not (tmp_path / "artifacts").exists()
    assert main(["apply", str(policy)]) == 1
    assert "model-not-available" in capsys.readouterr().err


def test_stale_plan_is_refused(tmp_path, tiny_model):
    policy = _policy(tmp_path, tiny_model)
    assert main(["plan", str(policy), "--out", str(tmp_path / "plan.json")]) == 2  # nothing published yet
    policy.write_text(policy.read_text().replace("samples_per_prompt: 2", "samples_per_prompt: 3"))
    with pytest.raises(ApplyError, match="stale"):
        apply_policy(policy, plan_path=tmp_path / "plan.json")


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_model):
    """One signed artifact, shared by the tests below (which restore what they change)."""
    root = tmp_path_factory.mktemp("published")
    keys = generate_key_pair(root / "keys")
    outcome = apply_policy(_policy(root, tiny_model), output_dir=root / "artifacts", sign_key=keys.private_key,
                           classifier=HalfBright())
    return outcome.path, keys


@pytest.mark.slow
def test_any_changed_byte_added_or_removed_file_fails_verification(published):
    path, keys = published
    files = sorted(p for p in path.rglob("*") if p.is_file())
    assert len(files) >= 8
    for file in files:
        original = file.read_bytes()
        for offset in {0, len(original) // 2, len(original) - 1}:
            changed = bytearray(original)
            changed[offset] ^= 0x20
            file.write_bytes(bytes(changed))
            assert not verify_artifact(path, keys.public_key).ok, (file, offset)
            if file.name != "manifest.json":  # without a key, the manifest's own fields are not covered
                assert not verify_artifact(path).ok, (file, offset)
        file.write_bytes(original)
    assert verify_artifact(path, keys.public_key).ok

    extra = path / "weights" / "extra.safetensors"
    extra.write_bytes(b"\0" * 16)
    assert not verify_artifact(path, keys.public_key).ok
    extra.unlink()
    removed = path / "audit" / "report.md"
    saved = removed.read_bytes()
    removed.unlink()
    assert not verify_artifact(path, keys.public_key).ok
    removed.write_bytes(saved)
    assert verify_artifact(path, keys.public_key).ok


@pytest.mark.slow
def test_loading_rule(published, tmp_path):
    from policykit.artifact.load import ArtifactRefused, load_pipeline

    path, keys = published
    pipe = load_pipeline(path, public_key=keys.public_key, keep_adapter=True)  # default: fused (issue 10 item 12)
    assert "realera" in pipe.unet.peft_config
    with pytest.raises(ArtifactRefused, match="no public key"):
        load_pipeline(path)
    other = generate_key_pair(tmp_path / "other")
    with pytest.raises(ArtifactRefused, match="failed verification"):
        load_pipeline(path, public_key=other.public_key)

    delta = path / "weights" / "cross_attention_delta.safetensors"
    original = delta.read_bytes()
    changed = bytearray(original)
    changed[-1] ^= 0x01
    delta.write_bytes(bytes(changed))
    try:
        with pytest.raises(ArtifactRefused, match="changed"):
            load_pipeline(path, public_key=keys.public_key)
        with pytest.raises(ArtifactRefused):
            load_pipeline(path, allow_unsigned=True)  # tampered is never loaded
    finally:
        delta.write_bytes(original)


@pytest.mark.slow
def test_failed_audit_marks_the_artifact_and_loading_needs_an_override(tmp_path, tiny_model, capsys):
    from policykit.artifact.load import ArtifactRefused, load_pipeline

    policy = _policy(tmp_path, tiny_model)
    policy.write_text(policy.read_text().replace("min_specificity_accuracy: 0.0", "min_specificity_accuracy: 1.0")
                      .replace("max_efficacy_accuracy: 1.0", "max_efficacy_accuracy: 0.0"))
    outcome = apply_policy(policy, classifier=AlwaysShows())
    assert outcome.manifest["status"] == "failed" and not outcome.audit_passed
    with pytest.raises(ArtifactRefused, match="FAILED its audit"):
        load_pipeline(outcome.path, allow_unsigned=True)
    assert load_pipeline(outcome.path, allow_unsigned=True, allow_failed_audit=True) is not None

    assert main(["artifacts", "list", "--output", str(tmp_path / "artifacts"), "--verify", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["artifacts"]
    assert [(a["name"], a["version"], a["status"], a["signed"], a["intact"]) for a in listed] == \
        [("tiny", "1.0.0", "failed", False, True)]


class AlwaysShows:
    name = "test:always"

    def shows(self, images, concept):
        return [True] * len(images)


@pytest.mark.slow
def test_generate_and_audit_commands(published, tmp_path, capsys):
    path, keys = published
    out = tmp_path / "images"
    assert main(["generate", str(path), "a photo of cat", "-n", "2", "--out", str(out),
                 "--public-key", str(keys.public_key)]) == 0
    assert len(list(out.glob("*.png"))) == 2
    assert main(["generate", str(path), "a photo of cat", "--out", str(out)]) == 1
    assert "no public key" in capsys.readouterr().err


@pytest.mark.slow
def test_export_diffusers_bakes_the_edit_in(published, tmp_path, tiny_model):
    import torch
    from diffusers import StableDiffusionPipeline

    from policykit.artifact.load import load_pipeline

    path, keys = published
    out = tmp_path / "exported"
    assert main(["export", str(path), "--out", str(out), "--public-key", str(keys.public_key)]) == 0
    exported = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert not getattr(exported.unet, "peft_config", None)
    edited = load_pipeline(path, public_key=keys.public_key)
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 16, exported.text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(1))
    base = StableDiffusionPipeline.from_pretrained(tiny_model, local_files_only=True)
    with torch.no_grad():
        a = exported.unet(sample, 10, encoder_hidden_states=text).sample
        b = edited.unet(sample, 10, encoder_hidden_states=text).sample
        c = base.unet(sample, 10, encoder_hidden_states=text).sample
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, c, atol=1e-4)  # the edit is really in the export
    assert json.loads((out / "policykit-export.json").read_text())["policy"] == "tiny"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_interrupted_apply_leaves_nothing_loadable_and_rerun_resumes(tmp_path, tiny_model, how):
    import signal
    import subprocess
    import sys

    policy = _policy(tmp_path, tiny_model)
    # still training when interrupted; no audit (this random model has no classifier the CLI could name)
    policy.write_text(policy.read_text().replace("steps: 2", "steps: 40").replace("audit:", "audit:\n  enabled: false"))
    cmd = [sys.executable, "-m", "policykit", "apply", str(policy), "--json", "--cache-dir", str(tmp_path / "cache")]
    # a shell starts background jobs with SIGINT ignored, and the child would inherit that: give it the default
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:
        if "closed_form_refinement: done" in line:
            break
    proc.send_signal(getattr(signal, how))
    rc = proc.wait(timeout=120)
    assert rc != 0
    version_dir = tmp_path / "artifacts" / "tiny" / "1.0.0"
    assert not version_dir.exists()
    leftovers = sorted(p.name for p in (tmp_path / "artifacts" / "tiny").iterdir())
    if how == "SIGINT":
        assert leftovers == [".lock"]  # Ctrl-C cleans up after itself
    events = []
    outcome = apply_policy(policy, cache_dir=tmp_path / "cache", classifier=HalfBright(),
                           emit=lambda event, **f: events.append(f.get("message", "")))
    assert outcome.status == "created" and version_dir.is_dir()
    assert any("closed_form_refinement: cached" in e for e in events), events
    assert not [p for p in (tmp_path / "artifacts" / "tiny").iterdir() if p.name.startswith(".staging")]
