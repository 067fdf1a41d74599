"""Which Stable Diffusion architecture a model directory holds, read from its configs (torch-free).

``plan`` reports an unsupported model as a diagnostic and ``apply`` refuses it
before any work, instead of failing in the middle of a run (an SDXL U-Net's
2048-wide cross-attention against one 768-wide text encoder, say).

Read: ``model_index.json`` (the pipeline class and its components), the
U-Net's ``config.json`` (``cross_attention_dim``, ``sample_size``,
``addition_embed_type``), the scheduler's (``prediction_type``), the text
encoders' (``hidden_size``) and the tokenizer's padding token.

Families
    ``sd1``: ``StableDiffusionPipeline`` with a CLIP tokenizer that pads with
    its end-of-text token (SD 1.x, and policykit's built-in worlds).
    ``sd2``: ``StableDiffusionPipeline`` whose tokenizer pads with another
    token (the OpenCLIP tokenizer of SD 2.x pads with ``!``, id 0), epsilon
    or v-prediction. ``sdxl``: ``StableDiffusionXLPipeline`` with two text
    encoders whose widths add up to the U-Net's cross-attention width and
    SDXL's added conditions (``text_time``).

Supported: ``sd1``, ``sd2`` (epsilon and v-prediction) and ``sdxl``
(:mod:`policykit.models.text` says how each is conditioned); any other
pipeline, or one of these whose configs do not fit together, is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPPORTED_FAMILIES = ("sd1", "sd2", "sdxl")
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class Architecture:
    """What a model directory holds, and why policykit cannot edit it (``problems``; empty when it can)."""

    family: str
    pipeline_class: str
    prediction_type: str | None = None
    cross_attention_dim: int | None = None
    text_encoder_widths: tuple[int, ...] = ()
    resolution: int | None = None
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def supported(self) -> bool:
        """True when policykit can edit this model."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON data for the plan output and the manifest."""
        return {"family": self.family, "pipeline_class": self.pipeline_class, "prediction_type": self.prediction_type,
                "cross_attention_dim": self.cross_attention_dim, "text_encoder_widths": list(self.text_encoder_widths),
                "resolution": self.resolution, "supported": self.supported, "problems": list(self.problems)}


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _pad_is_eos(tokenizer_dir: Path) -> bool | None:
    """Whether the tokenizer pads with its end-of-text token (None when its config does not say)."""
    config = _json(tokenizer_dir / "tokenizer_config.json")
    special = _json(tokenizer_dir / "special_tokens_map.json")

    def text(value: Any) -> str | None:
        return value.get("content") if isinstance(value, dict) else value

    pad = text(config.get("pad_token", special.get("pad_token")))
    eos = text(config.get("eos_token", special.get("eos_token")))
    return None if pad is None or eos is None else pad == eos


def detect_architecture(path: str | Path) -> Architecture:
    """Read the architecture of the diffusers pipeline directory at ``path``."""
    root = Path(path)
    index = _json(root / "model_index.json")
    pipeline_class = str(index.get("_class_name", "unknown"))
    unet = _json(root / "unet" / "config.json")
    scheduler = _json(root / "scheduler" / "scheduler_config.json")
    encoders = [name for name in ("text_encoder", "text_encoder_2") if name in index]
    widths = tuple(int(_json(root / name / "config.json").get("hidden_size", 0)) for name in encoders)
    dim = unet.get("cross_attention_dim")
    dim = dim[0] if isinstance(dim, list) and dim and len(set(dim)) == 1 else dim
    vae = _json(root / "vae" / "config.json")
    scale = 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1)
    resolution = int(unet["sample_size"]) * scale if isinstance(unet.get("sample_size"), int) else None
    prediction = scheduler.get("prediction_type", "epsilon")
    problems: list[str] = []

    if pipeline_class == "StableDiffusionXLPipeline":
        family = "sdxl"
        if len(widths) != 2:
            problems.append(f"an SDXL pipeline needs two text encoders, this one has {len(widths)}")
        elif not isinstance(dim, int) or sum(widths) != dim:
            problems.append(f"the text encoders are {' + '.join(map(str, widths))} wide but the U-Net's "
                            f"cross-attention reads {dim!r}")
        if unet.get("addition_embed_type") != "text_time":
            problems.append(f"the U-Net's added conditions are {unet.get('addition_embed_type')!r}, not SDXL's "
                            "'text_time' (pooled text embedding and time ids)")
    elif pipeline_class == "StableDiffusionPipeline":
        family = "sd2" if _pad_is_eos(root / "tokenizer") is False else "sd1"
        if not isinstance(dim, int):
            problems.append(f"the U-Net's cross_attention_dim is {dim!r}, not one width")
        elif widths and widths[0] != dim:
            problems.append(f"the text encoder is {widths[0]} wide but the U-Net's cross-attention reads {dim}")
        if unet.get("addition_embed_type"):
            problems.append(f"the U-Net takes added conditions ({unet['addition_embed_type']}), which "
                            "policykit does not pass")
    else:
        family = "unknown"
        problems.append(f"{pipeline_class} is not a pipeline policykit edits (StableDiffusionPipeline: SD 1.x and "
                        "2.x)")
    if prediction not in PREDICTION_TYPES:
        problems.append(f"the scheduler predicts {prediction!r}; policykit supports {', '.join(PREDICTION_TYPES)}")
    return Architecture(family, pipeline_class, prediction, dim if isinstance(dim, int) else None, widths,
                        resolution, tuple(problems))
