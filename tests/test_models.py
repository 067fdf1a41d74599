"""Base-model resolution and sha256 pins (no torch needed)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from policykit.models import ModelNotAvailable, check_pin, model_sha256, resolve_model
from policykit.models.resolve import BUILTIN_MODELS, hub_download_command

REPO = Path(__file__).resolve().parents[1]
needs_shapes = pytest.mark.skipif(not (BUILTIN_MODELS["shapes"][0] / "model_index.json").is_file(),
                                  reason="shapes model not trained")


def _fake_pipeline(root: Path) -> Path:
    (root / "unet").mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (root / "unet" / "config.json").write_text("{}")
    (root / "unet" / "weights.bin").write_bytes(b"\x00\x01" * 100)
    return root


@needs_shapes
def test_builtin_shapes_resolves_to_the_shipped_pipeline():
    model = resolve_model("builtin:shapes")
    assert model.source == "builtin"
    assert model.path == BUILTIN_MODELS["shapes"][0]
    assert "model_index.json" in model.files
    assert "unet/diffusion_pytorch_model.safetensors" in model.files
    assert len(model.sha256()) == 64


@needs_shapes
def test_shipped_model_fits_the_package_size_budget():
    model = resolve_model("builtin:shapes")
    total = sum((model.path / f).stat().st_size for f in model.files)
    print(f"builtin:shapes ships {total / 1e6:.1f} MB")
    assert total <= 20_000_000


def test_unknown_builtin_is_a_clear_error():
    with pytest.raises(ModelNotAvailable, match="no built-in model 'nope'.*builtin:shapes"):
        resolve_model("builtin:nope")


def test_builtin_without_weights_says_how_to_rebuild(tmp_path, monkeypatch):
    monkeypatch.setitem(BUILTIN_MODELS, "shapes", (tmp_path / "missing", "rebuild it with `python -m policykit.shapes.train`"))
    with pytest.raises(ModelNotAvailable, match="weights are missing.*Rebuild it with"):
        resolve_model("builtin:shapes")


def test_local_directory_relative_to_the_policy(tmp_path):
    _fake_pipeline(tmp_path / "models" / "mine")
    model = resolve_model("models/mine", base_dir=tmp_path)
    assert model.source == "local" and model.path == (tmp_path / "models" / "mine").resolve()
    assert model.files == ("model_index.json", "unet/config.json", "unet/weights.bin")


def test_directory_without_model_index_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailable, match="not a diffusers pipeline directory"):
        resolve_model(str(tmp_path / "empty"))


def test_missing_hub_id_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ModelNotAvailable) as caught:
        resolve_model("example-org/not-cached-model", base_dir=tmp_path)
    message = str(caught.value)
    assert "not in the local Hugging Face cache" in message
    # the installed huggingface_hub (2.x here) has `hf`, not the removed `huggingface-cli`
    import shutil

    command = hub_download_command()
    assert f"{command} example-org/not-cached-model" in message
    assert shutil.which(command.split()[0]) is not None, f"{command!r} is not on PATH"
    diagnostic = caught.value.to_diagnostic(file="policy.yaml", line=3)
    assert diagnostic.code == "model-not-available" and diagnostic.severity == "error"


def test_download_command_follows_the_hub_version():
    assert hub_download_command("2.4.0") == "hf download"
    assert hub_download_command("0.34.1") == "hf download"
    assert hub_download_command("0.23.0") == "huggingface-cli download"


def test_cached_hub_snapshot_resolves_offline(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    repo = hub / "models--example-org--tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    _fake_pipeline(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    model = resolve_model("example-org/tiny")
    assert model.source == "hub" and model.path.name == commit


def test_pin_is_deterministic_and_location_independent(tmp_path):
    a = resolve_model(str(_fake_pipeline(tmp_path / "a")))
    b = resolve_model(str(_fake_pipeline(tmp_path / "elsewhere" / "b")))
    assert a.sha256() == b.sha256() == model_sha256(a.path, reversed(a.files))
    assert check_pin(a, a.sha256()) is None and check_pin(a, None) is None
    (b.path / "unet" / "weights.bin").write_bytes(b"changed")
    assert a.sha256() != b.sha256()


def test_pin_mismatch_is_a_diagnostic(tmp_path):
    model = resolve_model(str(_fake_pipeline(tmp_path / "m")))
    problem = check_pin(model, "0" * 64, file="policy.yaml", line=12, col=3)
    assert problem is not None and problem.code == "model-pin-mismatch"
    assert model.sha256() in problem.message and "0" * 64 in problem.message
    assert problem.location == "policy.yaml:12:3"


@needs_shapes
def test_resolution_does_not_import_torch():
    code = ("import sys; from policykit.models import resolve_model; m = resolve_model('builtin:shapes'); m.sha256();"
            "print(sorted(x for x in ('torch', 'diffusers', 'transformers') if x in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
