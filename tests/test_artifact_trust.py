"""A signed artifact means what it says: no relabelling, no swap after verification, no special files,
no paths out of the artifact, clear errors for malformed metadata, and a loaded pipeline that saves
and reloads like any diffusers pipeline (issue 10, items 1-6, 12, 17, 18).

One signed artifact of the tiny random model is published per module; every test that tampers
works on its own copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from policykit.cli import main

POLICY = """\
apiVersion: policykit/v1alpha1
kind: ErasurePolicy
metadata:
  name: demo
  version: 1.0.0
base_model:
  id: {model}
defaults:
  neighbors:
    radius: 0.2
    samples: 2
  templates: ["a photo of {{}}"]
erase:
  - concept: red circle
    anchor: blue circle
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
    max_efficacy_accuracy: 1.0
    max_generality_accuracy: 1.0
    min_specificity_accuracy: 0.0
output:
  dir: {out}
"""

DELTA = "weights/cross_attention_delta.safetensors"


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_model):
    """``(output dir, public key)``: demo/1.0.0 with a delta and a LoRA, signed. Never modify it: copy it."""
    from policykit.apply import apply_policy
    from policykit.artifact.signing import generate_key_pair
    from policykit.testing import HalfBright

    root = tmp_path_factory.mktemp("published")
    keys = generate_key_pair(root / "keys")
    policy = root / "policy.yaml"
    policy.write_text(POLICY.format(model=tiny_model, out=root / "artifacts"))
    outcome = apply_policy(policy, output_dir=root / "artifacts", sign_key=keys.private_key, classifier=HalfBright())
    assert outcome.signed and outcome.path == root / "artifacts" / "demo" / "1.0.0"
    return root / "artifacts", keys.public_key


@pytest.fixture()
def store(published, tmp_path):
    """A private copy of the published output directory: ``(output dir, artifact dir, public key)``."""
    source, public_key = published
    out = tmp_path / "artifacts"
    shutil.copytree(source, out, symlinks=True)
    return out, out / "demo" / "1.0.0", public_key


def _copy_to(artifact: Path, name: str, version: str) -> Path:
    """The artifact and its signature copied, byte for byte, to ``<output>/<name>/<version>``."""
    target = artifact.parent.parent / name / version
    target.parent.mkdir(exist_ok=True)
    shutil.copytree(artifact, target)
    shutil.copy(artifact.with_name(artifact.name + ".sig"), target.with_name(version + ".sig"))
    return target


def _rewrite_manifest(artifact: Path, change=None) -> None:
    """Rehash the file list (and apply ``change`` to the manifest): what anyone can do without the key."""
    from policykit.artifact.manifest import content_id, hash_files

    manifest = json.loads((artifact / "manifest.json").read_text())
    if change is not None:
        change(manifest)
    manifest["files"] = hash_files(artifact)
    manifest["content_id"] = content_id(manifest["files"])
    (artifact / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _edit_json(artifact: Path, **changes) -> None:
    path = artifact / "weights" / "edit.json"
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))
    _rewrite_manifest(artifact)


def _unet_weights(pipe) -> dict:
    return {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}


# -- item 1: relabelling


@pytest.mark.parametrize("name, version", [("kids-safe", "1.0.0"), ("demo", "1.0.1"), ("demo", "9.9.9")])
def test_a_relabelled_signed_artifact_is_refused_by_verify_and_every_loader(store, tmp_path, capsys, name, version):
    from policykit.artifact.load import ArtifactRefused, load_pipeline

    out, artifact, public_key = store
    copy = _copy_to(artifact, name, version)
    key = ["--public-key", str(public_key)]
    assert main(["verify", str(artifact), *key]) == 0  # the original, at its own place, verifies
    capsys.readouterr()

    assert main(["verify", str(copy), *key]) == 1
    assert f"sits at {name}/{version}" in capsys.readouterr().out
    with pytest.raises(ArtifactRefused, match="place: the manifest is for 'demo' version '1.0.0'"):
        load_pipeline(copy, public_key=public_key)
    for argv in (["generate", str(copy), "a cat", "-n", "1", "--out", str(tmp_path / "img")],
                 ["export", str(copy), "--out", str(tmp_path / "exp")],
                 ["export", str(copy), "--format", "single-file", "--out", str(tmp_path / "x.safetensors")],
                 ["audit", str(copy), "--out", str(tmp_path / "audit")]):
        assert main([*argv, *key]) == 1, argv
        assert "place:" in capsys.readouterr().err, argv
    assert not (tmp_path / "img").exists() and not (tmp_path / "exp").exists()

    assert main(["artifacts", "list", "--output", str(out), "--verify", "--json"]) == 1
    rows = {(r["name"], r["version"]): r for r in json.loads(capsys.readouterr().out)["artifacts"]}
    assert rows[("demo", "1.0.0")]["intact"] is True
    assert rows[(name, version)]["intact"] is False and "place:" in rows[(name, version)]["problem"]


# -- item 2: what is loaded is what was verified


def _swap_delta_on_disk(artifact: Path) -> None:
    """Replace the delta with a well-formed one of zeros (same keys and shapes): the attacker's weights."""
    import torch
    from safetensors.torch import load_file, save_file

    path = artifact / DELTA
    save_file({k: torch.zeros_like(v) for k, v in load_file(str(path)).items()}, str(path))


@pytest.mark.parametrize("hook", ["policykit.artifact.verify.verify_artifact",
                                  "policykit.artifact.signing.verify_directory"])
def test_a_file_swapped_after_verification_is_not_what_gets_loaded(store, monkeypatch, hook):
    import importlib

    import torch

    from policykit.artifact.load import load_pipeline

    _, artifact, public_key = store
    reference = _unet_weights(load_pipeline(artifact, public_key=public_key))
    module_name, function = hook.rsplit(".", 1)
    module = importlib.import_module(module_name)
    real = getattr(module, function)
    swapped = []

    def verify_then_swap(*args, **kwargs):
        result = real(*args, **kwargs)
        if not swapped:  # the checks are done: now the file on disk changes
            _swap_delta_on_disk(artifact)
            swapped.append(True)
        return result

    monkeypatch.setattr(module, function, verify_then_swap)
    loaded = _unet_weights(load_pipeline(artifact, public_key=public_key))
    assert swapped
    assert loaded.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(loaded[key], value), f"{key}: the swapped file's weights were loaded"
    monkeypatch.undo()
    from policykit.artifact.load import ArtifactRefused

    with pytest.raises(ArtifactRefused, match="changed"):  # and the swapped file itself is refused
        load_pipeline(artifact, public_key=public_key)


# -- item 3: special files


_SPECIAL_FILE_SCRIPT = textwrap.dedent("""
    import contextlib, io, json, sys
    from policykit.cli import main
    artifact, out, key, scratch = sys.argv[1:5]
    runs = {
        "verify": ["verify", artifact],
        "verify --public-key": ["verify", artifact, "--public-key", key],
        "generate": ["generate", artifact, "a cat", "-n", "1", "--out", scratch + "/img", "--public-key", key],
        "export": ["export", artifact, "--out", scratch + "/exp", "--public-key", key],
        "audit": ["audit", artifact, "--out", scratch + "/audit", "--public-key", key],
        "artifacts list --verify": ["artifacts", "list", "--output", out, "--verify", "--json"],
    }
    results = {}
    for what, argv in runs.items():
        text = io.StringIO()
        with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
            code = main(argv)
        results[what] = [code, text.getvalue()]
    print("RESULTS=" + json.dumps(results))
""")


def _run_with_deadline(artifact: Path, out: Path, public_key: Path, scratch: Path) -> dict:
    """Run every command on ``artifact`` in a child process that is killed if anything blocks."""
    try:
        done = subprocess.run([sys.executable, "-c", _SPECIAL_FILE_SCRIPT, str(artifact), str(out), str(public_key),
                               str(scratch)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("a command blocked on a special file in the artifact (killed after 60 s)")
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULTS=")]
    assert line, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(line[-1][len("RESULTS="):])


@pytest.mark.parametrize("where", ["weights/pipe", "manifest.json", "signature"])
def test_a_fifo_in_an_artifact_is_refused_at_once_by_every_command(store, tmp_path, where):
    out, artifact, public_key = store
    if where == "signature":
        target = artifact.with_name(artifact.name + ".sig")
        target.unlink()
    else:
        target = artifact / where
        target.unlink(missing_ok=True)
    os.mkfifo(target)
    results = _run_with_deadline(artifact, out, public_key, tmp_path)
    for what, (code, text) in results.items():
        if where == "signature" and what in ("verify", "artifacts list --verify"):
            assert code == 0, (what, text)  # without a key the signature is not read at all
            continue
        assert code == 1, (what, text)
        assert ("FIFO" in text or "not a regular file" in text), (what, text)
        assert "Traceback" not in text, (what, text)


# -- item 4: malformed metadata


@pytest.mark.parametrize("text, message", [
    pytest.param("[" * 100_000 + "]" * 100_000, "nested too deeply", id="deep-nesting"),
    ('{"format_version": 1, "files": {}, "policy": "demo", "plan": 7}', "'policy' must be an object"),
    ('{"format_version": 1, "files": {"policy.yaml": "x"}}', r"files\['policy.yaml'\] must be an object"),
])
def test_a_malformed_manifest_is_a_clear_error_and_the_listing_goes_on(store, capsys, text, message):
    from policykit.artifact.load import ArtifactRefused, load_pipeline

    out, artifact, public_key = store
    broken = _copy_to(artifact, "broken", "1.0.0")
    (broken / "manifest.json").write_text(text)

    assert main(["verify", str(broken)]) == 1
    assert re.search(message, capsys.readouterr().out)
    assert main(["verify", str(broken), "--json"]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert any(re.search(message, p) for p in problems), problems
    with pytest.raises(ArtifactRefused, match=message):
        load_pipeline(broken, allow_unsigned=True)
    for verify in ([], ["--verify"]):
        assert main(["artifacts", "list", "--output", str(out), "--json", *verify]) == 1
        rows = {(r["name"], r["version"]): r for r in json.loads(capsys.readouterr().out)["artifacts"]}
        assert rows[("demo", "1.0.0")]["status"] == "passed"  # the good artifact is still listed
        assert rows[("broken", "1.0.0")]["status"] == "unreadable"
    assert main(["artifacts", "list", "--output", str(out)]) == 1  # the table too
    assert "broken/1.0.0" in capsys.readouterr().out


@pytest.mark.parametrize("changes, message", [
    ({"stages": "x"}, "'stages' has the wrong type"),
    ({"delta_file": 5}, "delta_file must be a non-empty relative path"),
    ({"lora_config": [1]}, "'lora_config' has the wrong type"),
    ({"stages": [{"bogus": 1}]}, "malformed stage record"),
])
def test_a_malformed_edit_json_is_a_clear_error(store, capsys, changes, message):
    from policykit.artifact.load import ArtifactRefused, load_pipeline

    _, artifact, _ = store
    _edit_json(artifact, **changes)
    with pytest.raises(ArtifactRefused, match=message):
        load_pipeline(artifact, allow_unsigned=True)
    assert main(["generate", str(artifact), "a cat", "--allow-unsigned", "--out", str(artifact.parent / "g")]) == 1
    assert message.split()[0].strip("'") in capsys.readouterr().err


def test_a_deeply_nested_edit_json_is_a_clear_error(store, capsys):
    from policykit.artifact.load import ArtifactRefused, load_pipeline

    _, artifact, _ = store
    (artifact / "weights" / "edit.json").write_text("[" * 100_000 + "]" * 100_000)
    _rewrite_manifest(artifact)
    assert main(["verify", str(artifact)]) == 1
    assert "edit.json: nested too deeply" in capsys.readouterr().out
    with pytest.raises(ArtifactRefused, match="nested too deeply"):
        load_pipeline(artifact, allow_unsigned=True)


# -- item 5: every path an artifact names stays inside it


@pytest.mark.parametrize("field", ["delta_file", "lora_dir"])
@pytest.mark.parametrize("how", ["absolute", "dotdot"])
def test_edit_json_cannot_name_files_outside_the_artifact(store, tmp_path, capsys, field, how):
    from policykit.artifact.load import ArtifactRefused, load_pipeline

    _, artifact, _ = store
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(artifact / DELTA, outside / "cross_attention_delta.safetensors")
    shutil.copytree(artifact / "weights" / "lora", outside / "lora")
    target = outside / ("cross_attention_delta.safetensors" if field == "delta_file" else "lora")
    name = str(target) if how == "absolute" else os.path.relpath(target, artifact / "weights")
    assert (artifact / "weights" / name).exists()  # the path really reaches a loadable file
    _edit_json(artifact, **{field: name})

    with pytest.raises(ArtifactRefused, match="absolute" if how == "absolute" else "leaves"):
        load_pipeline(artifact, allow_unsigned=True)
    assert main(["verify", str(artifact)]) == 1
    assert field in capsys.readouterr().out


def test_edit_json_must_name_files_the_manifest_covers(store, capsys):
    from policykit.artifact.load import ArtifactRefused, load_pipeline

    _, artifact, _ = store
    _edit_json(artifact, delta_file="not-there.safetensors")
    assert main(["verify", str(artifact)]) == 1
    assert "weights/not-there.safetensors, which is not a file of the artifact's manifest" in capsys.readouterr().out
    with pytest.raises(ArtifactRefused):
        load_pipeline(artifact, allow_unsigned=True)


# -- item 12: a loaded artifact saves and reloads like any diffusers pipeline


def _draw(pipe):
    import torch

    generator = torch.Generator().manual_seed(0)
    return pipe(["a photo of red circle", "a photo of cat"], num_inference_steps=3, guidance_scale=4.0,
                generator=generator, output_type="np").images


def test_a_loaded_artifact_saves_and_reloads_with_the_same_images(store, tmp_path, tiny_model):
    import numpy as np
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    from policykit.artifact.load import load_pipeline

    _, artifact, public_key = store
    pipe = load_pipeline(artifact, public_key=public_key)
    assert not getattr(pipe.unet, "peft_config", None)  # fused: no peft layers left
    images = _draw(pipe)
    pipe.save_pretrained(tmp_path / "saved")
    [unet_file] = (tmp_path / "saved" / "unet").glob("*.safetensors")
    with safe_open(str(unet_file), "pt") as handle:
        keys = list(handle.keys())
    assert not [k for k in keys if "lora" in k or "base_layer" in k]
    reloaded = StableDiffusionPipeline.from_pretrained(tmp_path / "saved", local_files_only=True)
    reloaded.set_progress_bar_config(disable=True)
    assert np.allclose(_draw(reloaded), images, atol=1e-5)

    # the fused model is the edited model: as with the adapter kept, not as the base model
    adapter = load_pipeline(artifact, public_key=public_key, keep_adapter=True)
    assert "realera" in adapter.unet.peft_config
    assert np.allclose(_draw(adapter), images, atol=1e-4)
    base = StableDiffusionPipeline.from_pretrained(tiny_model, local_files_only=True)
    base.set_progress_bar_config(disable=True)
    assert not np.allclose(_draw(base), images, atol=1e-4)


# -- item 17: the commands name their flags


def test_refusals_name_the_command_line_flags(store, tmp_path, capsys):
    from policykit.artifact.load import ArtifactRefused, load_pipeline

    _, artifact, _ = store
    for command in (["generate", str(artifact), "a cat", "--out", str(tmp_path / "g")],
                    ["export", str(artifact), "--out", str(tmp_path / "e")]):
        assert main(command) == 1
        err = capsys.readouterr().err
        assert "--public-key" in err and "--allow-unsigned" in err and "public_key=" not in err, err
    with pytest.raises(ArtifactRefused, match=r"public_key=\.\.\."):  # the Python API names its keywords
        load_pipeline(artifact)

    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["status"] = "failed"
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    for command in (["generate", str(artifact), "a cat", "--out", str(tmp_path / "g"), "--allow-unsigned"],
                    ["export", str(artifact), "--out", str(tmp_path / "e"), "--allow-unsigned"]):
        assert main(command) == 1
        err = capsys.readouterr().err
        assert "--allow-failed-audit" in err and "allow_failed_audit=" not in err, err
    with pytest.raises(ArtifactRefused, match="allow_failed_audit=True"):
        load_pipeline(artifact, allow_unsigned=True)


# -- item 18: audit reports are not versions; a tampered artifact fails the listing


def test_audit_reports_are_no_phantom_version_and_tampering_fails_the_listing(store, capsys, monkeypatch):
    import policykit.audit.run
    from policykit.testing import HalfBright

    # the tiny random model has no CLIP to judge it: the audit command gets the test classifier
    monkeypatch.setattr(policykit.audit.run, "build_audit_classifier", lambda plan, spec=None: HalfBright())
    out, artifact, public_key = store
    assert main(["audit", str(artifact), "--public-key", str(public_key)]) == 0
    assert (out / "demo" / "1.0.0.audit" / "report.json").is_file()
    capsys.readouterr()
    assert main(["artifacts", "list", "--output", str(out), "--verify", "--json"]) == 0
    assert [(r["name"], r["version"]) for r in json.loads(capsys.readouterr().out)["artifacts"]] == \
        [("demo", "1.0.0")]

    # the reports never go into the signed artifact
    assert main(["audit", str(artifact), "--public-key", str(public_key), "--out", str(artifact / "audit")]) == 1
    assert "inside the artifact" in capsys.readouterr().err

    report = artifact / "audit" / "report.md"
    report.write_text(report.read_text() + "tampered\n")
    assert main(["artifacts", "list", "--output", str(out), "--verify"]) == 1
    assert "audit/report.md: changed" in capsys.readouterr().out


# -- item 20: exports get the modes of files the user writes


def test_exports_get_the_modes_of_files_the_user_writes(store, tmp_path):
    import stat

    _, artifact, public_key = store
    exports = tmp_path / "exports"
    exports.mkdir()
    previous = os.umask(0o022)
    try:
        assert main(["export", str(artifact), "--out", str(exports / "exp"), "--public-key", str(public_key)]) == 0
        assert main(["export", str(artifact), "--format", "single-file", "--out", str(exports / "one.safetensors"),
                     "--public-key", str(public_key)]) == 0
    finally:
        os.umask(previous)
    modes = {p.relative_to(exports).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in exports.rglob("*")}
    assert modes["exp/unet/diffusion_pytorch_model.safetensors"] == 0o644
    assert modes["one.safetensors"] == 0o644
    assert {m for p, m in modes.items() if (exports / p).is_file()} == {0o644}
    assert {m for p, m in modes.items() if (exports / p).is_dir()} == {0o755}
    assert sorted(p.name for p in exports.iterdir()) == ["exp", "one.safetensors"]  # nothing partial left
