"""Benchmark: speed and scale of apply, the closed form and the LoRA on this machine's CPU.

Three parts; every measurement runs in a fresh subprocess, so its peak memory is its own:

``apply``
    Each stage's seconds of ``policykit apply policies/demo.yaml``: no stage
    cache, one torch thread, a fresh output directory, signed with a throwaway
    key (so signing is timed too).
``cfr``
    The closed-form refinement (docs/method.md, Stage 3) for 1, 10, 100 and
    1,000 concepts on Stable-Diffusion-1.5-shaped cross-attention projections
    with random weights (16 layers, ``to_k`` and ``to_v``: 32 projections,
    768 -> 320/640/1280), with as many erase and preserve rows per concept as
    the engine makes (:class:`RowModel`). policykit's way (three Gram matrices
    once, one Cholesky solve, ``W R`` for every layer) against a plain
    per-layer solve (each projection forms the same Grams and solves on its
    own), on the same inputs in the same run; both results are compared.
``lora``
    Noise-alignment (LoRA) step time and peak memory at the demo's settings:
    the engine's own training loop, timed between steps.
``processes``
    ``policykit apply policies/demo.yaml`` by 1 process and by 2 processes
    (``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2``,
    docs/scale-out.md), each with ``--threads`` threads: the seconds of the
    audit and of noise alignment from each manifest, and their ratio.

    python benchmarks/speed.py                           # all three; writes section `speed` of docs/benchmarks.md
    python benchmarks/speed.py --only cfr --concepts 1,10 --no-write

Peak memory is the process's peak resident set (RSS) during the measured
block, above what it held when the block began: the kernel's high-water mark
``VmHWM``, reset at the start of the block (``/proc/self/clear_refs``), or, where
a reset is refused, a thread sampling ``VmRSS`` every millisecond. Prints
tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    import torch

DEMO = ROOT / "policies" / "demo.yaml"
PARTS = ("apply", "cfr", "lora", "processes", "apply100")
#: Parts run when none is named (``apply100`` takes about a quarter of an hour: only when asked for).
DEFAULT_PARTS = ("apply", "cfr", "lora", "processes")
#: The 100-entity policy of ``apply100`` (benchmarks/emblem_tasks.py writes it).
POLICY_100 = ROOT / "policies" / "brand-emblems-100.yaml"
#: Steps of the LoRA run left out of its median (first-call allocations, autograd warm-up).
LORA_WARMUP = 5
RESULT_PREFIX = "SPEED-RESULT "


def log(message: str) -> None:
    """Progress goes to stderr; tables go to stdout."""
    print(f"speed: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- peak memory

def _status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakRSS:
    """Peak resident memory of this process during a ``with`` block.

    ``start_mib``: resident when the block began; ``peak_mib``: the highest
    resident size during the block; ``extra_mib``: their difference, what
    the block itself needed; ``method``: how the peak was read.
    """

    def __init__(self, interval_s: float = 0.001):
        self.interval_s = interval_s
        self.method = ""
        self.start_mib = self.peak_mib = 0.0
        self._sampled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def extra_mib(self) -> float:
        """Peak above the resident size at the start of the block."""
        return max(0.0, self.peak_mib - self.start_mib)

    def __enter__(self) -> "PeakRSS":
        try:
            # Linux >= 4.0: "5" resets this process's high-water mark to its current RSS.
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "VmHWM (reset at start)"
        except OSError:
            self.method = "VmRSS sampled every ms"
            self._thread = threading.Thread(target=self._sample, daemon=True)
        self.start_mib = (_status_kib("VmRSS") or 0) / 1024
        self._sampled = _status_kib("VmRSS") or 0
        if self._thread is not None:
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sampled = max(self._sampled, _status_kib("VmRSS") or 0)

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_mib = max(self._sampled, _status_kib("VmRSS") or 0) / 1024
        else:
            self.peak_mib = (_status_kib("VmHWM") or 0) / 1024


# ---------------------------------------------------------------- closed form at scale

#: SD 1.5's cross-attention layers (``attn2`` of every transformer block) and their widths.
SD15_CROSS_ATTENTION = (
    [(f"down_blocks.{b}.attentions.{a}", w) for b, w in ((0, 320), (1, 640), (2, 1280)) for a in (0, 1)]
    + [("mid_block.attentions.0", 1280)]
    + [(f"up_blocks.{b}.attentions.{a}", w) for b, w in ((1, 1280), (2, 640), (3, 320)) for a in (0, 1, 2)]
)
SD15_TEXT_WIDTH = 768


def sd15_projections(seed: int = 0, d: int = SD15_TEXT_WIDTH, layers=SD15_CROSS_ATTENTION,
                     dtype: "torch.dtype | None" = None) -> dict[str, "torch.nn.Linear"]:
    """``to_k`` and ``to_v`` of every SD 1.5 cross-attention layer, random weights, by U-Net module name."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    found = {}
    for block, width in layers:
        for target in ("to_k", "to_v"):
            linear = torch.nn.Linear(d, width, bias=False, device="meta").to_empty(device="cpu")
            with torch.no_grad():
                linear.weight.copy_(torch.randn(width, d, generator=generator) / d ** 0.5)
            found[f"{block}.transformer_blocks.0.attn2.{target}"] = linear.to(dtype or torch.float32)
    return found


@dataclass(frozen=True)
class RowModel:
    """How many closed-form rows one erased concept brings, as ``policykit.realera.engine`` builds them.

    A concept here is one erase entry with one phrase (no synonyms; each
    synonym or associated word would count as one more) of ``concept_tokens``
    tokens, at ``templates`` templates. At every template a prompt writes
    into the concept's tokens plus EOS and ``leak_padding`` padding positions
    (``prompts.DEFAULT_LEAK_PADDING``), and each such position is one row. Erase rows:
    the phrase itself (weight 1) and ``neighbors`` mined prompts per template
    (weight 1/``neighbors``). Preserve rows: ``shell`` beyond-concept samples
    per template (weight 1/``shell``), explicit preserves (one per
    ``concepts_per_preserve`` concepts) and anchors (one per
    ``concepts_per_anchor``), each at every template, and the empty prompt
    (weight 1). With the defaults, one concept gives 357 erase rows and 336
    shell rows, as ``gpu_check.py`` measured on the real engine.
    """

    templates: int = 3
    concept_tokens: int = 2
    leak_padding: int = 4
    neighbors: int = 16
    shell: int = 16
    concepts_per_preserve: int = 4
    concepts_per_anchor: int = 10
    preserve_tokens: int = 2

    @property
    def positions(self) -> int:
        """Rows one prompt gives: concept tokens, EOS, leak padding."""
        return self.concept_tokens + 1 + self.leak_padding

    def erase_rows(self, concepts: int) -> tuple[int, int]:
        """(phrase rows, mined-neighbor rows) for ``concepts`` concepts."""
        per_template = concepts * self.templates * self.positions
        return per_template, per_template * self.neighbors

    def preserve_rows(self, concepts: int) -> tuple[int, int]:
        """(explicit preserves + anchors + empty prompt rows, shell rows) for ``concepts`` concepts."""
        phrases = -(-concepts // self.concepts_per_preserve) + -(-concepts // self.concepts_per_anchor)
        fixed = phrases * self.templates * (self.preserve_tokens + 1 + self.leak_padding) + 1 + self.leak_padding
        return fixed, concepts * self.templates * self.positions * self.shell


def cfr_inputs(concepts: int, d: int = SD15_TEXT_WIDTH, seed: int = 1, model: RowModel = RowModel(),
               dtype: "torch.dtype | None" = None) -> dict[str, list]:
    """Random closed-form inputs sized by ``model``, held as the engine holds them (float32 rows).

    ``erase``: ``(rows, anchor rows, alpha)`` for the phrases and for the
    mined neighbors; ``preserve``: ``(rows, beta)`` for the fixed preserves
    and for the shell samples.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    dtype = dtype or torch.float32
    randn = lambda n: torch.randn(n, d, generator=generator, dtype=dtype)  # noqa: E731
    phrase, mined = model.erase_rows(concepts)
    fixed, shell = model.preserve_rows(concepts)
    return {
        "erase": [(randn(phrase), randn(phrase), torch.ones(phrase)),
                  (randn(mined), randn(mined), torch.full((mined,), 1.0 / model.neighbors))],
        "preserve": [(randn(fixed), torch.ones(fixed)), (randn(shell), torch.full((shell,), 1.0 / model.shell))],
    }


def input_counts(inputs: dict[str, list]) -> dict[str, float]:
    """Erase rows, preserve rows and the inputs' size in MiB."""
    tensors = [t for group in inputs.values() for entry in group for t in entry]
    return {"erase_rows": sum(e[0].shape[0] for e in inputs["erase"]),
            "preserve_rows": sum(p[0].shape[0] for p in inputs["preserve"]),
            "inputs_mib": sum(t.numel() * t.element_size() for t in tensors) / 2**20}


def shared_refine(projections: dict, inputs: dict[str, list], lam: float) -> tuple[dict, dict[str, float]]:
    """policykit's closed form: accumulate the Grams once, solve once, ``W R`` for every projection.

    Each row block goes to :class:`ClosedFormSystem` whole, as the engine hands it; the system
    converts it to float64 ``CHUNK_ROWS`` rows at a time. Returns the edited weights and the
    seconds of each phase (``grams``, ``solve``, ``apply``, ``total``).
    """
    from policykit.realera.closed_form import ClosedFormSystem, refine_weights

    d = next(iter(projections.values())).in_features
    t0 = time.perf_counter()
    system = ClosedFormSystem(d)
    for rows, targets, alpha in inputs["erase"]:
        system.add_erase(rows, targets, alpha)
    for rows, beta in inputs["preserve"]:
        system.add_preserve(rows, beta)
    t1 = time.perf_counter()
    right = system.right_factor(lam)
    t2 = time.perf_counter()
    weights = refine_weights(projections, right)
    t3 = time.perf_counter()
    return weights, {"grams": t1 - t0, "solve": t2 - t1, "apply": t3 - t2, "total": t3 - t0}


def per_layer_refine(projections: dict, inputs: dict[str, list], lam: float, budget_s: float | None = None,
                     min_layers: int = 4, progress: Callable[[str], None] = lambda line: None
                     ) -> tuple[dict, dict[str, float]]:
    """The plain way: every projection forms the Grams from the rows and solves its own system.

    ``W' = W (lam I + C + P) (lam I + E + P)^-1`` per layer, with a general
    (LU) solve and its own code, so it also checks :func:`shared_refine`.
    With ``budget_s``, stops once finishing all layers is predicted to take
    longer (after at least ``min_layers``). Returns the weights of the layers
    done and ``{"total", "layers", "per_layer"}``.
    """
    import torch

    d = next(iter(projections.values())).in_features
    eye = torch.eye(d, dtype=torch.float64)
    weights: dict = {}
    started = last_report = time.perf_counter()
    for i, (name, linear) in enumerate(projections.items(), start=1):
        cross = torch.zeros(d, d, dtype=torch.float64)
        erase = torch.zeros(d, d, dtype=torch.float64)
        preserve = torch.zeros(d, d, dtype=torch.float64)
        for rows, targets, alpha in inputs["erase"]:
            e = rows.to(torch.float64)
            weighted = e * alpha.to(torch.float64)[:, None]
            cross += targets.to(torch.float64).T @ weighted
            erase += e.T @ weighted
            del e, weighted
        for rows, beta in inputs["preserve"]:
            p = rows.to(torch.float64)
            preserve += p.T @ (p * beta.to(torch.float64)[:, None])
            del p
        w = linear.weight.detach().to(torch.float64)
        left = w @ (lam * eye + cross + preserve)
        right = lam * eye + erase + preserve
        # W' right = left  <=>  right^T W'^T = left^T
        weights[f"{name}.weight"] = torch.linalg.solve(right.T, left.T).T.to(linear.weight.dtype)
        elapsed = time.perf_counter() - started
        if time.perf_counter() - last_report > 10 or i == len(projections):
            progress(f"per-layer solve: {i}/{len(projections)} projections, {elapsed:.1f} s")
            last_report = time.perf_counter()
        if budget_s is not None and i >= min_layers and i < len(projections) \
                and elapsed / i * len(projections) > budget_s:
            break
    elapsed = time.perf_counter() - started
    return weights, {"total": elapsed, "layers": len(weights), "per_layer": elapsed / len(weights)}


def max_weight_difference(a: dict, b: dict) -> tuple[float, float, int]:
    """``(max |a - b|, max |a|, keys compared)`` over the keys both hold."""
    keys = sorted(set(a) & set(b))
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in keys)
    scale = max(float(a[k].double().abs().max()) for k in keys)
    return diff, scale, len(keys)


# ---------------------------------------------------------------- workers (each in its own process)

def worker_cfr(job: dict) -> dict:
    """One closed-form measurement (``job["mode"]``: ``shared`` or ``per-layer``); saves the weights."""
    import torch

    lam = job["lambda"]
    # Warm up both code paths on a tiny system: one-time library set-up is not what is being compared.
    tiny = sd15_projections(seed=0, d=8, layers=[("warmup", 4)])
    shared_refine(tiny, cfr_inputs(1, d=8), lam)
    per_layer_refine(tiny, cfr_inputs(1, d=8), lam)
    torch.ones(64, 64, dtype=torch.float64) @ torch.ones(64, 64, dtype=torch.float64)
    projections = sd15_projections(seed=0)
    inputs = cfr_inputs(job["concepts"], seed=1)
    counts = input_counts(inputs)
    log(f"cfr {job['concepts']} concepts, {job['mode']}: {counts['erase_rows']:,} erase / "
        f"{counts['preserve_rows']:,} preserve rows ({counts['inputs_mib']:.0f} MiB), {len(projections)} projections")
    with PeakRSS() as memory:
        if job["mode"] == "shared":
            weights, seconds = shared_refine(projections, inputs, lam)
        else:
            weights, seconds = per_layer_refine(projections, inputs, lam, budget_s=job.get("budget_s"),
                                                progress=log)
    torch.save(weights, job["out"])
    return {**seconds, **counts, "projections": len(projections), "peak_mib": memory.peak_mib,
            "extra_mib": memory.extra_mib, "memory_method": memory.method}


def demo_lambda() -> float:
    """The closed form's lambda in the demo's compiled plan."""
    from policykit.plan import compile_plan
    from policykit.policy.loader import load_policy

    plan = compile_plan(load_policy(DEMO))
    return float(plan.stage("closed_form_refinement").settings.lambda_)


def _preimport() -> float:
    """Import the modules apply uses (once per process, not part of any stage); returns the seconds."""
    started = time.perf_counter()
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers.models.clip.modeling_clip  # noqa: F401

    import policykit.audit.run  # noqa: F401
    import policykit.realera.engine  # noqa: F401
    return time.perf_counter() - started


def worker_apply(job: dict) -> dict:
    """Time every stage of ``apply`` of ``job["policy"]`` (default policies/demo.yaml) from the progress
    events and the stage records."""
    from policykit.apply import apply_policy
    from policykit.artifact.signing import generate_key_pair

    imports = _preimport()
    events: list[tuple[float, str, dict]] = []

    def emit(event: str, **fields) -> None:
        events.append((time.perf_counter(), event, fields))
        if event == "stage":
            log(f"apply: {fields.get('name')}")

    with tempfile.TemporaryDirectory() as tmp:
        key = generate_key_pair(Path(tmp) / "key").private_key
        started = time.perf_counter()
        with PeakRSS() as memory:
            outcome = apply_policy(Path(job.get("policy", DEMO)), output_dir=Path(tmp) / "artifacts", sign_key=key, cache_dir=None, emit=emit)
        total = time.perf_counter() - started
        manifest = outcome.manifest

    def at(kind: str, name: str | None = None, prefix: str | None = None) -> float:
        for t, event, fields in events:
            if event == kind and (name is None or fields.get("name") == name) \
                    and (prefix is None or str(fields.get("message", "")).startswith(prefix)):
                return t
        raise RuntimeError(f"apply emitted no {kind} event {name or prefix!r}: the stage names changed?")

    seconds = outcome.stage_seconds
    engine = [s["name"] for s in manifest["stages"] if s["name"] not in ("audit",) and s["name"] in seconds]
    audit_event = next(f for _, e, f in events if e == "stage" and f.get("name") == "audit")
    t_resolve, t_load = at("stage", "resolve_model"), at("stage", "load_model")
    t_sign, t_published = at("stage", "sign"), started + total  # published when apply_policy returns
    rows = [("load, validate and compile the policy", t_resolve - started, ""),
            ("resolve the model, hash it (pin), build the audit classifier", t_load - t_resolve, ""),
            ("load the model", seconds["load_model"], "")]
    for name in engine:
        rows.append((name, seconds[name], _stage_note(name, manifest)))
    edit_end = t_load + seconds["load_model"] + sum(seconds[n] for n in engine)
    # apply times its audit from before the audit's first event (its held-out neighbours are mined first),
    # so saving the edit and writing the manifest are what lies between the edit and signing, less the audit
    rows.append(("save the edit (canonical safetensors), write the manifest",
                 t_sign - edit_end - seconds["audit"], ""))
    rows.append(("audit", seconds["audit"], f"{audit_event.get('total')} images (base and edited), classify, "
                                            "reports"))
    rows.append(("sign and publish", t_published - t_sign, "throwaway key"))
    other = total - sum(r[1] for r in rows)
    if abs(other) >= 0.01:
        rows.append(("other", other, ""))
    return {"rows": rows, "total": total, "imports": imports, "audit_status": manifest.get("status"),
            "peak_mib": memory.peak_mib, "extra_mib": memory.extra_mib, "memory_method": memory.method}


def _stage_note(name: str, manifest: dict) -> str:
    settings = next(s["settings"] for s in manifest["stages"] if s["name"] == name)
    if name == "noise_alignment":
        return f"training latents + {settings['steps']} LoRA steps (batch {settings['batch_size']})"
    if name == "closed_form_refinement" and settings.get("vocabulary_prompts"):
        return f"one solve; {settings['vocabulary_prompts']} vocabulary phrases preserved"
    return ""


def worker_lora(job: dict) -> dict:
    """Run the demo's edit stages and time the noise-alignment loop step by step."""
    import torch

    from policykit.audit.run import sampling_for
    from policykit.models import load_pipeline, resolve_model
    from policykit.plan import compile_plan
    from policykit.policy.loader import load_policy
    from policykit.realera import noise_alignment
    from policykit.realera.engine import EngineOptions, run_plan

    plan = compile_plan(load_policy(DEMO))
    settings = plan.stage("noise_alignment").settings
    model = resolve_model(plan.inputs.base_model.id, base_dir=DEMO.parent)
    pipe = load_pipeline(model)
    sampling = sampling_for(plan.inputs.base_model.id)
    options = EngineOptions(latent_steps=sampling["steps"], latent_guidance=sampling["guidance"])

    trainer_class = noise_alignment.NoiseAlignmentTrainer
    original_sample, original_train = trainer_class.sample_batch, trainer_class.train
    stamps: list[float] = []
    memory = PeakRSS()
    facts: dict[str, Any] = {}

    def sample_batch(self, generator):
        if not stamps:  # the adapter is attached and the data built: the loop starts here
            memory.__enter__()
            log(f"lora: {self.config.steps} steps, batch {self.config.batch_size}, rank {self.config.rank}")
        stamps.append(time.perf_counter())
        return original_sample(self, generator)

    def train(self):
        report = original_train(self)
        stamps.append(time.perf_counter())
        memory.__exit__(None, None, None)
        facts.update(lora_parameters=sum(p.numel() for p in self.parameters),
                     latent_shape=list(self.data.latents.shape[1:]), erase=int(self.data.erase.shape[0]),
                     preserve=int(self.data.preserve.shape[0]) if self.data.preserve is not None else 0)
        return report

    trainer_class.sample_batch, trainer_class.train = sample_batch, train
    try:
        started = time.perf_counter()
        edit = run_plan(plan, pipe, inputs_key=model.sha256(), options=options, log=lambda line: None,
                        progress=False)
        total = time.perf_counter() - started
    finally:
        trainer_class.sample_batch, trainer_class.train = original_sample, original_train
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    timed = steps[LORA_WARMUP:] if len(steps) > 2 * LORA_WARMUP else steps
    na_seconds = next(r.seconds for r in edit.records if r.name == "noise_alignment")
    unet_params = sum(p.numel() for p in pipe.unet.parameters())
    return {"steps": len(steps), "median_ms": 1000 * statistics.median(timed),
            "p10_ms": 1000 * _quantile(timed, 0.1), "p90_ms": 1000 * _quantile(timed, 0.9),
            "first_ms": 1000 * steps[0], "loop_s": sum(steps), "stage_s": na_seconds, "engine_s": total,
            "rank": settings.rank, "batch_size": settings.batch_size, "unet_parameters": unet_params,
            "peak_mib": memory.peak_mib, "extra_mib": memory.extra_mib, "memory_method": memory.method,
            "threads": torch.get_num_threads(), **facts}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


WORKERS = {"cfr": worker_cfr, "apply": worker_apply, "lora": worker_lora}


def run_worker(job: dict, threads: int) -> dict:
    """Run one job in a fresh Python process with ``threads`` torch threads; returns its result."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker",
                           json.dumps({**job, "threads": threads})],
                          stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {job['kind']} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def worker_main(spec: str) -> int:
    """Entry point of a worker process: run the job, print its result as one JSON line."""
    import torch

    job = json.loads(spec)
    torch.set_num_threads(int(job["threads"]))
    if job["kind"] != "cfr":
        from policykit.cli import _drop_torchvision_notices

        _drop_torchvision_notices()  # as the CLI does for model commands
    result = WORKERS[job["kind"]](job)
    print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)
    return 0


# ---------------------------------------------------------------- the parts, as tables

def _s(seconds: float) -> str:
    return f"{seconds:.2f}" if seconds < 100 else f"{seconds:.0f}"


def _mib(mib: float) -> str:
    return f"{mib:,.0f}"


def part_apply(threads: int, policy: Path = DEMO) -> tuple[list[str], list[list[str]], list[str]]:
    """Stage table of apply on ``policy`` (the demo): (headers, rows, notes)."""
    log(f"apply {policy.relative_to(ROOT)} ({'about a minute or two' if policy == DEMO else 'a while'})")
    r = run_worker({"kind": "apply", "policy": str(policy)}, threads)
    rows = [[name, _s(sec), f"{100 * sec / r['total']:.0f}%", note] for name, sec, note in r["rows"]]
    rows.append(["**total** (apply_policy)", f"**{_s(r['total'])}**", "100%", f"audit {r['audit_status']}"])
    notes = [f"Imports (torch, diffusers, transformers, peft), once per process and not in the total: "
             f"{r['imports']:.1f} s. Peak RSS during apply: {_mib(r['peak_mib'])} MiB "
             f"({_mib(r['extra_mib'])} MiB above the process before it; {r['memory_method']})."]
    return ["stage", "seconds", "share", "what"], rows, notes


def _apply_manifest(work: Path, launch: list[str], threads: int) -> tuple[dict, float]:
    """Apply the demo in ``work`` (a fresh copy of policies/) under ``launch``; its manifest and wall seconds."""
    import shutil

    shutil.copytree(ROOT / "policies", work / "policies")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads), "ACCELERATE_USE_CPU": "1"}
    env.pop("WORLD_SIZE", None)
    start = time.perf_counter()
    done = subprocess.run([*launch, "-m", "policykit", "apply", "policies/demo.yaml", "--threads", str(threads)],
                          cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 3):
        raise SystemExit(f"apply failed under {' '.join(launch)}:\n{done.stderr[-3000:]}")
    return json.loads((work / "artifacts/demo/1.0.0/manifest.json").read_text()), seconds


def part_processes(threads: int) -> tuple[list[str], list[list[str]], list[str]]:
    """The demo's audit and noise alignment by 1 and 2 processes: (headers, rows, notes)."""
    log("apply policies/demo.yaml by 1 process, then by 2 (a few minutes)")
    launch2 = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    with tempfile.TemporaryDirectory() as tmp:
        one, wall1 = _apply_manifest(Path(tmp) / "one", [sys.executable], threads)
        two, wall2 = _apply_manifest(Path(tmp) / "two", launch2, threads)
    stage = lambda m, name: next(s["seconds"] for s in m["stages"] if s["name"] == name)  # noqa: E731
    rows = []
    for name, what in (("audit", "images of the base and the edited model, shared by whole batches"),
                       ("noise_alignment", "training latents shared by prompt; each step's batch split, "
                                           "gradients summed")):
        a, b = stage(one, name), stage(two, name)
        rows.append([name, _s(a), _s(b), f"{a / b:.2f}x", what])
    rows.append(["whole command (wall clock)", _s(wall1), _s(wall2), f"{wall1 / wall2:.2f}x",
                 "process start, imports, model load and the stages that run once included"])
    work = two["runtime"]["processes"]["work"]
    notes = [f"{threads} torch thread(s) per process. Ratio: 1-process seconds / 2-process seconds. What each of "
             f"the 2 processes drew: {', '.join(json.dumps(w, sort_keys=True) for w in work)}. The audit metrics "
             f"of the two runs are {'identical' if one['metrics'] == two['metrics'] else 'DIFFERENT'}."]
    return ["stage", "1 process s", "2 processes s", "ratio", "what is shared"], rows, notes


def part_cfr(threads: int, concepts: list[int], budget_s: float) -> tuple[list[str], list[list[str]], list[str]]:
    """Closed form shared vs per layer: (headers, rows, notes)."""
    import torch

    lam = demo_lambda()
    rows, notes, methods, largest = [], [], set(), 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for n in concepts:
            shared = run_worker({"kind": "cfr", "mode": "shared", "concepts": n, "lambda": lam,
                                 "out": f"{tmp}/shared-{n}.pt"}, threads)
            log(f"cfr {n} concepts: shared {shared['total']:.2f} s; now the per-layer solve")
            plain = run_worker({"kind": "cfr", "mode": "per-layer", "concepts": n, "lambda": lam,
                                "budget_s": budget_s, "out": f"{tmp}/plain-{n}.pt"}, threads)
            methods |= {shared["memory_method"], plain["memory_method"]}
            diff, scale, compared = max_weight_difference(torch.load(f"{tmp}/shared-{n}.pt"),
                                                          torch.load(f"{tmp}/plain-{n}.pt"))
            full = plain["layers"] == shared["projections"]
            plain_total = plain["total"] if full else plain["per_layer"] * shared["projections"]
            plain_cell = _s(plain_total) if full else \
                f"~{_s(plain_total)} ({plain['layers']}/{shared['projections']} layers: {_s(plain['total'])})"
            rows.append([f"{n:,}", f"{shared['erase_rows']:,} / {shared['preserve_rows']:,}",
                         _mib(shared["inputs_mib"]),
                         f"{_s(shared['total'])} ({_s(shared['grams'])} / {_s(shared['solve'])} / "
                         f"{_s(shared['apply'])})",
                         _mib(shared["extra_mib"]),
                         plain_cell, _mib(plain["extra_mib"]),
                         f"{'' if full else '~'}{plain_total / shared['total']:.0f}x",
                         f"{diff:.1e}" + ("" if compared == shared["projections"] else f" ({compared} proj.)")])
            largest = max(largest, scale)
            if not full:
                notes.append(f"At {n:,} concepts the per-layer solve was stopped after {plain['layers']} of "
                             f"{shared['projections']} projections ({_s(plain['total'])} s): finishing was predicted "
                             f"to take over the {budget_s:.0f} s budget. Its total is that time per projection x "
                             f"{shared['projections']} (marked ~); each projection forms the same Grams, so the cost "
                             f"per projection barely depends on its width.")
    notes.insert(0, f"{2 * len(SD15_CROSS_ATTENTION)} projections ({SD15_TEXT_WIDTH} -> 320/640/1280, float32, random), lambda {lam} (the demo's), "
                 f"rows per concept as {_row_model_words()}; peak memory = {' / '.join(sorted(methods))}, above the "
                 "process after its inputs were built. Max |dW'|: largest difference between the two results "
                 f"(the largest |W'| is {largest:.2f}). Ratio: per-layer time / shared time.")
    headers = ["concepts", "erase / preserve rows", "inputs MiB", "shared s (Grams / solve / apply)",
               "shared peak MiB", "per-layer s", "per-layer peak MiB", "ratio",
               "max abs dW'"]
    return headers, rows, notes


def _row_model_words() -> str:
    m = RowModel()
    phrase, mined = m.erase_rows(1)
    return (f"the engine makes them ({m.templates} templates x {m.positions} positions = {phrase} phrase rows + "
            f"{m.neighbors} mined neighbors per template = {mined} rows to erase; {m.shell} shell samples per template "
            f"= {m.preserve_rows(1)[1]} rows to preserve, plus one explicit preserve per {m.concepts_per_preserve} and "
            f"one anchor per {m.concepts_per_anchor} concepts, and the empty prompt)")


def part_lora(threads: int) -> tuple[list[str], list[list[str]], list[str]]:
    """LoRA step time at the demo's settings: (headers, rows, notes)."""
    log("lora: the demo's edit stages, timing the noise-alignment loop (about a minute)")
    r = run_worker({"kind": "lora"}, threads)
    rows = [["ms per step (median)", f"{r['median_ms']:.0f}",
             f"steps {LORA_WARMUP + 1}-{r['steps']}; 10-90%: {r['p10_ms']:.0f}-{r['p90_ms']:.0f} ms; "
             f"first step {r['first_ms']:.0f} ms"],
            ["training loop", _s(r["loop_s"]), f"{r['steps']} steps"],
            ["noise_alignment stage", _s(r["stage_s"]), "loop + training latents + setup"],
            ["peak RSS during training, MiB", _mib(r["peak_mib"]),
             f"{_mib(r['extra_mib'])} MiB above the process when the loop began"]]
    notes = [f"builtin:shapes U-Net ({r['unet_parameters'] / 1e6:.1f}M parameters), latents "
             f"{'x'.join(str(x) for x in r.get('latent_shape', []))}, LoRA rank {r['rank']} on the cross-attention "
             f"projections ({r.get('lora_parameters', 0):,} trainable parameters), batch {r['batch_size']} erase + "
             f"{r['batch_size']} preserve conditionings: each step runs the teacher and the student on "
             f"{2 * r['batch_size']} rows, then the backward pass and AdamW; {r['threads']} torch thread(s); "
             f"{r['memory_method']}."]
    return ["what", "value", "notes"], rows, notes


# ---------------------------------------------------------------- writing

TITLES = {"apply": "Stages of `apply policies/demo.yaml`",
          "cfr": "Closed-form refinement at scale: one shared solve vs one solve per layer",
          "lora": "Noise-alignment (LoRA) step at the demo's settings",
          "processes": "Several processes: `apply policies/demo.yaml` by 1 and by 2 CPU processes",
          "apply100": "Stages of `apply policies/brand-emblems-100.yaml`: 100 entities of builtin:emblems at once"}
#: Columns of words, aligned left.
TEXT_COLUMNS = {"what", "notes"}


def part_markdown(part: str, command: str, headers, rows, notes) -> str:
    """One part's block: its title, how it was measured, the table, the notes."""
    from report import markdown_table

    align = "l" + "".join("l" if h in TEXT_COLUMNS else "r" for h in headers[1:])
    return "\n\n".join([f"<!-- speed:{part} -->\n#### {TITLES[part]}", command,
                        markdown_table(headers, rows, align), *notes])


def merge_section(existing: str | None, blocks: dict[str, str]) -> str:
    """The ``speed`` section with ``blocks`` replacing those parts, the others kept from ``existing``."""
    kept: dict[str, str] = {}
    if existing:
        chunks = existing.split("<!-- speed:")
        for chunk in chunks[1:]:
            name = chunk.split(" -->", 1)[0]
            kept[name] = ("<!-- speed:" + chunk).strip()
    kept.update({k: v.strip() for k, v in blocks.items()})
    return "\n\n".join(kept[p] for p in PARTS if p in kept)


def current_section(doc: Path) -> str | None:
    """The text between the ``speed`` section's markers, or None."""
    if not doc.exists():
        return None
    text = doc.read_text(encoding="utf-8")
    begin, end = "<!-- bench:speed:begin -->", "<!-- bench:speed:end -->"
    if begin not in text or end not in text:
        return None
    return text.split(begin, 1)[1].split(end, 1)[0]


def main(argv: list[str] | None = None) -> int:
    """Run the chosen parts, print their tables, write section ``speed`` of docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=PARTS, action="append", help="run only this part (repeatable)")
    parser.add_argument("--concepts", default="1,10,100,1000", help="closed-form sizes (default: 1,10,100,1000)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (default: 1)")
    parser.add_argument("--per-layer-budget", type=float, default=300.0,
                        help="seconds the per-layer solve may take per size before it is extrapolated (default: 300)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)

    from report import DOC, header, text_table, write_section

    parts = args.only or list(DEFAULT_PARTS)
    concepts = [int(c) for c in args.concepts.split(",") if c.strip()]
    blocks = {}
    for part in parts:
        command = header(argv)  # per part: the load average moves while the parts run
        if part == "apply":
            table = part_apply(args.threads)
        elif part == "apply100":
            table = part_apply(args.threads, POLICY_100)
        elif part == "cfr":
            table = part_cfr(args.threads, concepts, args.per_layer_budget)
        elif part == "lora":
            table = part_lora(args.threads)
        else:
            table = part_processes(args.threads)
        print(f"\n{TITLES[part]}\n{command}\n")
        print(text_table(table[0], [[c.replace("**", "") for c in row] for row in table[1]]))
        for note in table[2]:
            print(f"\n{note}")
        blocks[part] = part_markdown(part, command, *table)
    if not args.no_write:
        path = write_section("speed", merge_section(current_section(DOC), blocks))
        print(f"\nwrote section `speed` of {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
