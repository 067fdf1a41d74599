"""Exporting an artifact as one ``.safetensors`` file in the original Stable Diffusion layout.

AUTOMATIC1111, ComfyUI and ``StableDiffusionPipeline.from_single_file`` /
``StableDiffusionXLPipeline.from_single_file`` read the checkpoint layout of the
original (LDM / CompVis, and for SDXL Stability's ``generative-models``) code
bases, not diffusers' per-component directories. This module renames the edited
pipeline's tensors into that layout:

- U-Net  -> ``model.diffusion_model.*`` (``input_blocks`` / ``middle_block`` /
  ``output_blocks``, numbered the way the LDM U-Net builds its layers; SDXL's
  added conditioning ``add_embedding.linear_1`` / ``linear_2`` ->
  ``label_emb.0.0`` / ``label_emb.0.2``; transformer blocks keep their names,
  ``proj_in`` / ``proj_out`` staying linear under ``use_linear_projection``),
- VAE    -> ``first_stage_model.*`` (``encoder.down.N.block.M`` ..., the
  decoder's ``up`` blocks counted from the lowest resolution, attention
  projections as 1x1 convolutions),
- CLIP   -> ``cond_stage_model.transformer.text_model.*`` (SD 1.x), or, for
  SD 2.x's OpenCLIP text encoder (recognised by its tokenizer, which pads
  with ``!`` rather than its end-of-text token),
  ``cond_stage_model.model.*``: ``token_embedding``, ``positional_embedding``,
  ``transformer.resblocks.N`` (``ln_1``, ``attn.in_proj_weight`` / ``_bias``
  with query, key and value stacked in that order, ``attn.out_proj``,
  ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``) and ``ln_final``.
- SDXL (recognised by its second text encoder, ``text_encoder_2``): the CLIP
  ViT-L ``text_encoder`` -> ``conditioner.embedders.0.transformer.text_model.*``
  and the OpenCLIP ViT-bigG ``text_encoder_2`` -> ``conditioner.embedders.1.model.*``
  in the OpenCLIP layout above, its projection ``text_projection.weight``
  (a ``Linear`` weight, projection x hidden) stored transposed as the matrix
  ``conditioner.embedders.1.model.text_projection`` (hidden x projection).

The numbering is derived from the model's own modules, not from SD 1.5's
fixed counts, so small or non-standard U-Nets (``builtin:shapes``) convert too.
Every tensor is placed exactly once; one the layout has no place for
(class embeddings, added conditioning other than SDXL's ``text_time``, ...) is
an error, never dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer."
OPEN_CLIP_PREFIX = "cond_stage_model.model."
SDXL_TEXT_ENCODER_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

# Module renames inside one residual block: diffusers name -> LDM name.
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
               "conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
# The VAE attention's linear projections are 1x1 convolutions in the LDM layout.
_VAE_ATTENTION_CONVS = {"q", "k", "v", "proj_out"}


class SingleFileUnsupported(ValueError):
    """The model has tensors the original Stable Diffusion checkpoint layout has no place for."""


class _Places:
    """diffusers module prefixes -> (LDM prefix, renames or None for "same names below")."""

    def __init__(self):
        self.entries: list[tuple[str, str, dict[str, str] | None]] = []

    def add(self, diffusers: str, ldm: str, renames: dict[str, str] | None = None):
        self.entries.append((diffusers, ldm, renames))

    def ldm_key(self, key: str) -> str | None:
        """The LDM name of diffusers state-dict key ``key``, or None when no place matches."""
        for diffusers, ldm, renames in self.entries:
            if not key.startswith(diffusers + "."):
                continue
            rest = key[len(diffusers) + 1:]
            if renames is None:
                return f"{ldm}.{rest}"
            module, _, param = rest.rpartition(".")
            if module in renames:
                return f"{ldm}.{renames[module]}.{param}"
            return None
        return None


def _unet_places(unet) -> _Places:
    places = _Places()
    places.add("conv_in", "input_blocks.0.0")
    places.add("time_embedding.linear_1", "time_embed.0")
    places.add("time_embedding.linear_2", "time_embed.2")
    if unet.config.get("addition_embed_type") == "text_time":  # SDXL's pooled text embedding and time ids
        places.add("add_embedding.linear_1", "label_emb.0.0")
        places.add("add_embedding.linear_2", "label_emb.0.2")
    # input_blocks: one entry per (resnet [+ attention]) and one per downsampler, in order
    index = 1
    for b, block in enumerate(unet.down_blocks):
        attentions = getattr(block, "attentions", None)
        for j in range(len(block.resnets)):
            places.add(f"down_blocks.{b}.resnets.{j}", f"input_blocks.{index}.0", _UNET_RESNET)
            if attentions is not None:
                places.add(f"down_blocks.{b}.attentions.{j}", f"input_blocks.{index}.1")
            index += 1
        if getattr(block, "downsamplers", None):
            places.add(f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{index}.0.op")
            index += 1
    # middle_block: resnet, attention, resnet, ... interleaved
    mid = unet.mid_block
    if mid is not None:
        attentions = getattr(mid, "attentions", None) or []
        position = 0
        for j in range(len(mid.resnets)):
            places.add(f"mid_block.resnets.{j}", f"middle_block.{position}", _UNET_RESNET)
            position += 1
            if j < len(attentions):
                places.add(f"mid_block.attentions.{j}", f"middle_block.{position}")
                position += 1
    # output_blocks: one entry per (resnet [+ attention] [+ upsampler on the block's last layer])
    index = 0
    for b, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None)
        last = len(block.resnets) - 1
        for j in range(len(block.resnets)):
            places.add(f"up_blocks.{b}.resnets.{j}", f"output_blocks.{index}.0", _UNET_RESNET)
            slot = 1
            if attentions is not None:
                places.add(f"up_blocks.{b}.attentions.{j}", f"output_blocks.{index}.1")
                slot = 2
            if j == last and getattr(block, "upsamplers", None):
                places.add(f"up_blocks.{b}.upsamplers.0.conv", f"output_blocks.{index}.{slot}.conv")
            index += 1
    places.add("conv_norm_out", "out.0")
    places.add("conv_out", "out.2")
    return places


def _vae_places(vae) -> _Places:
    places = _Places()
    for side in ("encoder", "decoder"):
        for same in ("conv_in", "conv_out"):
            places.add(f"{side}.{same}", f"{side}.{same}")
        places.add(f"{side}.conv_norm_out", f"{side}.norm_out")
        mid = getattr(vae, side).mid_block
        if mid is not None:
            for j in range(len(mid.resnets)):
                places.add(f"{side}.mid_block.resnets.{j}", f"{side}.mid.block_{j + 1}", _VAE_RESNET)
            for j in range(len(getattr(mid, "attentions", None) or [])):
                places.add(f"{side}.mid_block.attentions.{j}", f"{side}.mid.attn_{j + 1}", _VAE_ATTENTION)
    for b, block in enumerate(vae.encoder.down_blocks):
        for j in range(len(block.resnets)):
            places.add(f"encoder.down_blocks.{b}.resnets.{j}", f"encoder.down.{b}.block.{j}", _VAE_RESNET)
        if getattr(block, "downsamplers", None):
            places.add(f"encoder.down_blocks.{b}.downsamplers.0.conv", f"encoder.down.{b}.downsample.conv")
    # the LDM decoder numbers its up blocks from the lowest resolution, diffusers from the highest
    count = len(vae.decoder.up_blocks)
    for b, block in enumerate(vae.decoder.up_blocks):
        level = count - 1 - b
        for j in range(len(block.resnets)):
            places.add(f"decoder.up_blocks.{b}.resnets.{j}", f"decoder.up.{level}.block.{j}", _VAE_RESNET)
        if getattr(block, "upsamplers", None):
            places.add(f"decoder.up_blocks.{b}.upsamplers.0.conv", f"decoder.up.{level}.upsample.conv")
    places.add("quant_conv", "quant_conv")
    places.add("post_quant_conv", "post_quant_conv")
    return places


def _text_encoder_key(key: str) -> str:
    # transformers >= 5.6 flattened CLIPTextModel (no ``text_model.`` level); the SD 1.x layout has it
    return key if key.startswith("text_model.") else f"text_model.{key}"


def is_open_clip(pipe) -> bool:
    """True for SD 2.x's OpenCLIP text encoder: its tokenizer pads with another token than end-of-text."""
    tokenizer = getattr(pipe, "tokenizer", None)
    return tokenizer is not None and tokenizer.pad_token != tokenizer.eos_token


def is_sdxl(pipe) -> bool:
    """True for an SDXL pipeline: it has a second text encoder (or is a ``StableDiffusionXLPipeline``)."""
    return getattr(pipe, "text_encoder_2", None) is not None or type(pipe).__name__ == "StableDiffusionXLPipeline"


def text_encoder_layouts(pipe) -> list[tuple[str, str, bool]]:
    """``(component, LDM prefix, OpenCLIP layout?)`` for each of the pipeline's text encoders.

    SD 1.x: the CLIP ``text_encoder`` in the transformers layout; SD 2.x: the
    same component in the OpenCLIP layout; SDXL: CLIP ViT-L in the transformers
    layout and OpenCLIP ViT-bigG (``text_encoder_2``) in the OpenCLIP layout.
    Raises :class:`SingleFileUnsupported` for an SDXL pipeline without both.
    """
    if is_sdxl(pipe):
        missing = [c for c in ("text_encoder", "text_encoder_2") if getattr(pipe, c, None) is None]
        if missing:
            raise SingleFileUnsupported(f"the SDXL checkpoint layout needs both text encoders; this pipeline has no "
                                        f"{' and no '.join(missing)}; export with --format diffusers instead")
        return [("text_encoder", SDXL_TEXT_ENCODER_PREFIX, False), ("text_encoder_2", SDXL_OPEN_CLIP_PREFIX, True)]
    if is_open_clip(pipe):
        return [("text_encoder", OPEN_CLIP_PREFIX, True)]
    return [("text_encoder", TEXT_ENCODER_PREFIX, False)]


_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
                    "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
_OPEN_CLIP_TOP = {"embeddings.token_embedding.weight": "token_embedding.weight",
                  "embeddings.position_embedding.weight": "positional_embedding",
                  "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}


def open_clip_state_dict(text_encoder, prefix: str = OPEN_CLIP_PREFIX,
                         component: str = "text_encoder") -> dict[str, "torch.Tensor"]:
    """A ``CLIPTextModel``'s tensors in the OpenCLIP layout under ``prefix`` (SD 2.x: ``cond_stage_model.model.``,
    SDXL's second text encoder: ``conditioner.embedders.1.model.``).

    Query, key and value projections are stacked into ``attn.in_proj_weight`` / ``in_proj_bias`` (in that
    order); outside SD 2.x's prefix, a ``CLIPTextModelWithProjection``'s ``text_projection.weight`` (projection x
    hidden) becomes the matrix ``text_projection`` (hidden x projection: OpenCLIP multiplies ``x @ text_projection``);
    buffers such as ``position_ids`` have no place there and are left out. Raises :class:`SingleFileUnsupported`
    (naming ``component``) for any other tensor.
    """
    import torch

    state = {k[len("text_model."):] if k.startswith("text_model.") else k: v.detach()
             for k, v in text_encoder.state_dict().items()}
    out: dict[str, "torch.Tensor"] = {}
    placed = set()
    for key, tensor in state.items():
        if key in _OPEN_CLIP_TOP:
            out[prefix + _OPEN_CLIP_TOP[key]] = tensor
            placed.add(key)
    # SD 2.x's readers skip ``cond_stage_model.model.text_projection`` (its pipeline has no projection): a
    # projection there would be lost on reading, so it stays without a place (an error) outside SDXL
    if "text_projection.weight" in state and prefix != OPEN_CLIP_PREFIX:
        out[prefix + "text_projection"] = state["text_projection.weight"].T
        placed.add("text_projection.weight")
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for i in layers:
        source, target = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            parts = [f"{source}self_attn.{p}_proj.{kind}" for p in ("q", "k", "v")]
            out[f"{target}attn.in_proj_{kind}"] = torch.cat([state[p] for p in parts])
            placed.update(parts)
            for ours, theirs in _OPEN_CLIP_LAYER.items():
                out[f"{target}{theirs}.{kind}"] = state[f"{source}{ours}.{kind}"]
                placed.add(f"{source}{ours}.{kind}")
    unplaced = [k for k in state if k not in placed and not k.endswith("position_ids")]
    if unplaced:
        raise SingleFileUnsupported(f"the OpenCLIP layout has no place for {component}.{unplaced[0]}; "
                                    "export with --format diffusers instead")
    return {k: v.contiguous() for k, v in out.items()}


def ldm_key_map(pipe) -> dict[str, str]:
    """Where each tensor goes: ``"unet.KEY"`` / ``"vae.KEY"`` / ``"text_encoder.KEY"`` -> LDM key.

    Text encoders in the OpenCLIP layout (SD 2.x's, SDXL's ``text_encoder_2``) are not in the map: their
    query, key and value projections are stacked into one tensor there (see :func:`open_clip_state_dict`).
    Raises :class:`SingleFileUnsupported` naming any tensor the layout has no place for.
    """
    mapping: dict[str, str] = {}
    unplaced: list[str] = []
    for component, prefix, places in (("unet", UNET_PREFIX, _unet_places(pipe.unet)),
                                      ("vae", VAE_PREFIX, _vae_places(pipe.vae))):
        for key in getattr(pipe, component).state_dict():
            ldm = places.ldm_key(key)
            if ldm is None:
                unplaced.append(f"{component}.{key}")
            else:
                mapping[f"{component}.{key}"] = prefix + ldm
    for component, prefix, open_clip in text_encoder_layouts(pipe):
        if not open_clip:
            for key in getattr(pipe, component).state_dict():
                mapping[f"{component}.{key}"] = prefix + _text_encoder_key(key)
    if unplaced:
        shown = ", ".join(unplaced[:5]) + (f" and {len(unplaced) - 5} more" if len(unplaced) > 5 else "")
        raise SingleFileUnsupported(f"the original Stable Diffusion checkpoint layout has no place for {shown}; "
                                    "export with --format diffusers instead")
    return mapping


def diffusers_to_ldm_state_dict(pipe) -> dict[str, "torch.Tensor"]:
    """The pipeline's U-Net, VAE and text encoder(s) tensors under their original Stable Diffusion names.

    ``pipe`` must have its edit baked in (no active LoRA layers: fuse and
    unload first). The VAE attention's q/k/v/proj_out weights become 1x1
    convolutions, OpenCLIP's query/key/value projections one stacked tensor
    and its text projection the transposed matrix; every other tensor keeps
    its shape.
    """
    mapping = ldm_key_map(pipe)
    layouts = text_encoder_layouts(pipe)
    out: dict[str, "torch.Tensor"] = {}
    for component, prefix, open_clip in layouts:
        if open_clip:
            out.update(open_clip_state_dict(getattr(pipe, component), prefix, component))
    components = ["unet", "vae"] + [component for component, _, open_clip in layouts if not open_clip]
    for component in components:
        for key, tensor in getattr(pipe, component).state_dict().items():
            ldm = mapping[f"{component}.{key}"]
            if ldm in out:  # two places onto one name would silently lose a tensor
                raise SingleFileUnsupported(f"{component}.{key} and another tensor both map to {ldm}")
            tensor = tensor.detach()
            module = ldm.rsplit(".", 2)[-2]
            if component == "vae" and ".mid.attn_" in ldm and module in _VAE_ATTENTION_CONVS \
                    and ldm.endswith(".weight") and tensor.ndim == 2:
                tensor = tensor.reshape(*tensor.shape, 1, 1)
            out[ldm] = tensor.contiguous()
    return out


def export_single_file(artifact: str | Path, out_path: str | Path, *, public_key=None, allow_unsigned: bool = False,
                       allow_failed_audit: bool = False) -> Path:
    """Write the edited model as one ``.safetensors`` file at ``out_path`` (which must not exist).

    The artifact is loaded under the loading rule (verified, signed, audit
    passed unless waived), the LoRA fused, and the result written in the
    original Stable Diffusion layout. The file's metadata names the artifact
    and its content id.
    """
    import os

    from safetensors.torch import save_file

    from policykit.artifact.export import load_baked_pipeline, partial_path

    out_path = Path(out_path)
    if out_path.exists():
        raise FileExistsError(f"{out_path} exists; choose a new file name")
    if out_path.suffix != ".safetensors":
        raise ValueError(f"{out_path}: a single-file export is a .safetensors file; name it *.safetensors")
    pipe, note = load_baked_pipeline(artifact, public_key=public_key, allow_unsigned=allow_unsigned,
                                     allow_failed_audit=allow_failed_audit)
    state = diffusers_to_ldm_state_dict(pipe)
    metadata = {"format": "pt", "policykit_export": json.dumps(note, sort_keys=True)}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # write next to the target and rename, so a failed export never leaves a half-written file. The file
    # gets the mode of any file the user creates (0666 less the umask: 0644), not the private 0600 of the
    # temporary file safetensors writes through: create it once to learn that mode, then set it
    staging = partial_path(out_path)
    os.close(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        mode = staging.stat().st_mode & 0o777
        save_file(state, str(staging), metadata=metadata)
        os.chmod(staging, mode)
        staging.replace(out_path)
    finally:
        staging.unlink(missing_ok=True)
    return out_path
