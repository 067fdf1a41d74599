"""The engine: read a compiled plan and run its edit stages in order. It only wires.

Each stage is a module that owns its math and one ``run`` taking typed inputs
(the plan, the pipeline, the stage's settings object from the plan, the
outputs of earlier stages) and returning a typed output:

=====================================  ==============================  =====================================
stage (plan name)                      module                          output
=====================================  ==============================  =====================================
``mine_neighbors``                     :mod:`.mining`                  :class:`~.encoding.ErasePairs`
``beyond_concept_regularization``      :mod:`.beyond`                  :class:`~.encoding.PreserveRows`
``closed_form_refinement``             :mod:`.closed_form`             :class:`~.closed_form.WeightDelta`
``noise_alignment``                    :mod:`.noise_alignment`         :class:`~.noise_alignment.LoraAdapter`
``mace_lora``                          :mod:`.mace_lora`               :class:`~.closed_form.WeightDelta`
``esd_finetune``                       :mod:`.esd`                     :class:`~.closed_form.WeightDelta`
=====================================  ==============================  =====================================

The rows the closed form solves on come from :mod:`.encoding` (policykit's
rules) or :mod:`.peer_rows` (UCE's, MACE's), as the stage's ``rows`` setting
says. The :class:`~policykit.realera.runner.StageRunner` caches every output
by content hash, so a crashed run resumes from the stages that finished.
``audit`` belongs to ``apply``. The result is an
:class:`~policykit.realera.edit.EditResult`, a delta over the base model;
:mod:`policykit.realera.edit` applies, saves and loads it. The pipeline
passed in is left as it came (weights restored, adapter removed).

Devices: CUDA with bfloat16 (float16 where bf16 is unsupported) when
present, the CPU in float32 otherwise. The closed form always solves in
float64; the LoRA trains in float32 under autocast.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from policykit.realera.edit import EditResult
from policykit.realera.prompts import DEFAULT_LEAK_PADDING
from policykit.realera.runner import StageOutput, StageRunner, StageSpec
from policykit.realera.settings import (BEYOND_CONCEPT_REGULARIZATION, CLOSED_FORM_REFINEMENT, ESD_FINETUNE,
                                        MACE_LORA, MINE_NEIGHBORS, NOISE_ALIGNMENT)

if TYPE_CHECKING:
    import torch

#: Stages this engine runs, in order (``audit`` belongs to apply).
ENGINE_STAGES = (MINE_NEIGHBORS, BEYOND_CONCEPT_REGULARIZATION, CLOSED_FORM_REFINEMENT, NOISE_ALIGNMENT,
                 MACE_LORA, ESD_FINETUNE)
#: Bump when a stage's output changes for the same inputs (it is part of every cache key).
#: 4: the uce, mace and esd presets are their papers' methods (rows, defaults, ESD's own training).
#: 5: the closed form preserves phrases of the model's own vocabulary (``vocabulary_prompts``).
ENGINE_VERSION = 5


@dataclass(frozen=True)
class EngineOptions:
    """Engine choices the policy language does not expose (all part of the cache keys)."""

    leak_padding: int | None = DEFAULT_LEAK_PADDING
    #: Preserve weight of the anchors, the empty prompt and each shell sample in the closed form.
    regularizer_weight: float = 1.0
    #: Total closed-form weight of one phrase's mined neighbors at one template, relative to the phrase
    #: itself: each neighbor weighs ``neighbor_mass * strength / samples``. The neighbors sample one
    #: concept's neighbourhood; weighting each like the concept would let 16 samples outvote the
    #: explicit preserves (measured on builtin:shapes: "red square" fell from 75% to 25%).
    neighbor_mass: float = 1.0
    #: The same for the shell samples: each weighs ``shell_mass * regularizer_weight / beyond_samples``.
    #: The shell's samples sum to about the concept itself, so in the (linear) closed form their weight
    #: is a preserve weight on the concept, against its erase weight 1 + ``neighbor_mass``. At 1.0 the
    #: edit went two thirds of the way to the anchor and left a circle mapped to a square in 69% of
    #: images; 0.5 took RealEra's mean H_o over benchmarks/quality.py's seven tasks from 75.6% to 81.5%
    #: (docs/benchmarks.md). Engine version 5 chose 0.25 on builtin:emblems' dev tasks, where with the
    #: vocabulary preserved the shell at 0.5 left erased names in 13% of images (docs/benchmarks.md, emblems).
    shell_mass: float = 0.25
    #: Training latents: images per concept prompt, sampling steps and guidance of the base model.
    latents_per_prompt: int = 2
    latent_steps: int = 25
    latent_guidance: float = 7.5
    encode_batch_size: int = 32


def pick_device(device: "str | torch.device | None" = None) -> tuple["torch.device", "torch.dtype"]:
    """``(device, dtype)``: CUDA with bf16 (fp16 without bf16 support) when present, else CPU float32."""
    import torch

    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda":
        return device, torch.float32
    return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@dataclass
class _Run:
    """What every stage of one run may read: the plan, the pipeline, the options, where to cache."""

    plan: Any
    pipeline: Any
    options: EngineOptions
    cache_dir: Path | None
    progress: bool
    model_key: str


def _mine(run: _Run, settings, outputs: dict) -> StageOutput:
    from policykit.realera import mining

    o = run.options
    return mining.run(run.plan, run.pipeline, settings, leak_padding=o.leak_padding, neighbor_mass=o.neighbor_mass,
                      batch_size=o.encode_batch_size).to_stage_output()


def _shell(run: _Run, settings, outputs: dict) -> StageOutput:
    from policykit.realera import beyond

    o = run.options
    return beyond.run(run.plan, run.pipeline, settings, leak_padding=o.leak_padding,
                      shell_weight=o.shell_mass * o.regularizer_weight, batch_size=o.encode_batch_size).to_stage_output()


def _phrases(run: _Run):
    """The plan's erased phrases and preserves under policykit's rules (closed form and noise alignment),
    with the closed form's vocabulary phrases (none when the plan has no closed form)."""
    from policykit.realera.encoding import encode_erased, encode_preserved

    o = run.options
    cfr = run.plan.stage(CLOSED_FORM_REFINEMENT)
    words, weight = (0, 0.0) if cfr is None else (cfr.settings.vocabulary_prompts, cfr.settings.vocabulary_weight)
    erase = encode_erased(run.plan, run.pipeline, o.leak_padding)
    scale = 1.0 if cfr is None else cfr.settings.erase_scale
    return erase, encode_preserved(run.plan, run.pipeline, o.leak_padding, o.regularizer_weight, words, weight,
                                   run.plan.seed, erase_mass=float(erase.alpha.sum()) * scale)


def _earlier(outputs: dict):
    """Stages 1 and 2's typed outputs (None where the plan does not run them)."""
    from policykit.realera.encoding import ErasePairs, PreserveRows

    mined, shell = outputs.get(MINE_NEIGHBORS), outputs.get(BEYOND_CONCEPT_REGULARIZATION)
    return (None if mined is None else ErasePairs.from_stage_output(mined),
            None if shell is None else PreserveRows.from_stage_output(shell))


def _closed_form(run: _Run, settings, outputs: dict) -> StageOutput:
    from policykit.realera import closed_form, peer_rows

    if settings.rows == "realera":
        erase, preserve = _phrases(run)
    else:
        erase, preserve = peer_rows.build(settings.rows, run.plan, run.pipeline, settings)
        if settings.vocabulary_prompts:  # not the peers' method: only where a policy asks for it
            preserve = peer_rows.with_vocabulary(preserve, run.plan, run.pipeline, settings,
                                                 erase_mass=float(erase.alpha.sum()) * settings.erase_scale)
    mined, shell = _earlier(outputs)
    return closed_form.run(run.plan, run.pipeline, settings, erase=erase, preserve=preserve, mined=mined,
                           shell=shell).to_stage_output()


def _noise_alignment(run: _Run, settings, outputs: dict) -> StageOutput:
    from policykit.hashing import content_id
    from policykit.realera import noise_alignment

    erase, preserve = _phrases(run)
    mined, shell = _earlier(outputs)
    delta = _closed_form_delta(outputs)
    # Latents of what the *base* model draws for the concepts (before any edit).
    o = run.options
    latents = noise_alignment.generate_training_latents(
        run.pipeline, [t.format(e.concept) for e in run.plan.erase for t in e.templates],
        per_prompt=o.latents_per_prompt, steps=o.latent_steps, guidance_scale=o.latent_guidance,
        resolution=settings.resolution, seed=settings.seed,
        cache_dir=None if run.cache_dir is None else run.cache_dir / "latents",
        fingerprint=None if run.cache_dir is None else content_id([ENGINE_VERSION, run.model_key]))
    return noise_alignment.run(run.plan, run.pipeline, settings, erase=erase, preserve=preserve, latents=latents,
                               mined=mined, shell=shell, delta=delta, progress=run.progress).to_stage_output()


def _closed_form_delta(outputs: dict) -> dict:
    from policykit.realera.closed_form import WeightDelta

    cfr = outputs.get(CLOSED_FORM_REFINEMENT)
    return {} if cfr is None else WeightDelta.from_stage_output(cfr).delta


def _mace_lora(run: _Run, settings, outputs: dict) -> StageOutput:
    from policykit.realera import mace_lora

    return mace_lora.run(run.plan, run.pipeline, settings, delta=_closed_form_delta(outputs),
                         progress=run.progress).to_stage_output()


def _esd(run: _Run, settings, outputs: dict) -> StageOutput:
    from policykit.realera import esd

    return esd.run(run.plan, run.pipeline, settings, progress=run.progress).to_stage_output()


#: Stages every process runs under several processes, each with its share of the work (policykit.distributed);
#: the others run once, on the main process, and their outputs are broadcast.
PARALLEL_STAGES = frozenset({NOISE_ALIGNMENT})

_STAGES: dict[str, Callable[[_Run, Any, dict], StageOutput]] = {
    MINE_NEIGHBORS: _mine, BEYOND_CONCEPT_REGULARIZATION: _shell, CLOSED_FORM_REFINEMENT: _closed_form,
    NOISE_ALIGNMENT: _noise_alignment, MACE_LORA: _mace_lora, ESD_FINETUNE: _esd,
}


def plan_stage_specs(plan, pipeline, *, options: EngineOptions | None = None, cache_dir: str | Path | None = None,
                     progress: bool = True, model_key: str = "") -> list[StageSpec]:
    """The plan's edit stages as StageSpecs, in plan order (``audit`` and unknown stages left out).

    ``model_key`` identifies the base model; it keys the cached training latents.
    """
    options = options or EngineOptions()
    run = _Run(plan, pipeline, options, None if cache_dir is None else Path(cache_dir), progress, model_key)
    engine = {"engine_version": ENGINE_VERSION, **asdict(options)}
    return [StageSpec(stage.name, {**stage.settings.to_json(), "engine": engine},
                      partial(_STAGES[stage.name], run, stage.settings), parallel=stage.name in PARALLEL_STAGES)
            for stage in plan.stages if stage.name in _STAGES]


def plan_inputs_key(plan, model_key: str) -> str:
    """The runner's seed key: the base model (``model_key``), toolkit version and what the stages encode
    (erase entries, preserves; not the audit, so an audit change reruns nothing)."""
    from policykit.hashing import content_id

    return content_id({"model": model_key, "toolkit": plan.inputs.toolkit_version, "engine": ENGINE_VERSION,
                       "erase": [e.model_dump(mode="json") for e in plan.erase],
                       "preserve": [p.model_dump(mode="json") for p in plan.preserve]})


def run_plan(plan, pipeline, *, cache_dir: str | Path | None = None, device=None, inputs_key: str | None = None,
             options: EngineOptions | None = None, log: Callable[[str], None] = print,
             progress: bool = True) -> EditResult:
    """Run the plan's edit stages on ``pipeline`` (the base model) and return the edit.

    ``inputs_key`` identifies the base model (``apply`` passes its sha256 pin);
    None hashes the text encoder and U-Net weights, correct but slow for a
    full-size model. With ``cache_dir`` every stage output is cached there and
    a rerun resumes from the stages already done. The pipeline is moved to
    ``device`` (default: CUDA in bf16/fp16 when present, else CPU float32) and
    otherwise left as it came.
    """
    from policykit.realera.closed_form import WeightDelta
    from policykit.realera.noise_alignment import LoraAdapter, model_fingerprint

    dev, dtype = pick_device(device)
    if pipeline.unet.device != dev or pipeline.unet.dtype != dtype:
        pipeline.to(dev, dtype)
    if inputs_key is None:
        second = getattr(pipeline, "text_encoder_2", None)  # SDXL
        inputs_key = model_fingerprint(pipeline.text_encoder, pipeline.unet, *([second] if second is not None else []))
    specs = plan_stage_specs(plan, pipeline, options=options, cache_dir=cache_dir, progress=progress,
                             model_key=inputs_key)
    log(f"realera: {plan.method} on {dev.type} ({str(dtype).replace('torch.', '')}), stages "
        f"{' -> '.join(s.name for s in specs) or '(none)'}")
    runner = StageRunner(cache_dir, inputs_key=plan_inputs_key(plan, inputs_key), log=lambda line: log(f"  {line}"))
    outputs, records = runner.run(specs)
    weights: dict = {}  # the deltas of every stage that edits weights, summed (MACE's fusion adds to its CFR)
    for name in (CLOSED_FORM_REFINEMENT, MACE_LORA, ESD_FINETUNE):
        if name in outputs:
            for key, value in WeightDelta.from_stage_output(outputs[name]).delta.items():
                weights[key] = weights[key] + value if key in weights else value
    na = outputs.get(NOISE_ALIGNMENT)
    adapter = None if na is None else LoraAdapter.from_stage_output(na)
    mined = outputs.get(MINE_NEIGHBORS)
    return EditResult(weights=weights, lora=None if adapter is None else adapter.state,
                      lora_config=None if adapter is None else adapter.info["lora_config"],
                      records=records, coverage=[] if mined is None else list(mined.info.get("coverage", [])),
                      method=plan.method, plan_hash=plan.plan_hash)
