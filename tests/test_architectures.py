"""Architectures: what a model directory is, found from its configs at plan time; SD 2.x (OpenCLIP padding,
v-prediction) and SDXL (two text encoders, added conditions) applied, loaded and exported end to end on tiny
pipelines; other pipelines, and configs that do not fit together, refused before any work."""

import json

import pytest

from policykit.models.architecture import detect_architecture
from policykit.testing import HalfBright


@pytest.fixture(scope="session")
def tiny_sd2(tmp_path_factory):
    """A tiny random SD 2.x-style pipeline: OpenCLIP padding (``!``, id 0) and v-prediction."""
    import torch

    from policykit.testing import build_tiny_pipeline

    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("tiny-sd2")
    build_tiny_pipeline(pad_token="!", prediction_type="v_prediction").save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    """A tiny random SDXL pipeline (two text encoders, added conditions) saved as a diffusers directory."""
    import torch

    from policykit.testing import build_tiny_sdxl_pipeline

    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("tiny-sdxl")
    build_tiny_sdxl_pipeline().save_pretrained(path)
    return path


def test_sd1_sd2_and_the_builtin_world_are_recognised(tiny_model, tiny_sd2):
    from policykit.models import resolve_model

    sd1, sd2 = detect_architecture(tiny_model), detect_architecture(tiny_sd2)
    assert (sd1.family, sd1.prediction_type, sd1.supported) == ("sd1", "epsilon", True)
    assert (sd2.family, sd2.prediction_type, sd2.supported) == ("sd2", "v_prediction", True)
    assert sd1.cross_attention_dim == sd1.text_encoder_widths[0] == 32 and sd1.resolution == 16
    shapes = resolve_model("builtin:shapes").architecture()
    assert shapes.family == "sd1" and shapes.supported and shapes.resolution == 32


def test_sdxl_is_recognised_and_unknown_pipelines_are_refused_with_the_reason(tmp_path, tiny_sdxl):
    sdxl = detect_architecture(tiny_sdxl)
    assert (sdxl.family, sdxl.supported, sdxl.problems) == ("sdxl", True, ())
    assert sdxl.text_encoder_widths == (32, 48) and sdxl.cross_attention_dim == 80 and sdxl.resolution == 16
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    assert "KandinskyPipeline is not a pipeline policykit edits" in detect_architecture(other).problems[0]


def test_a_text_encoder_narrower_than_the_cross_attention_is_a_problem(tmp_path, tiny_model):
    import shutil

    copy = tmp_path / "mismatch"
    shutil.copytree(tiny_model, copy)
    config = json.loads((copy / "unet" / "config.json").read_text())
    (copy / "unet" / "config.json").write_text(json.dumps({**config, "cross_attention_dim": 64}))
    problems = detect_architecture(copy).problems
    assert problems and "32 wide but the U-Net's cross-attention reads 64" in problems[0]


POLICY = """\
apiVersion: policykit/v1alpha1
kind: ErasurePolicy
metadata: {{name: arch, version: 1.0.0}}
base_model: {{id: {model}}}
defaults:
  neighbors: {{radius: 0.2, samples: 2}}
  templates: ["a photo of {{}}"]
erase:
  - concept: red circle
    anchor: blue circle
preserve:
  - concept: cat
training:
  method: {method}
  lora: {{steps: 2, batch_size: 2, rank: 2}}
audit:
  samples_per_prompt: 1
  guidance_scales: [4.0]
  thresholds: {{max_efficacy_accuracy: 1.0, max_generality_accuracy: 1.0, min_specificity_accuracy: 0.0}}
output: {{dir: artifacts}}
"""


@pytest.fixture()
def broken_sdxl(tmp_path, tiny_sdxl):
    """The tiny SDXL pipeline with a U-Net that reads 64-wide text rows (its encoders give 32 + 48)."""
    import shutil

    copy = tmp_path / "broken-xl"
    shutil.copytree(tiny_sdxl, copy)
    config = json.loads((copy / "unet" / "config.json").read_text())
    (copy / "unet" / "config.json").write_text(json.dumps({**config, "cross_attention_dim": 64}))
    return copy


def test_plan_and_apply_refuse_an_unsupported_model_before_any_run(tmp_path, monkeypatch, capsys, broken_sdxl):
    from policykit.apply import ApplyError, apply_policy
    from policykit.cli import main

    monkeypatch.chdir(tmp_path)
    policy = tmp_path / "xl.yaml"
    policy.write_text(POLICY.format(model=broken_sdxl, method="uce"))
    assert main(["plan", str(policy), "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    (diagnostic,) = [d for d in doc["diagnostics"] if d["code"] == "model-unsupported"]
    assert "sdxl" in diagnostic["message"] and "32 + 48 wide" in diagnostic["message"] and diagnostic["line"] == 4
    with pytest.raises(ApplyError, match="cross-attention reads 64") as refused:
        apply_policy(policy, classifier=HalfBright())
    assert refused.value.diagnostics[0].code == "model-unsupported"
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["uce", "realera"])
def test_sd2_applies_end_to_end_and_loads_as_an_sd_pipeline(tmp_path, monkeypatch, tiny_sd2, method):
    import torch
    from diffusers import StableDiffusionPipeline

    from policykit.apply import apply_policy
    from policykit.artifact.load import load_pipeline
    from policykit.artifact.single_file import export_single_file

    monkeypatch.chdir(tmp_path)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(model=tiny_sd2, method=method))
    outcome = apply_policy(policy, classifier=HalfBright())
    manifest = json.loads((outcome.path / "manifest.json").read_text())
    assert manifest["base_model"]["architecture"]["family"] == "sd2"
    assert manifest["base_model"]["architecture"]["prediction_type"] == "v_prediction"
    edited = load_pipeline(outcome.path, allow_unsigned=True)
    base = StableDiffusionPipeline.from_pretrained(tiny_sd2, local_files_only=True)
    assert type(edited) is StableDiffusionPipeline and edited.scheduler.config.prediction_type == "v_prediction"
    changed = {k for k, v in edited.unet.state_dict().items() if not torch.equal(v, base.unet.state_dict()[k])}
    assert changed and all(".attn2.to_k." in k or ".attn2.to_v." in k for k in changed)
    # the single file is in SD 2.x's layout (OpenCLIP text encoder) and stock diffusers reads it back
    out = export_single_file(outcome.path, tmp_path / "out.safetensors", allow_unsigned=True)
    from safetensors import safe_open

    with safe_open(str(out), "pt") as handle:
        keys = set(handle.keys())
    assert "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert not any(k.startswith("cond_stage_model.transformer.") for k in keys)
    loaded = StableDiffusionPipeline.from_single_file(str(out), config=str(tiny_sd2), local_files_only=True)
    ids = edited.tokenizer(["a photo of red circle", "a cat"], padding="max_length", return_tensors="pt").input_ids
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        text = edited.text_encoder(ids)[0]
        assert torch.allclose(loaded.text_encoder(ids)[0], text, atol=1e-5)
        want = edited.unet(latents, 500, encoder_hidden_states=text).sample
        assert torch.allclose(loaded.unet(latents, 500, encoder_hidden_states=text).sample, want, atol=1e-5)
    assert loaded.scheduler.config.prediction_type == "v_prediction"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["uce", "realera", "mace", "esd"])
def test_sdxl_applies_end_to_end_loads_and_exports_as_an_sdxl_pipeline(tmp_path, monkeypatch, tiny_sdxl, method):
    import torch
    from diffusers import StableDiffusionXLPipeline

    from policykit.apply import apply_policy
    from policykit.artifact.export import export_diffusers
    from policykit.artifact.load import load_pipeline
    from policykit.artifact.single_file import export_single_file
    from policykit.models.text import text_model

    monkeypatch.chdir(tmp_path)
    policy = tmp_path / "policy.yaml"
    text = POLICY.format(model=tiny_sdxl, method=method)
    if method == "esd":  # ESD's 1000 iterations are its authors' default, not a test's
        text = text.replace("  lora: {steps: 2", "  esd: {iterations: 2}\n  lora: {steps: 2")
    policy.write_text(text)
    outcome = apply_policy(policy, classifier=HalfBright())
    manifest = json.loads((outcome.path / "manifest.json").read_text())
    assert manifest["base_model"]["architecture"]["family"] == "sdxl"
    edited = load_pipeline(outcome.path, allow_unsigned=True)
    base = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl, local_files_only=True)
    assert type(edited) is StableDiffusionXLPipeline
    # the edit reads the 80-wide concatenated rows and changes only the cross-attention keys and values
    # (ESD-x fine-tunes every cross-attention parameter)
    changed = {k for k, v in edited.unet.state_dict().items() if not torch.equal(v, base.unet.state_dict()[k])}
    allowed = (".attn2.",) if method == "esd" else (".attn2.to_k.", ".attn2.to_v.")
    assert changed and all(any(a in k for a in allowed) for k in changed)
    for name in ("text_encoder", "text_encoder_2", "vae"):
        assert all(torch.equal(v, getattr(base, name).state_dict()[k])
                   for k, v in getattr(edited, name).state_dict().items())
    # the erased concept's conditioning now draws something else; the edit is in the U-Net the pipeline runs
    cond = text_model(edited).encode_prompts(["a photo of red circle"])
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = base.unet(latents, 500, **text_model(base).unet_inputs(cond)).sample
        after = edited.unet(latents, 500, **text_model(edited).unet_inputs(cond)).sample
    assert not torch.allclose(before, after)
    # both exports are read back by stock diffusers as SDXL, with the edited weights
    exported = export_diffusers(outcome.path, tmp_path / "exported", allow_unsigned=True)
    again = StableDiffusionXLPipeline.from_pretrained(exported, local_files_only=True)
    assert all(torch.allclose(v, edited.unet.state_dict()[k]) for k, v in again.unet.state_dict().items())
    single = export_single_file(outcome.path, tmp_path / "out.safetensors", allow_unsigned=True)
    loaded = StableDiffusionXLPipeline.from_single_file(str(single), config=str(tiny_sdxl), local_files_only=True)
    for name in ("unet", "text_encoder", "text_encoder_2", "vae"):
        want = getattr(edited, name).state_dict()
        got = getattr(loaded, name).state_dict()
        assert all(torch.allclose(got[k], v, atol=1e-5) for k, v in want.items()), name
    # and the artifact draws images through the SDXL pipeline
    images = edited("a photo of red circle", num_inference_steps=2, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 16, 16, 3)
