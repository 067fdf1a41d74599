"""Stage 4: noise alignment (NA) with a LoRA adapter, docs/method.md.

A peft LoRA adapter on the cross-attention projections of the (refined)
U-Net is trained against the same U-Net with the adapter disabled (the
teacher, so no second copy of the model is held)::

    L = alpha      * || eps'(z_t, t, e~) - target ||^2          e~: concept prompts and mined neighbors
      + gamma      * || eps'(z_t, t, p)  - eps(z_t, t, p) ||^2   p: preserves, shell samples, ""
      + gamma_attn * sum_l mean (A'_l(z_t, p) - A_l(z_t, p))^2    cross-attention maps of the preserves

``target`` is ``eps(z_t, t, e*)`` (the anchor's prediction; ``target="anchor"``)
or, for the ESD preset, ``eps(z_t, t, "") - g (eps(z_t, t, e~) - eps(z_t, t, ""))``
(``target="negative_guidance"``, ``g`` = ``guidance``; the names are those of
the compiled plan's ``noise_alignment`` stage). Squared norms are means over elements, so the weights do
not depend on the latent size; the attention term sums that mean over layers.
The loss compares U-Net outputs, so it holds for epsilon and v prediction alike.

Choices made here
    * Timesteps: ``uniform`` over the training schedule, or ``importance``:
      a Gaussian weight over ``t / T`` centred on 0.5 with spread
      :data:`IMPORTANCE_SPREAD`, so the middle of the schedule, where the
      concept's layout is decided, is sampled most (MACE's observation; the
      exact weighting is ours).
    * Latents: noised with the scheduler's ``add_noise``; clean latents are
      images the *base* model generates for the concept prompts
      (:func:`generate_training_latents`, cached by a content hash).
    * The LoRA starts at zero (peft's default ``init_lora_weights=True``), so
      step 0 of the student is the teacher and the preserve terms start at 0.
    * On CUDA with a half-precision U-Net the adapter weights are kept in
      float32 and the forward passes run under autocast.
    * A non-finite loss stops training with :class:`NonFiniteLossError`
      before the optimizer step, so the adapter is never poisoned.

The adapter is saved in the diffusers LoRA format
(``pytorch_lora_weights.safetensors``, peft config as metadata), loadable with
``pipe.load_lora_weights(dir)`` (:mod:`policykit.realera.edit`).
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch

from policykit.realera.edit import ADAPTER_NAME
from policykit.realera.runner import TypedOutput
from policykit.realera.settings import TIMESTEP_SAMPLING, NoiseAlignmentSettings

#: Spread (as a share of the schedule) of the importance weighting around its middle.
IMPORTANCE_SPREAD = 0.25


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss (the message says at which step and which term)."""


@dataclass
class NoiseAlignmentData:
    """What the loss is computed on; every conditioning is ``(n, S, d)``.

    ``erase``: concept prompts and mined neighbors (``e~``); ``erase_targets``:
    the anchor conditioning of each (``e*``, used by ``target="anchor"``);
    ``erase_weights``: per-sample strength (default 1); ``preserve``:
    preserves, shell samples, the empty prompt; ``latents``: clean latents
    ``(m, C, h, w)``; ``null``: the empty prompt's conditioning ``(S, d)``
    (needed by ``target="negative_guidance"``).
    """

    erase: "torch.Tensor"
    latents: "torch.Tensor"
    erase_targets: "torch.Tensor | None" = None
    erase_weights: "torch.Tensor | None" = None
    preserve: "torch.Tensor | None" = None
    null: "torch.Tensor | None" = None

    def check(self, target: str) -> None:
        """Raise ``ValueError`` when the data cannot serve ``target``."""
        if self.erase.ndim != 3 or self.erase.shape[0] == 0:
            raise ValueError(f"erase conditionings must be (n>0, S, d), got {tuple(self.erase.shape)}")
        if target == "anchor" and (self.erase_targets is None or self.erase_targets.shape != self.erase.shape):
            raise ValueError("target='anchor' needs erase_targets of the same shape as erase")
        if target == "negative_guidance" and self.null is None:
            raise ValueError("target='negative_guidance' needs the empty prompt's conditioning (null)")
        if self.latents.ndim != 4 or self.latents.shape[0] == 0:
            raise ValueError(f"latents must be (m>0, C, h, w), got {tuple(self.latents.shape)}")


@dataclass
class Batch:
    """One step's inputs: noised latents, timesteps and the conditionings they are paired with."""

    noisy: "torch.Tensor"
    timesteps: "torch.Tensor"
    erase: "torch.Tensor"
    erase_targets: "torch.Tensor | None"
    erase_weights: "torch.Tensor"
    preserve: "torch.Tensor | None"

    def part(self, rows: slice) -> "Batch":
        """Rows ``rows`` of every tensor (this process's share of a global batch)."""
        cut = lambda x: None if x is None else x[rows]  # noqa: E731
        return Batch(noisy=self.noisy[rows], timesteps=self.timesteps[rows], erase=self.erase[rows],
                     erase_targets=cut(self.erase_targets), erase_weights=self.erase_weights[rows],
                     preserve=cut(self.preserve))


@dataclass
class LossTerms:
    """The loss and its parts (floats are detached copies for reporting; ``total`` too once the processes'
    shares are summed)."""

    total: "torch.Tensor | float"
    erase: float
    preserve: float
    attention: float


@dataclass
class TrainingReport:
    """Per-step losses of a finished run."""

    losses: list[float] = field(default_factory=list)
    erase: list[float] = field(default_factory=list)
    preserve: list[float] = field(default_factory=list)
    attention: list[float] = field(default_factory=list)


# ---------------------------------------------------------------- attention maps

class AttentionMapProcessor:
    """Cross-attention processor that computes attention explicitly and can record its maps.

    The math is that of diffusers' ``AttnProcessor``; when ``recorder.active``
    it stores ``softmax(QK^T)`` of the batch rows in ``recorder.rows`` as
    ``(rows, heads, queries, tokens)``, differentiably.
    """

    def __init__(self, recorder: "AttentionRecorder", name: str):
        self.recorder, self.name = recorder, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        import torch

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, seq = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape[:2]
        attention_mask = attn.prepare_attention_mask(attention_mask, seq, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(attn.head_to_batch_dim(query), key, attention_mask)
        if self.recorder.active:
            maps = probs.reshape(batch, attn.heads, *probs.shape[1:])
            self.recorder.maps.setdefault(self.name, maps[self.recorder.rows])
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class AttentionRecorder:
    """Installs :class:`AttentionMapProcessor` on every cross-attention layer of a U-Net while in use."""

    def __init__(self, unet, layer_names: Sequence[str]):
        self.unet = unet
        self.layer_names = list(layer_names)  # attention module names, e.g. "...attn2"
        self.maps: dict[str, "torch.Tensor"] = {}
        self.active = False
        self.rows: slice = slice(None)

    @contextmanager
    def installed(self):
        """Swap the processors in, and restore the previous ones on exit."""
        previous = dict(self.unet.attn_processors)
        wanted = {f"{n}.processor" for n in self.layer_names}
        processors = {k: (AttentionMapProcessor(self, k) if k in wanted else v) for k, v in previous.items()}
        self.unet.set_attn_processor(processors)
        try:
            yield self
        finally:
            self.unet.set_attn_processor(previous)

    @contextmanager
    def recording(self, rows: slice):
        """Record the maps of batch ``rows`` for the passes inside the block (fresh each time)."""
        self.maps, self.active, self.rows = {}, True, rows
        try:
            yield self.maps
        finally:
            self.active = False


# ---------------------------------------------------------------- timesteps and latents

def timestep_weights(num_train_timesteps: int, sampling: str) -> "torch.Tensor":
    """Sampling weights over ``0..T-1`` (sum 1) for ``uniform`` or ``importance``."""
    import torch

    if sampling not in TIMESTEP_SAMPLING:
        raise ValueError(f"timesteps must be one of {TIMESTEP_SAMPLING}, got {sampling!r}")
    if sampling == "uniform":
        return torch.full((num_train_timesteps,), 1.0 / num_train_timesteps, dtype=torch.float64)
    x = (torch.arange(num_train_timesteps, dtype=torch.float64) + 0.5) / num_train_timesteps
    w = torch.exp(-0.5 * ((x - 0.5) / IMPORTANCE_SPREAD) ** 2)
    return w / w.sum()


def latent_cache_key(prompts: Sequence[str], settings: dict, model_fingerprint: str) -> str:
    """sha256 over what determines the latents: model, prompts and generation settings."""
    from policykit.hashing import content_id

    return content_id({"model": model_fingerprint, "prompts": list(prompts), "settings": settings})


def model_fingerprint(*modules) -> str:
    """sha256 over the parameters and buffers of ``modules`` (names, shapes, dtypes, bytes)."""
    from policykit.hashing import tensors_sha256

    return tensors_sha256((f"{i}.{name}", t) for i, m in enumerate(modules) for name, t in m.state_dict().items())


def generate_training_latents(pipe, prompts: Sequence[str], *, per_prompt: int = 1, steps: int = 25,
                              guidance_scale: float = 7.5, resolution: int | None = None, seed: int = 0,
                              cache_dir: str | Path | None = None, fingerprint: str | None = None) -> "torch.Tensor":
    """Clean latents ``(len(prompts) * per_prompt, C, h, w)`` the pipeline generates for ``prompts``.

    Pass the *base* pipeline (before any edit). Each prompt's images are seeded
    from ``seed`` and the prompt's index, so results do not depend on batching.
    With ``cache_dir`` the latents are stored as ``<sha256>.safetensors`` keyed
    by :func:`latent_cache_key` (``fingerprint`` defaults to a hash of the
    U-Net and text encoder weights) and read back on the next call.
    """
    import torch
    from safetensors.torch import load_file, save_file

    from policykit.distributed import current

    size = resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    settings = {"per_prompt": per_prompt, "steps": steps, "guidance_scale": guidance_scale, "resolution": size,
                "seed": seed, "scheduler": type(pipe.scheduler).__name__}
    path = None
    if cache_dir is not None:
        encoders = [m for m in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if m is not None]
        key = latent_cache_key(prompts, settings, fingerprint or model_fingerprint(pipe.unet, *encoders))
        path = Path(cache_dir) / f"{key}.safetensors"
        # the main process reads the cache (the others may not see its disk) and shares what it found
        cached = current().broadcast(load_file(path)["latents"] if current().main and path.exists() else None)
        if cached is not None:
            return cached
    def draw(job: tuple[int, str]) -> "torch.Tensor":
        i, prompt = job
        generator = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + i)
        result = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance_scale, height=size, width=size,
                      num_images_per_prompt=per_prompt, generator=generator, output_type="latent")
        return result.images.detach().float().cpu()

    # one prompt per job, shared out over the processes (each prompt has its own seed)
    latents = torch.cat(current().map_batches(list(enumerate(prompts)), draw, "latents"))
    if path is not None and current().main:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"latents": latents.contiguous()}, str(tmp))
        tmp.replace(path)  # atomic: a crashed run never leaves a half-written cache entry
    return latents


# ---------------------------------------------------------------- adapter I/O

def cross_attention_lora_targets(unet, with_query_and_out: bool = False) -> list[str]:
    """Full module names of the cross-attention projections a LoRA adapts (to_k, to_v [, to_q, to_out.0])."""
    from policykit.realera.closed_form import find_cross_attention_projections

    names = sorted(find_cross_attention_projections(unet))
    if with_query_and_out:
        layers = sorted({n.rsplit(".", 1)[0] for n in names})
        names += [f"{layer}.{p}" for layer in layers for p in ("to_q", "to_out.0")]
    return names


# ---------------------------------------------------------------- the trainer

class NoiseAlignmentTrainer:
    """Trains the noise-alignment LoRA on ``unet`` in place; the loop in :meth:`train` reads top to bottom."""

    def __init__(self, unet, scheduler, data: NoiseAlignmentData, config: NoiseAlignmentSettings, *,
                 progress: bool = True, adapter_name: str = ADAPTER_NAME, text=None, processes=None):
        """``text`` (a :class:`~policykit.models.text.TextModel`) unpacks conditionings for the U-Net
        (SDXL's pooled embedding and time ids); without it they are the hidden states as they are.
        ``processes`` (:mod:`policykit.distributed`; default the job's) share every batch out."""
        from policykit.distributed import current

        self.processes = processes or current()
        data.check(config.target)
        self.unet, self.scheduler, self.data, self.config, self.text = unet, scheduler, data, config, text
        self.progress, self.adapter_name = progress, adapter_name
        self.device = next(unet.parameters()).device
        self.dtype = next(unet.parameters()).dtype
        self.layers = sorted({n.rsplit(".", 1)[0] for n in cross_attention_lora_targets(unet)})
        self.recorder = AttentionRecorder(unet, self.layers)
        self.timestep_weights = timestep_weights(scheduler.config.num_train_timesteps, config.timesteps)
        self._attach_adapter()

    # -- setup

    def _attach_adapter(self) -> None:
        import torch
        from peft import LoraConfig

        c = self.config
        lora = LoraConfig(r=c.rank, lora_alpha=c.lora_alpha or c.rank, init_lora_weights=True,
                          target_modules=cross_attention_lora_targets(self.unet, c.train_query_and_out))
        self.unet.requires_grad_(False)
        with torch.random.fork_rng():  # peft draws lora_A from the global generator: seed it, locally
            torch.manual_seed(c.seed)
            self.unet.add_adapter(lora, adapter_name=self.adapter_name)
        self.parameters = [p for n, p in self.unet.named_parameters() if "lora_" in n]
        for p in self.parameters:
            p.data = p.data.float()  # keep the adapter in float32 under a half-precision U-Net
            p.requires_grad_(True)

    @contextmanager
    def teacher(self):
        """The frozen model: the same U-Net with the adapter disabled."""
        self.unet.disable_adapters()
        try:
            yield
        finally:
            self.unet.enable_adapters()

    def _autocast(self):
        import torch

        if self.device.type == "cuda" and self.dtype in (torch.float16, torch.bfloat16):
            return torch.autocast("cuda", dtype=self.dtype)
        return nullcontext()

    # -- one step's inputs and loss

    def sample_batch(self, generator: "torch.Generator") -> Batch:
        """Draw erase/preserve conditionings, latents, noise and timesteps (CPU generator, then moved)."""
        import torch

        d, n = self.data, self.config.batch_size
        pick = lambda size: torch.randint(size, (n,), generator=generator)  # noqa: E731
        e_idx, z_idx = pick(d.erase.shape[0]), pick(d.latents.shape[0])
        latents = d.latents[z_idx].float()
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.multinomial(self.timestep_weights, n, replacement=True, generator=generator)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        weights = torch.ones(n) if d.erase_weights is None else d.erase_weights[e_idx].float()
        preserve = None
        if d.preserve is not None and d.preserve.shape[0] and self.config.preserve_weight + self.config.attention_weight > 0:
            preserve = d.preserve[pick(d.preserve.shape[0])]
        move = lambda x: None if x is None else x.to(self.device)  # noqa: E731
        return Batch(noisy=move(noisy), timesteps=move(timesteps), erase=move(d.erase[e_idx]),
                     erase_targets=move(None if d.erase_targets is None else d.erase_targets[e_idx]),
                     erase_weights=move(weights), preserve=move(preserve))

    def _predict(self, noisy, timesteps, conditioning):
        with self._autocast():
            conditioning = conditioning.to(self.dtype)
            inputs = (self.text.unet_inputs(conditioning) if self.text is not None
                      else {"encoder_hidden_states": conditioning})
            return self.unet(noisy.to(self.dtype), timesteps, **inputs).sample.float()

    def compute_loss(self, batch: Batch) -> LossTerms:
        """The NA loss of one batch (student with gradients, teacher without)."""
        import torch

        c, n = self.config, batch.noisy.shape[0]
        has_preserve = batch.preserve is not None
        keep = slice(n, 2 * n) if has_preserve else slice(0, 0)
        cond = batch.erase if not has_preserve else torch.cat([batch.erase, batch.preserve])
        noisy = batch.noisy.repeat(2 if has_preserve else 1, 1, 1, 1)
        steps = batch.timesteps.repeat(2 if has_preserve else 1)

        with self.recorder.installed():
            # teacher: targets for the erase rows, reference predictions and maps for the preserve rows
            with torch.no_grad(), self.teacher(), self.recorder.recording(keep) as teacher_maps:
                if c.target == "anchor":
                    teacher_cond = batch.erase_targets if not has_preserve else torch.cat([batch.erase_targets,
                                                                                           batch.preserve])
                    teacher_out = self._predict(noisy, steps, teacher_cond)
                    target = teacher_out[:n]
                else:
                    null = self.data.null.to(self.device).expand_as(batch.erase)
                    teacher_out = self._predict(noisy, steps, cond)
                    uncond = self._predict(batch.noisy, batch.timesteps, null)
                    target = uncond - c.guidance * (teacher_out[:n] - uncond)
                teacher_maps = dict(teacher_maps)
            # student: the adapted U-Net on the erase and preserve rows
            with self.recorder.recording(keep) as student_maps:
                student_out = self._predict(noisy, steps, cond)
                student_maps = dict(student_maps)

        per_sample = ((student_out[:n] - target) ** 2).flatten(1).mean(1)
        erase = (per_sample * batch.erase_weights).mean()
        preserve = attention = torch.zeros((), device=self.device)
        if has_preserve:
            preserve = ((student_out[n:] - teacher_out[n:]) ** 2).mean()
            attention = sum(((student_maps[k].float() - teacher_maps[k].float()) ** 2).mean()
                            for k in teacher_maps) if teacher_maps else attention
        total = c.erase_weight * erase + c.preserve_weight * preserve + c.attention_weight * attention
        return LossTerms(total=total, erase=float(erase.detach()), preserve=float(preserve.detach()),
                         attention=float(attention.detach()))

    # -- the loop

    def train(self) -> TrainingReport:
        """Run ``config.steps`` optimizer steps; raises :class:`NonFiniteLossError` on a NaN/inf loss."""
        import torch
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        c = self.config
        generator = torch.Generator().manual_seed(c.seed)
        optimizer = torch.optim.AdamW(self.parameters, lr=c.learning_rate, weight_decay=0.0)
        report = TrainingReport()
        self.unet.train()
        columns = (TextColumn("noise alignment"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn())
        with Progress(*columns, transient=True, disable=not self.progress) as progress:
            task = progress.add_task("train", total=c.steps, loss="-")
            for step in range(1, c.steps + 1):
                # every process draws the same global batch; each computes its share of the mean loss
                batch = self.sample_batch(generator)
                optimizer.zero_grad(set_to_none=True)
                terms = self._share_of_loss(batch)
                total = terms.total if isinstance(terms.total, float) else float(terms.total.detach())
                if not math.isfinite(total):
                    raise NonFiniteLossError(
                        f"noise alignment loss is {total} at step {step} (erase={terms.erase}, "
                        f"preserve={terms.preserve}, attention={terms.attention}); check the conditionings and "
                        f"latents for NaN/inf, or lower the learning rate (now {c.learning_rate})")
                optimizer.step()
                report.losses.append(total)
                report.erase.append(terms.erase)
                report.preserve.append(terms.preserve)
                report.attention.append(terms.attention)
                progress.update(task, advance=1, loss=f"{total:.4g}")
        self.unet.eval()
        return report

    def _share_of_loss(self, batch: Batch) -> LossTerms:
        """Backpropagate this process's share of the batch's loss and sum the gradients over the processes.

        One process: the loss of the whole batch. Several: rows ``processes.slice(n)`` weighted by their
        share of ``n`` (every term is a mean over the batch's rows), so the summed gradient is the
        one-process gradient; the terms returned are the whole batch's, on every process.
        """
        procs = self.processes
        if not procs.distributed:
            terms = self.compute_loss(batch)
            terms.total.backward()
            return terms
        n = batch.noisy.shape[0]
        rows = procs.slice(n)
        share = (rows.stop - rows.start) / n
        values = (0.0, 0.0, 0.0, 0.0)
        if share > 0:
            terms = self.compute_loss(batch.part(rows))
            (terms.total * share).backward()
            values = (float(terms.total.detach()) * share, terms.erase * share, terms.preserve * share,
                      terms.attention * share)
        procs.sum_gradients(self.parameters)
        total, erase, preserve, attention = (sum(v) for v in zip(*procs.gather(values)))
        return LossTerms(total=total, erase=erase, preserve=preserve, attention=attention)

    def save(self, directory: str | Path, pipeline_class: "type | str | None" = None) -> Path:
        """Save the trained adapter in the diffusers LoRA format of ``pipeline_class`` (default SD); returns
        the weights file."""
        from policykit.realera.edit import lora_state, save_lora

        return save_lora(*lora_state(self.unet, self.adapter_name), directory, pipeline_class=pipeline_class)


# ---------------------------------------------------------------- the stage

@dataclass
class LoraAdapter(TypedOutput):
    """A trained adapter: ``state`` in the diffusers format (no ``unet.`` prefix); ``info["lora_config"]``
    is its peft config."""

    state: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def run(plan, pipeline, settings: NoiseAlignmentSettings, *, erase, preserve, latents: "torch.Tensor",
        mined=None, shell=None, delta: dict | None = None, progress: bool = True) -> LoraAdapter:
    """Stage 4 on a plan: a LoRA trained on the refined U-Net, on a mixture of all concepts.

    ``erase`` / ``preserve`` are the plan's phrases (:mod:`.encoding`); ``mined`` / ``shell`` (stages 1
    and 2) join them when the settings say so; ``delta`` is the closed form's edit, on for the
    training and taken off after; ``latents``: what the *base* model draws for the concepts
    (:func:`generate_training_latents`). The pipeline is left as it came (adapter layers removed).
    """
    import torch
    from diffusers import DDPMScheduler

    from policykit.models.text import text_model
    from policykit.realera.edit import lora_state, temporary_edit

    seqs, seq_targets, seq_alpha = [erase.sequences], [erase.sequence_targets], [erase.sequence_alpha]
    if settings.use_mined_neighbors and mined is not None:
        seqs.append(mined.sequences)
        seq_targets.append(mined.sequence_targets)
        seq_alpha.append(mined.sequence_alpha)
    keep = [preserve.sequences]
    if settings.use_beyond_concept and shell is not None:
        keep.append(shell.sequences)
    data = NoiseAlignmentData(erase=torch.cat(seqs), erase_targets=torch.cat(seq_targets),
                              erase_weights=torch.cat(seq_alpha), preserve=torch.cat(keep), latents=latents,
                              null=preserve.null)
    # A DDPM schedule for add_noise: multistep samplers (DPM-Solver) only noise at their inference steps.
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    with temporary_edit(pipeline.unet, delta or {}):
        trainer = NoiseAlignmentTrainer(pipeline.unet, scheduler, data, settings, progress=progress,
                                        text=text_model(pipeline))
        try:
            report = trainer.train()
            state, lora_config = lora_state(pipeline.unet, trainer.adapter_name)
        finally:
            # Remove the LoRA layers themselves (not only the adapter) so the U-Net is plain again.
            pipeline.unet.unload_lora()
            pipeline.unet.requires_grad_(False)
    tail = max(1, min(10, len(report.losses)))
    mean = lambda xs: round(sum(xs[-tail:]) / tail, 6)  # noqa: E731
    info = {"steps": len(report.losses), "erase_samples": int(data.erase.shape[0]),
            "preserve_samples": int(data.preserve.shape[0]), "latents": int(latents.shape[0]),
            "loss_first": round(report.losses[0], 6), "loss": mean(report.losses),
            "erase_loss": mean(report.erase), "preserve_loss": mean(report.preserve),
            "attention_loss": mean(report.attention), "lora_config": lora_config}
    return LoraAdapter(state=state, info=info)
