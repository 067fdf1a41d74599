"""SDXL pipelines through policykit's I/O: loading a base model as the class its ``model_index.json`` names,
an edit's deltas and LoRA on an SDXL U-Net, the LoRA in the SDXL pipeline's own diffusers format, and the
artifact-side loaders (base model, edited pipeline, export, ``generate``) returning the model's own class.

The artifact-side tests build a :class:`VerifiedArtifact` by hand (the files ``save_edit`` writes, a
manifest naming the base model): ``policykit apply`` cannot publish an SDXL artifact yet.
"""

from __future__ import annotations

import argparse
import copy
import json

import pytest
import torch

from policykit.testing import build_tiny_pipeline, build_tiny_sdxl_pipeline

XL = "StableDiffusionXLPipeline"


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    """The tiny random SDXL pipeline, saved as a diffusers directory."""
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("tiny-sdxl")
    build_tiny_sdxl_pipeline().save_pretrained(path)
    return path


@pytest.fixture()
def sdxl_pipe(sdxl_dir):
    from policykit.models.loading import load_pipeline

    return load_pipeline(sdxl_dir)


def _cross_attention_kv(unet) -> dict[str, torch.nn.Linear]:
    """The cross-attention key/value projections (``attn2.to_k`` / ``attn2.to_v``) by module name."""
    return {name: module for name, module in unet.named_modules()
            if name.endswith(("attn2.to_k", "attn2.to_v")) and isinstance(module, torch.nn.Linear)}


def _unet_inputs(unet, batch: int = 2, seed: int = 0):
    """Latents, a timestep, a conditioning and SDXL's added conditions for one U-Net call."""
    g = torch.Generator().manual_seed(seed)
    config = unet.config
    latents = torch.randn(batch, 4, 8, 8, generator=g)
    cond = torch.randn(batch, 16, config.cross_attention_dim, generator=g)
    pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    added = {"text_embeds": torch.randn(batch, pooled, generator=g),
             "time_ids": torch.tensor([[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]] * batch)}
    return latents, torch.tensor(500), cond, added


def _unet_out(unet, inputs) -> torch.Tensor:
    latents, t, cond, added = inputs
    with torch.no_grad():
        return unet(latents, t, cond, added_cond_kwargs=added).sample


def _random_adapter(unet, seed: int = 0):
    """A rank-2 LoRA named ``realera`` on exactly the cross-attention k/v projections, with random
    (non-zero) A and B so that it changes those layers' outputs."""
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=sorted(_cross_attention_kv(unet))),
                     adapter_name="realera")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_" in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=g))
    return unet


def _linear_outputs(unet, names) -> dict[str, torch.Tensor]:
    """Each named linear layer's output (through its LoRA, if wrapped) on a fixed random input."""
    outputs = {}
    for name in names:
        module = unet.get_submodule(name)
        base = getattr(module, "base_layer", module)
        x = torch.randn(3, base.in_features, generator=torch.Generator().manual_seed(len(name)))
        with torch.no_grad():
            outputs[name] = module(x)
    return outputs


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- loading a base model


def test_load_pipeline_reads_the_class_model_index_names(sdxl_dir, sdxl_pipe):
    from diffusers import StableDiffusionXLPipeline

    from policykit.models import resolve_model
    from policykit.models.loading import load_pipeline, pipeline_class_name

    assert pipeline_class_name(sdxl_dir) == XL
    assert type(sdxl_pipe) is StableDiffusionXLPipeline
    built = build_tiny_sdxl_pipeline()
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert _same_weights(getattr(sdxl_pipe, component), getattr(built, component)), component
        assert next(getattr(sdxl_pipe, component).parameters()).dtype == torch.float32
    assert sdxl_pipe.device.type == "cpu"
    assert sdxl_pipe._progress_bar_config == {"disable": True}
    # a resolved model loads the same
    assert type(load_pipeline(resolve_model(str(sdxl_dir)))) is StableDiffusionXLPipeline


def test_load_pipeline_still_loads_sd(tiny_model):
    from diffusers import StableDiffusionPipeline

    from policykit.models.loading import load_pipeline

    pipe = load_pipeline(tiny_model)
    assert type(pipe) is StableDiffusionPipeline
    assert _same_weights(pipe.unet, build_tiny_pipeline().unet)


def test_load_pipeline_refuses_other_pipelines(tmp_path):
    from policykit.models.loading import load_pipeline

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="FluxPipeline.*StableDiffusionPipeline and StableDiffusionXLPipeline"):
        load_pipeline(tmp_path)
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_pipeline(tmp_path)
    with pytest.raises(OSError, match="no model_index.json"):
        load_pipeline(tmp_path / "missing")


def test_pipeline_class_resolves_names_classes_and_pipelines(sdxl_pipe):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    from policykit.models.loading import pipeline_class

    assert pipeline_class() is StableDiffusionPipeline
    assert pipeline_class(XL) is StableDiffusionXLPipeline
    assert pipeline_class(StableDiffusionXLPipeline) is StableDiffusionXLPipeline
    assert pipeline_class(sdxl_pipe) is StableDiffusionXLPipeline
    for wrong in ("FluxPipeline", DiffusionPipeline, 3):
        with pytest.raises(ValueError, match="not a pipeline class policykit supports"):
            pipeline_class(wrong)


# ---------------------------------------------------------------- an edit on an SDXL U-Net


def test_cross_attention_delta_applies_to_the_sdxl_unet(sdxl_pipe, tmp_path):
    from policykit.realera.edit import EditResult, apply_edit, fuse_adapter, load_edit, save_edit

    layers = _cross_attention_kv(sdxl_pipe.unet)
    assert layers and all(m.in_features == sdxl_pipe.unet.config.cross_attention_dim == 80 for m in layers.values())
    g = torch.Generator().manual_seed(3)
    delta = {f"{name}.weight": 0.1 * torch.randn(m.weight.shape, generator=g) for name, m in layers.items()}
    edit = EditResult(weights=delta, lora=None, lora_config=None, records=[], method="test", plan_hash="h")
    base = copy.deepcopy(sdxl_pipe.unet.state_dict())

    save_edit(edit, tmp_path / "artifact", pipeline_class=XL)
    for source in (edit, tmp_path / "artifact", load_edit(tmp_path / "artifact")):
        pipe = apply_edit(copy.deepcopy(sdxl_pipe), source)
        fuse_adapter(pipe)  # no adapter: nothing to fuse
        state = pipe.unet.state_dict()
        assert state.keys() == base.keys()
        for key, value in state.items():
            expected = base[key] + delta[key] if key in delta else base[key]
            assert torch.allclose(value, expected, atol=1e-7), key

    # an edit made for SD 1.x's 32-wide text encoder does not fit the SDXL U-Net
    wrong = EditResult(weights={key: v[:, :32] for key, v in delta.items()}, lora=None, lora_config=None, records=[])
    with pytest.raises(ValueError, match="the edit has shape"):
        apply_edit(copy.deepcopy(sdxl_pipe), wrong)


def test_save_lora_for_sdxl_is_read_by_the_stock_sdxl_loader(sdxl_pipe, tmp_path):
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    from policykit.artifact.layout import LORA_WEIGHT_NAME
    from policykit.realera.edit import lora_state, save_lora

    targets = sorted(_cross_attention_kv(sdxl_pipe.unet))
    linears = sorted(n for n, m in sdxl_pipe.unet.named_modules() if isinstance(m, torch.nn.Linear))
    trained = _random_adapter(copy.deepcopy(sdxl_pipe.unet))
    state, config = lora_state(trained)
    path = save_lora(state, config, tmp_path / "lora", pipeline_class=StableDiffusionXLPipeline)
    assert path == tmp_path / "lora" / LORA_WEIGHT_NAME
    assert all(k.startswith("unet.") for k in load_file(str(path)))

    plain = copy.deepcopy(sdxl_pipe)
    StableDiffusionXLPipeline.load_lora_weights(plain, str(tmp_path / "lora"), adapter_name="check")
    assert sorted(plain.unet.peft_config) == ["check"]
    wrapped = sorted(n for n, m in plain.unet.named_modules() if hasattr(m, "base_layer"))
    assert wrapped == targets

    before = _linear_outputs(sdxl_pipe.unet, linears)
    after = _linear_outputs(plain.unet, linears)
    want = _linear_outputs(trained, linears)
    changed = sorted(n for n in linears if not torch.allclose(before[n], after[n], atol=1e-6))
    assert changed == targets  # exactly the cross-attention k/v projections
    for name in targets:
        assert torch.allclose(after[name], want[name], atol=1e-5), name
    inputs = _unet_inputs(sdxl_pipe.unet)
    assert torch.allclose(_unet_out(plain.unet, inputs), _unet_out(trained, inputs), atol=1e-5)
    assert not torch.allclose(_unet_out(plain.unet, inputs), _unet_out(sdxl_pipe.unet, inputs), atol=1e-4)


def test_save_lora_defaults_to_sd_and_refuses_other_classes(tmp_path):
    from diffusers import StableDiffusionPipeline

    from policykit.realera.edit import lora_state, save_lora

    pipe = build_tiny_pipeline()
    trained = _random_adapter(copy.deepcopy(pipe.unet))
    state, config = lora_state(trained)
    save_lora(state, config, tmp_path / "sd")  # no class: SD 1.x / 2.x, as before
    StableDiffusionPipeline.load_lora_weights(pipe, str(tmp_path / "sd"), adapter_name="check")
    assert "check" in pipe.unet.peft_config
    with pytest.raises(ValueError, match="not a pipeline class policykit supports"):
        save_lora(state, config, tmp_path / "flux", pipeline_class="FluxPipeline")


def _sdxl_edit(pipe, seed: int = 0):
    """An EditResult for the SDXL pipeline: k/v deltas and a random k/v LoRA; and the U-Net it describes."""
    from policykit.realera.edit import EditResult, add_delta, lora_state

    g = torch.Generator().manual_seed(seed + 7)
    delta = {f"{name}.weight": 0.1 * torch.randn(m.weight.shape, generator=g)
             for name, m in _cross_attention_kv(pipe.unet).items()}
    edited = copy.deepcopy(pipe.unet)
    add_delta(edited, delta)
    _random_adapter(edited, seed)
    state, config = lora_state(edited)
    return EditResult(weights=delta, lora=state, lora_config=config, records=[], method="test",
                      plan_hash="0" * 64), edited


def test_sdxl_edit_saves_loads_applies_and_fuses(sdxl_pipe, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from policykit.realera.edit import EditResult, apply_edit, fuse_adapter, load_edit, save_edit

    edit, edited = _sdxl_edit(sdxl_pipe)
    weights = save_edit(edit, tmp_path / "artifact", pipeline_class=StableDiffusionXLPipeline)
    inputs = _unet_inputs(sdxl_pipe.unet, seed=1)
    want = _unet_out(edited, inputs)

    applied = apply_edit(copy.deepcopy(sdxl_pipe), load_edit(tmp_path / "artifact"))
    assert torch.allclose(_unet_out(applied.unet, inputs), want, atol=1e-5)
    fuse_adapter(applied)
    assert not any("lora" in k or "base_layer" in k for k in applied.unet.state_dict())
    assert torch.allclose(_unet_out(applied.unet, inputs), want, atol=1e-5)

    # the stock SDXL loader reads the artifact's lora/ on top of the deltas too
    plain = copy.deepcopy(sdxl_pipe)
    apply_edit(plain, EditResult(weights=edit.weights, lora=None, lora_config=None, records=[]))
    plain.load_lora_weights(str(weights / "lora"), adapter_name="check")
    assert torch.allclose(_unet_out(plain.unet, inputs), want, atol=1e-5)


# ---------------------------------------------------------------- artifacts: base model, edited pipeline, export


def _verified(sdxl_dir, tmp_path, *, pipeline_class: str | None = XL, sha: str | None = None):
    """A hand-built VerifiedArtifact over the SDXL base (what open_artifact returns once apply can publish one)."""
    from policykit.artifact.load import VerifiedArtifact
    from policykit.models import resolve_model
    from policykit.realera.edit import save_edit

    edit, edited = _sdxl_edit(build_tiny_sdxl_pipeline())
    weights = save_edit(edit, tmp_path / "artifact", pipeline_class=XL)
    files = {f"weights/{p.relative_to(weights).as_posix()}": p.read_bytes() for p in weights.rglob("*") if p.is_file()}
    base = {"id": str(sdxl_dir), "revision": None, "source": "local",
            "sha256": sha or resolve_model(str(sdxl_dir)).sha256()}
    if pipeline_class:
        base["architecture"] = {"family": "sdxl", "pipeline_class": pipeline_class}
    manifest = {"base_model": base, "status": "passed", "content_id": "test-content-id",
                "policy": {"name": "tiny-sdxl", "version": "1.0.0"}}
    return VerifiedArtifact(tmp_path / "artifact", manifest, files), edited


def test_base_pipeline_for_returns_the_base_models_class(sdxl_dir, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from policykit.artifact.load import ArtifactRefused, base_pipeline_for

    verified, _ = _verified(sdxl_dir, tmp_path)
    pipe = base_pipeline_for(verified)
    assert type(pipe) is StableDiffusionXLPipeline
    assert _same_weights(pipe.unet, build_tiny_sdxl_pipeline().unet)
    assert type(base_pipeline_for(verified, model_dir=sdxl_dir)) is StableDiffusionXLPipeline
    unrecorded, _ = _verified(sdxl_dir, tmp_path / "old", pipeline_class=None)  # a manifest without architecture
    assert type(base_pipeline_for(unrecorded)) is StableDiffusionXLPipeline

    wrong_class, _ = _verified(sdxl_dir, tmp_path / "wrong", pipeline_class="StableDiffusionPipeline")
    with pytest.raises(ArtifactRefused, match="is a StableDiffusionXLPipeline, but .* on a StableDiffusionPipeline"):
        base_pipeline_for(wrong_class)
    wrong_sha, _ = _verified(sdxl_dir, tmp_path / "sha", sha="0" * 64)
    with pytest.raises(ArtifactRefused, match="the edit only applies to the exact model"):
        base_pipeline_for(wrong_sha)


def test_build_pipeline_and_export_of_an_sdxl_artifact(sdxl_dir, tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline, StableDiffusionXLPipeline

    import policykit.artifact.load as load
    from policykit.artifact.export import EXPORT_NOTE, export_diffusers

    verified, edited = _verified(sdxl_dir, tmp_path)
    inputs = _unet_inputs(edited, seed=2)
    want = _unet_out(edited, inputs)

    pipe = load.build_pipeline(verified)
    assert type(pipe) is StableDiffusionXLPipeline
    assert not getattr(pipe.unet, "peft_config", None)  # fused
    assert torch.allclose(_unet_out(pipe.unet, inputs), want, atol=1e-5)
    kept = load.build_pipeline(verified, keep_adapter=True)
    assert type(kept) is StableDiffusionXLPipeline and "realera" in kept.unet.peft_config

    # export_diffusers runs the loading rule through open_artifact: hand it the verified artifact
    monkeypatch.setattr(load, "open_artifact", lambda *a, **k: verified)
    out = export_diffusers(verified.path, tmp_path / "export", allow_unsigned=True)
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == XL
    assert json.loads((out / EXPORT_NOTE).read_text())["policy"] == "tiny-sdxl"
    exported = StableDiffusionXLPipeline.from_pretrained(out, local_files_only=True)
    assert _same_weights(exported.unet, pipe.unet)
    assert torch.allclose(_unet_out(exported.unet, inputs), want, atol=1e-5)
    assert type(DiffusionPipeline.from_pretrained(out, local_files_only=True)) is StableDiffusionXLPipeline


def test_generate_command_draws_with_the_sdxl_pipeline(sdxl_dir, tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    import policykit.artifact.load as load
    from policykit.audit.sampling import image_seed
    from policykit.commands import generate

    verified, _ = _verified(sdxl_dir, tmp_path)
    monkeypatch.setattr(load, "open_artifact", lambda *a, **k: verified)
    args = argparse.Namespace(artifact=str(verified.path), prompt="a red circle", n=2, out=str(tmp_path / "out"),
                              seed=3, steps=2, guidance=4.0, device=None, public_key=None, allow_unsigned=True,
                              allow_failed_audit=False)
    assert generate.run(args) == 0
    files = sorted((tmp_path / "out").glob("*.png"))
    assert [f.name for f in files] == ["a-red-circle-3-0.png", "a-red-circle-3-1.png"]

    # the same images as the edited SDXL pipeline called directly, image by image, with its own seed
    pipe = load.build_pipeline(verified)
    for i, file in enumerate(files):
        got = np.asarray(Image.open(file))
        assert got.shape == (16, 16, 3)
        with torch.no_grad():
            out = pipe("a red circle", num_inference_steps=2, guidance_scale=4.0, output_type="np",
                       generator=torch.Generator().manual_seed(image_seed(3, "a red circle", i)))
        want = np.clip(np.round(out.images[0] * 255.0), 0, 255).astype(np.uint8)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
