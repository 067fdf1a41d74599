"""export --format single-file: the original Stable Diffusion checkpoint layout, checked by reading it back.

The reader is diffusers' own ``from_single_file`` (and its LDM -> diffusers
converters), so a key named or shaped wrongly shows up as a missing weight or
a different output, not as a string comparison with our own table.
"""


import pytest

from policykit.cli import main
from policykit.testing import HalfBright, build_tiny_pipeline, build_tiny_sdxl_pipeline


POLICY = """\
apiVersion: policykit/v1alpha1
kind: ErasurePolicy
metadata:
  name: tiny-export
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


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, tiny_model):
    """An unsigned artifact with a cross-attention delta and a LoRA on the tiny model."""
    from policykit.apply import apply_policy

    root = tmp_path_factory.mktemp("artifact")
    policy = root / "policy.yaml"
    policy.write_text(POLICY.format(model=tiny_model, out=root / "artifacts"))
    return apply_policy(policy, output_dir=root / "artifacts", classifier=HalfBright()).path


def _another_unet(**config):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=8, norm_num_groups=4, cross_attention_dim=32, attention_head_dim=2,
                                **config).eval()


# Non-SD-1.5 shapes: three levels with attention in varying places, several layers and transformer depths.
UNET_CONFIGS = [
    dict(down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
         block_out_channels=(8, 16, 16), layers_per_block=2),
    dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
         block_out_channels=(8, 16), layers_per_block=3, transformer_layers_per_block=2),
]


@pytest.mark.parametrize("config", UNET_CONFIGS)
def test_any_unet_config_reads_back_exactly_through_diffusers_converter(config):
    import torch
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from policykit.artifact.single_file import UNET_PREFIX, _unet_places

    torch.manual_seed(0)
    unet = _another_unet(**config)
    places = _unet_places(unet)
    ldm = {UNET_PREFIX + places.ldm_key(k): v for k, v in unet.state_dict().items()}
    back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    original = unet.state_dict()
    assert set(back) == set(original)
    for key, value in original.items():
        assert torch.equal(back[key], value), key


@pytest.mark.slow
def test_builtin_shapes_reads_back_exactly_through_diffusers_converters():
    import torch
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from policykit.artifact.single_file import diffusers_to_ldm_state_dict
    from policykit.models import load_pipeline, resolve_model

    pipe = load_pipeline(resolve_model("builtin:shapes"))
    state = diffusers_to_ldm_state_dict(pipe)
    for model, convert in ((pipe.unet, convert_ldm_unet_checkpoint), (pipe.vae, convert_ldm_vae_checkpoint)):
        back, original = convert(state, dict(model.config)), model.state_dict()
        assert set(back) == set(original)
        for key, value in original.items():
            assert torch.equal(back[key], value), key


def test_every_tensor_is_placed_exactly_once_in_the_three_ldm_sections():
    from policykit.artifact.single_file import (TEXT_ENCODER_PREFIX, UNET_PREFIX, VAE_PREFIX,
                                                diffusers_to_ldm_state_dict, ldm_key_map)

    pipe = build_tiny_pipeline()
    mapping = ldm_key_map(pipe)
    expected = {f"{c}.{k}" for c in ("unet", "vae", "text_encoder") for k in getattr(pipe, c).state_dict()}
    assert set(mapping) == expected  # nothing dropped
    assert len(set(mapping.values())) == len(mapping)  # nothing written twice
    state = diffusers_to_ldm_state_dict(pipe)
    assert set(state) == set(mapping.values())
    for component, prefix in (("unet", UNET_PREFIX), ("vae", VAE_PREFIX), ("text_encoder", TEXT_ENCODER_PREFIX)):
        count = len(getattr(pipe, component).state_dict())
        assert sum(k.startswith(prefix) for k in state) == count, component
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in state
    # the VAE attention's projections are 1x1 convolutions in the LDM layout
    assert state["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4
    assert state["first_stage_model.encoder.mid.attn_1.proj_out.weight"].shape[-2:] == (1, 1)


def test_tensor_without_a_place_is_an_error_not_dropped():
    from policykit.artifact.single_file import SingleFileUnsupported, ldm_key_map

    pipe = build_tiny_pipeline()
    pipe.unet = _another_unet(class_embed_type="timestep", **UNET_CONFIGS[1])
    with pytest.raises(SingleFileUnsupported, match="class_embedding"):
        ldm_key_map(pipe)


def test_sdxl_every_tensor_is_placed_exactly_once_in_the_sdxl_sections():
    import torch

    from policykit.artifact.single_file import (SDXL_OPEN_CLIP_PREFIX, SDXL_TEXT_ENCODER_PREFIX, UNET_PREFIX,
                                                VAE_PREFIX, diffusers_to_ldm_state_dict, is_sdxl, ldm_key_map)

    pipe = build_tiny_sdxl_pipeline()
    assert is_sdxl(pipe)
    mapping = ldm_key_map(pipe)
    # text_encoder_2 is in the OpenCLIP layout (q/k/v stacked), so not in the one-to-one map
    expected = {f"{c}.{k}" for c in ("unet", "vae", "text_encoder") for k in getattr(pipe, c).state_dict()}
    assert set(mapping) == expected
    assert len(set(mapping.values())) == len(mapping)
    state = diffusers_to_ldm_state_dict(pipe)
    sections = (UNET_PREFIX, VAE_PREFIX, SDXL_TEXT_ENCODER_PREFIX, SDXL_OPEN_CLIP_PREFIX)
    assert all(k.startswith(sections) for k in state)  # nothing under SD 1.x / 2.x names
    for component, prefix in (("unet", UNET_PREFIX), ("vae", VAE_PREFIX), ("text_encoder", SDXL_TEXT_ENCODER_PREFIX)):
        assert sum(k.startswith(prefix) for k in state) == len(getattr(pipe, component).state_dict()), component
    # OpenCLIP: per layer q/k/v weight and bias become 2 tensors, 12 -> 8 (+ the top-level tensors, + projection)
    encoder_2 = pipe.text_encoder_2.state_dict()
    layers = pipe.text_encoder_2.config.num_hidden_layers
    assert sum(k.startswith(SDXL_OPEN_CLIP_PREFIX) for k in state) == len(encoder_2) - 4 * layers
    assert "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight" in state
    assert "conditioner.embedders.1.model.positional_embedding" in state
    # the projection is OpenCLIP's matrix (hidden x projection), the transposed Linear weight
    assert torch.equal(state["conditioner.embedders.1.model.text_projection"], encoder_2["text_projection.weight"].T)
    unet = pipe.unet.state_dict()
    for ours, theirs in (("linear_1", "label_emb.0.0"), ("linear_2", "label_emb.0.2")):
        for kind in ("weight", "bias"):
            assert torch.equal(state[f"{UNET_PREFIX}{theirs}.{kind}"], unet[f"add_embedding.{ours}.{kind}"])
    # use_linear_projection: proj_in / proj_out stay linear weights
    assert state[f"{UNET_PREFIX}input_blocks.1.1.proj_in.weight"].ndim == 2


def test_sdxl_unet_and_second_text_encoder_read_back_exactly_through_diffusers_converters():
    import torch
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_open_clip_checkpoint

    from policykit.artifact.single_file import SDXL_OPEN_CLIP_PREFIX, diffusers_to_ldm_state_dict

    pipe = build_tiny_sdxl_pipeline()
    state = diffusers_to_ldm_state_dict(pipe)
    back, original = convert_ldm_unet_checkpoint(state, dict(pipe.unet.config)), pipe.unet.state_dict()
    assert set(back) == set(original)
    for key, value in original.items():
        assert torch.equal(back[key], value), key
    back = convert_open_clip_checkpoint(pipe.text_encoder_2, state, prefix=SDXL_OPEN_CLIP_PREFIX)
    original = pipe.text_encoder_2.state_dict()
    assert set(back) == {k for k in original if not k.endswith("position_ids")}
    for key, value in back.items():
        assert torch.equal(value, original[key]), key


def test_sdxl_single_file_loads_back_through_stock_from_single_file(tmp_path):
    import torch
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file

    from policykit.artifact.single_file import diffusers_to_ldm_state_dict

    torch.manual_seed(0)
    pipe = build_tiny_sdxl_pipeline()
    config = tmp_path / "config"
    pipe.save_pretrained(config)
    out = tmp_path / "sdxl.safetensors"
    save_file(diffusers_to_ldm_state_dict(pipe), str(out))
    loaded = StableDiffusionXLPipeline.from_single_file(str(out), config=str(config), local_files_only=True)
    # diffusers tells the two encoders apart by width: the tiny pipeline's differ (32, 48), as SDXL's do
    for component in ["unet", "vae", "text_encoder", "text_encoder_2"]:
        original, back = getattr(pipe, component).state_dict(), getattr(loaded, component).state_dict()
        assert set(back) == set(original), component
        for key, value in original.items():
            assert back[key].device.type != "meta", f"{component}.{key} not loaded"
            assert back[key].shape == value.shape, f"{component}.{key}"
            assert torch.allclose(back[key], value, atol=1e-5), f"{component}.{key}"


def test_sdxl_without_its_second_text_encoder_is_an_error():
    from policykit.artifact.single_file import SingleFileUnsupported, diffusers_to_ldm_state_dict

    pipe = build_tiny_sdxl_pipeline()
    pipe.text_encoder_2 = None
    with pytest.raises(SingleFileUnsupported, match="text_encoder_2"):
        diffusers_to_ldm_state_dict(pipe)


@pytest.mark.slow
def test_single_file_export_loads_back_with_the_edited_outputs(tmp_path, artifact, tiny_model, capsys):
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    from policykit.artifact.load import load_pipeline

    out = tmp_path / "edited.safetensors"
    assert main(["export", str(artifact), "--format", "single-file", "--out", str(out), "--allow-unsigned"]) == 0
    assert "from_single_file" in capsys.readouterr().out
    with safe_open(str(out), "pt") as handle:
        assert '"content_id"' in handle.metadata()["policykit_export"]

    edited = load_pipeline(artifact, allow_unsigned=True, keep_adapter=True)
    assert edited.unet.peft_config  # the artifact's LoRA is live here, fused in the file
    loaded = StableDiffusionPipeline.from_single_file(str(out), config=str(tiny_model), local_files_only=True)
    base = StableDiffusionPipeline.from_pretrained(tiny_model)

    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    ids = edited.tokenizer(["a photo of red circle", "a cat"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        text = edited.text_encoder(ids)[0]
        assert torch.allclose(loaded.text_encoder(ids)[0], text, atol=1e-5)
        step = torch.tensor(500)
        want = edited.unet(latents, step, encoder_hidden_states=text).sample
        assert torch.allclose(loaded.unet(latents, step, encoder_hidden_states=text).sample, want, atol=1e-5)
        # the file holds the edit, not the base model
        assert not torch.allclose(base.unet(latents, step, encoder_hidden_states=text).sample, want, atol=1e-5)
        assert torch.allclose(loaded.vae.decode(latents).sample, edited.vae.decode(latents).sample, atol=1e-5)

    # an existing file is never overwritten
    assert main(["export", str(artifact), "--format", "single-file", "--out", str(out), "--allow-unsigned"]) == 1
    assert "exists" in capsys.readouterr().err


def test_single_file_export_keeps_the_loading_rule(tmp_path, artifact, capsys):
    out = tmp_path / "edited.safetensors"
    assert main(["export", str(artifact), "--format", "single-file", "--out", str(out)]) == 1
    assert "no public key" in capsys.readouterr().err
    assert not out.exists()


def test_single_file_export_gets_the_mode_of_a_file_the_user_writes(tmp_path, artifact):
    import os
    import stat

    out = tmp_path / "edited.safetensors"
    previous = os.umask(0o022)
    try:
        assert main(["export", str(artifact), "--format", "single-file", "--out", str(out), "--allow-unsigned"]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # not a temporary file's private 0600
    assert [p.name for p in tmp_path.iterdir()] == ["edited.safetensors"]  # no partial file left
