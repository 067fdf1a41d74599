"""An edit's I/O, in one place: put it on a pipeline, save it, load it back.

An edit is a delta over the base model (:class:`EditResult`): ``W' - W`` for
some U-Net parameters (the closed form's cross-attention projections, or
what ESD fine-tuned) plus, optionally, a LoRA adapter (noise alignment). On
disk, inside an artifact, it is ``weights/``:

``cross_attention_delta.safetensors``
    the deltas, by ``state_dict`` key (float32);
``lora/pytorch_lora_weights.safetensors``
    the adapter in the diffusers LoRA format, written and read by diffusers'
    own LoRA loaders of the base model's pipeline class (``StableDiffusionPipeline``
    or ``StableDiffusionXLPipeline``: ``pipe.load_lora_weights(weights/lora)`` works too);
``edit.json``
    method, plan hash, stage records, radius coverage.

:func:`apply_edit` adds the deltas and loads the adapter as the active
adapter ``realera``; :func:`fuse_adapter` then folds the adapter into the
weights (what ``policykit export`` and :func:`policykit.artifact.load.load_pipeline`
hand out). :func:`temporary_edit` adds deltas for a block and restores the
exact original weights after it (noise alignment trains on the refined U-Net).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policykit.artifact.layout import LORA_WEIGHT_NAME, edit_references
from policykit.realera.runner import StageRecord

if TYPE_CHECKING:
    import torch

#: Version of the saved edit directory.
EDIT_FORMAT_VERSION = 1
DELTA_FILE = "cross_attention_delta.safetensors"
LORA_DIR = "lora"
EDIT_FILE = "edit.json"
#: The adapter name a loaded edit's LoRA gets.
ADAPTER_NAME = "realera"


@dataclass
class EditResult:
    """What a run produced, as a delta over the base model.

    ``weights``: ``W' - W`` (float32, CPU) for each edited cross-attention
    projection, by ``state_dict`` key; ``lora``: the adapter's state dict in
    the diffusers format (keys without the ``unet.`` prefix) and
    ``lora_config`` its peft config, or None without noise alignment;
    ``records``: one per stage; ``coverage``: per erased concept, what its
    radius covers (:class:`~policykit.realera.conflicts.RadiusCoverage` as
    dicts; empty for presets that do not mine).
    """

    weights: dict[str, "torch.Tensor"]
    lora: dict[str, "torch.Tensor"] | None
    lora_config: dict[str, Any] | None
    records: list[StageRecord]
    coverage: list[dict[str, Any]] = field(default_factory=list)
    method: str = ""
    plan_hash: str = ""


def add_delta(unet, delta: dict[str, "torch.Tensor"]) -> None:
    """``W += delta`` for each ``state_dict`` key (computed in float32, stored in the layer's dtype)."""
    import torch

    updated = {}
    for key, value in delta.items():
        target = _parameter(unet, key)
        if tuple(target.shape) != tuple(value.shape):
            raise ValueError(f"{key}: the edit has shape {tuple(value.shape)}, the U-Net {tuple(target.shape)}")
        updated[key] = target.detach().float() + value.to(target.device, torch.float32)
    apply_weights(unet, updated)


def _parameter(module, key: str):
    """The parameter ``key`` of ``module`` (also found under a peft wrapper's ``base_layer``)."""
    params = dict(module.named_parameters())
    target = params.get(key, params.get(key.rsplit(".", 1)[0] + ".base_layer.weight"))
    if target is None:
        raise KeyError(f"{key} is not a parameter of the {type(module).__name__}: the edit was made for another model")
    return target


def apply_edit(pipeline, edit: "EditResult | str | Path"):
    """Put an edit (an :class:`EditResult`, or a directory written by :func:`save_edit`) on ``pipeline``.

    The cross-attention deltas are added to the U-Net's weights and the LoRA,
    if any, is loaded from its state dict (no file is read again) as the
    active adapter ``realera``. Returns the pipeline.
    """
    if not isinstance(edit, EditResult):
        edit = load_edit(edit)
    if edit.lora and ADAPTER_NAME in getattr(pipeline.unet, "peft_config", {}):
        raise ValueError(f"the pipeline already has a {ADAPTER_NAME!r} adapter: apply an edit to a base pipeline")
    add_delta(pipeline.unet, edit.weights)
    if edit.lora:
        # the same call diffusers makes for a saved LoRA, fed the tensors and config we hold: what was
        # verified is what is loaded (save_lora + load_adapter would write and re-read a file)
        pipeline.unet.load_lora_adapter(dict(edit.lora), prefix=None, adapter_name=ADAPTER_NAME,
                                        metadata=edit.lora_config or None)
    return pipeline


def save_lora(state: dict[str, "torch.Tensor"], config: dict[str, Any], directory: str | Path,
              pipeline_class: "type | str | None" = None) -> Path:
    """Write a LoRA state dict (diffusers keys, no ``unet.`` prefix) in the diffusers LoRA format.

    ``pipeline_class`` is the base model's pipeline class (a class, a class
    name or a pipeline; see :func:`policykit.models.loading.pipeline_class`):
    the file is written by that class's ``save_lora_weights``, so that class's
    stock ``pipe.load_lora_weights(directory)`` reads it. None means
    ``StableDiffusionPipeline`` (SD 1.x / 2.x). Returns the weights file.
    """
    from policykit.models.loading import pipeline_class as resolve_pipeline_class

    cls = resolve_pipeline_class(pipeline_class)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # unet only: the SD and SDXL writers differ in their text-encoder arguments, not in the U-Net's keys
    cls.save_lora_weights(str(directory), unet_lora_layers=state, weight_name=LORA_WEIGHT_NAME,
                          safe_serialization=True, unet_lora_adapter_metadata=config or None)
    return directory / LORA_WEIGHT_NAME


def save_edit(edit: EditResult, directory: str | Path, *, pipeline_class: "type | str | None" = None) -> Path:
    """Write ``directory/weights/``: the cross-attention deltas (safetensors), ``lora/`` (diffusers
    LoRA format of ``pipeline_class``, the base model's pipeline class: see :func:`save_lora`; None is
    ``StableDiffusionPipeline``) and ``edit.json`` (method, plan hash, stage records, radius coverage).
    Returns ``weights/``."""
    from safetensors.torch import save_file

    weights = Path(directory) / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    meta = {"format_version": str(EDIT_FORMAT_VERSION), "method": edit.method, "plan_hash": edit.plan_hash}
    save_file({k: v.detach().float().cpu().contiguous() for k, v in edit.weights.items()}, str(weights / DELTA_FILE),
              metadata=meta)
    if edit.lora:
        save_lora(edit.lora, edit.lora_config or {}, weights / LORA_DIR, pipeline_class=pipeline_class)
    doc = {"format_version": EDIT_FORMAT_VERSION, "method": edit.method, "plan_hash": edit.plan_hash,
           "delta_file": DELTA_FILE, "lora_dir": LORA_DIR if edit.lora else None, "lora_config": edit.lora_config,
           "stages": [asdict(r) for r in edit.records], "coverage": edit.coverage}
    (weights / EDIT_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return weights


def load_edit(directory: "str | Path | Mapping[str, bytes]") -> EditResult:
    """Read an edit written by :func:`save_edit`.

    ``directory`` is the artifact or its ``weights/`` folder, or the files of
    ``weights/`` already in memory as ``{path inside weights/: bytes}`` (what
    a verified artifact holds: :meth:`policykit.artifact.load.VerifiedArtifact.weights`),
    so the bytes deserialized are the bytes that were checked. Every file
    ``edit.json`` names must be a relative path inside ``weights/`` (and, in
    memory, one of the given files). Malformed content is a ValueError.
    """
    from collections.abc import Mapping

    from safetensors import SafetensorError
    from safetensors.torch import load as load_tensors

    if isinstance(directory, Mapping):
        files, where = directory, "weights"

        def read(rel: str) -> bytes:
            if rel not in files:
                raise ValueError(f"{where}/{EDIT_FILE} names {rel}, which is not a file of the artifact")
            return files[rel]
    else:
        from policykit.artifact.snapshot import read_regular_file

        weights = Path(directory)
        if not (weights / EDIT_FILE).is_file() and (weights / "weights" / EDIT_FILE).is_file():
            weights = weights / "weights"
        where = str(weights)

        def read(rel: str) -> bytes:
            return read_regular_file(weights / rel, label=f"{where}/{rel}")

    try:
        doc = json.loads(read(EDIT_FILE).decode("utf-8"))
    except RecursionError:
        raise ValueError(f"{where}/{EDIT_FILE}: nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}/{EDIT_FILE}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{where}/{EDIT_FILE}: not a JSON object")
    if doc.get("format_version") != EDIT_FORMAT_VERSION:
        raise ValueError(f"{where}/{EDIT_FILE}: unsupported edit format_version {doc.get('format_version')!r} "
                         f"(this toolkit reads {EDIT_FORMAT_VERSION})")
    for key, types in (("lora_config", (dict, type(None))), ("stages", (list,)), ("coverage", (list,)),
                       ("method", (str,)), ("plan_hash", (str,))):
        if key in doc and not isinstance(doc[key], types):
            raise ValueError(f"{where}/{EDIT_FILE}: {key!r} has the wrong type ({type(doc[key]).__name__})")
    refs = edit_references(doc)  # relative and inside weights/, signed or not

    def tensors(rel: str) -> dict:
        try:
            return load_tensors(read(rel))
        except SafetensorError as exc:
            raise ValueError(f"{where}/{rel}: not a safetensors file: {exc}") from None

    lora = None
    if refs["lora"] is not None:
        raw = tensors(refs["lora"])
        lora = {k[len("unet."):] if k.startswith("unet.") else k: v for k, v in raw.items()}
    try:
        records = [StageRecord(**r) for r in doc.get("stages", [])]
    except TypeError as exc:
        raise ValueError(f"{where}/{EDIT_FILE}: malformed stage record: {exc}") from None
    return EditResult(weights=tensors(refs["delta"]), lora=lora, lora_config=doc.get("lora_config"),
                      records=records, coverage=doc.get("coverage", []), method=doc.get("method", ""),
                      plan_hash=doc.get("plan_hash", ""))


@contextmanager
def temporary_edit(unet, delta: dict):
    """Add ``delta`` to the U-Net's weights for the block, restoring the exact originals after."""
    originals = {k: _parameter(unet, k).detach().clone() for k in delta}
    add_delta(unet, delta)
    try:
        yield
    finally:
        apply_weights(unet, originals)


def lora_state(unet, adapter_name: str = ADAPTER_NAME) -> tuple[dict, dict]:
    """A trained adapter as ``(state dict in the diffusers format, peft config as JSON data)``."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=adapter_name))
    config = unet.peft_config[adapter_name].to_dict()
    config = json.loads(json.dumps(config, default=lambda v: sorted(v) if isinstance(v, (set, frozenset)) else str(v)))
    return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}, config


def fuse_adapter(pipe) -> None:
    """Fuse the U-Net's LoRA into its weights and remove the peft layers.

    Afterwards the U-Net is a plain diffusers model: ``save_pretrained`` writes
    the usual keys (no ``base_layer`` / ``lora_A``), and ``from_pretrained``
    reads back the same model.
    """
    if getattr(pipe.unet, "peft_config", None):
        pipe.unet.fuse_lora()
        pipe.unet.unload_lora()


def apply_weights(module, weights: Mapping[str, "torch.Tensor"]) -> None:
    """Copy ``weights`` (``state_dict`` keys) into ``module`` in place.

    Works on a peft-wrapped U-Net too: ``a.to_k.weight`` also finds
    ``a.to_k.base_layer.weight``. Raises ``KeyError`` for a name the module lacks.
    """
    import torch

    with torch.no_grad():
        for key, value in weights.items():
            target = _parameter(module, key)
            target.copy_(value.to(device=target.device, dtype=target.dtype))
