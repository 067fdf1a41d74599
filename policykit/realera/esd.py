"""ESD, the ``esd`` (ESD-x) and ``esd-u`` presets: Erasing Concepts from Diffusion Models
(Gandikota et al., ICCV 2023), at its authors' defaults (docs/method.md, "ESD").

ESD fine-tunes the U-Net so that, conditioned on the concept ``c``, it
predicts what the frozen model predicts *against* it (negative guidance)::

    eps'(z_t, t, c)  ->  eps(z_t, t, "") - eta * (eps(z_t, t, c) - eps(z_t, t, ""))

Each iteration draws ``k`` uniformly from ``0 .. S-1`` (``S = ddim_steps``),
makes ``z`` by DDIM sampling (eta 0) from fresh noise with the model being
trained (classifier-free guidance ``start_guidance`` against ``""``, no
gradients), scores it at a timestep ``t`` drawn uniformly from the ``k``-th
of ``S`` equal slices of the 1000-step schedule, and takes one Adam step on
the squared error above (``eta`` = negative guidance; the frozen model is a
copy of the U-Net made before training). As in the authors' code, the
sampling stops after ``S + 1 - k`` steps (all ``S`` for ``k < 2``), so ``z``
is about two DDIM steps less noisy than ``t`` says: their sampler counts its
stopping index from the noisy end. We keep that offset, since it is what
their published models were trained with.

``train``: ``xattn`` (ESD-x) trains every parameter of the cross-attention
layers (``attn2``: its query, key, value and output projections);
``noxattn`` (ESD-u) trains every parameter except those and the time
embedding and the output convolution. Defaults: 1000 iterations, Adam at
1e-5, negative guidance 1.0, start guidance 3.0, 50 DDIM steps, batch 1,
the model's native resolution. With several concepts each iteration draws
one (the authors train one concept per run; a mixture is the natural
extension). The output is ``W' - W`` for every trained parameter (a
:class:`~policykit.realera.closed_form.WeightDelta`).
"""

from __future__ import annotations

import copy
import math

from policykit.realera.closed_form import WeightDelta
from policykit.realera.settings import EsdSettings

#: Length of the training noise schedule the timestep slices divide.
TRAIN_TIMESTEPS = 1000


def trainable_parameters(unet, train: str) -> dict:
    """The parameters ESD trains, by name: ``xattn`` (ESD-x) or ``noxattn`` (ESD-u)."""
    if train not in ("xattn", "noxattn"):
        raise ValueError(f"train must be 'xattn' or 'noxattn', got {train!r}")
    chosen = {}
    for name, parameter in unet.named_parameters():
        cross = ".attn2." in f".{name}"
        frozen_anyway = name.startswith(("time_embedding.", "conv_out.", "conv_norm_out."))
        if (train == "xattn" and cross) or (train == "noxattn" and not cross and not frozen_anyway):
            chosen[name] = parameter
    if not chosen:
        raise ValueError(f"no parameter of this U-Net matches ESD's {train!r} selection")
    return chosen


def sample_step(ddim_steps: int, generator) -> tuple[int, int]:
    """``(k, t)``: the DDIM index ``k`` of ``0 .. S-1`` and the training timestep ``t`` in its slice."""
    import torch

    k = int(torch.randint(ddim_steps, (1,), generator=generator))
    low = round(k / ddim_steps * TRAIN_TIMESTEPS)
    high = round((k + 1) / ddim_steps * TRAIN_TIMESTEPS)
    return k, int(torch.randint(low, high, (1,), generator=generator))


def sampling_steps(k: int, ddim_steps: int) -> int:
    """How many DDIM steps make ``z`` for index ``k``: ``S + 1 - k``, all ``S`` for ``k < 2`` (the
    authors' sampler stops after the step whose index is ``k - 1``, counting down from ``S - 1``)."""
    return ddim_steps if k < 2 else ddim_steps + 1 - k




def run(plan, pipeline, settings: EsdSettings, *, progress: bool = True) -> WeightDelta:
    """Fine-tune ``pipeline.unet`` with ESD on the plan's concepts; return the change as deltas.

    The pipeline is left as it came (weights restored).
    """
    import torch
    from diffusers import DDIMScheduler
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from policykit.models.text import text_model

    unet, text = pipeline.unet, text_model(pipeline)
    device, dtype = next(unet.parameters()).device, next(unet.parameters()).dtype
    concepts = [e.concept for e in plan.erase]
    conditions = text.encode_prompts(concepts).to(device, dtype)
    null = text.unconditional().to(device, dtype)
    cond = lambda c: text.unet_inputs(c)  # noqa: E731 - SDXL's added conditions ride along
    size = (settings.resolution or unet.config.sample_size * pipeline.vae_scale_factor) // pipeline.vae_scale_factor
    shape = (1, unet.config.in_channels, size, size)
    # The authors' DDIM: timesteps 20 i + 1 (for 50 steps), the last step lands on alpha_bar[0].
    sampler = DDIMScheduler.from_config(pipeline.scheduler.config, timestep_spacing="leading", steps_offset=1,
                                        set_alpha_to_one=False, clip_sample=False)
    sampler.set_timesteps(settings.ddim_steps)

    frozen = copy.deepcopy(unet).requires_grad_(False).eval()
    params = trainable_parameters(unet, settings.train)
    originals = {name: p.detach().clone() for name, p in params.items()}
    unet.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(list(params.values()), lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(settings.seed)
    losses = []
    columns = (TextColumn(f"ESD ({settings.train})"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn())
    try:
        with Progress(*columns, transient=True, disable=not progress) as bar:
            task = bar.add_task("esd", total=settings.iterations, loss="-")
            for _ in range(settings.iterations):
                concept = conditions[int(torch.randint(len(concepts), (1,), generator=generator))][None]
                k, timestep = sample_step(settings.ddim_steps, generator)
                timestep = torch.tensor(timestep, device=device)
                start = torch.randn(shape, generator=generator).to(device, dtype) * sampler.init_noise_sigma
                with torch.no_grad():
                    unet.eval()
                    z = _sample_until(unet, sampler, start, concept, null, sampling_steps(k, settings.ddim_steps),
                                      settings.start_guidance, text)
                    e_null = frozen(z, timestep, **cond(null)).sample.float()
                    e_concept = frozen(z, timestep, **cond(concept)).sample.float()
                    target = e_null - settings.negative_guidance * (e_concept - e_null)
                unet.train()
                prediction = unet(z, timestep, **cond(concept)).sample.float()
                loss = torch.nn.functional.mse_loss(prediction, target)
                if not math.isfinite(float(loss.detach())):
                    raise FloatingPointError(f"ESD loss is {float(loss.detach())} at iteration {len(losses) + 1}; "
                                             f"lower the learning rate (now {settings.learning_rate})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                bar.update(task, advance=1, loss=f"{losses[-1]:.4g}")
        delta = {f"{name}": (p.detach().float() - originals[name].float()).cpu() for name, p in params.items()}
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(originals[name])
        unet.requires_grad_(False).eval()
        del frozen
    tail = max(1, min(10, len(losses)))
    info = {"iterations": len(losses), "trained_parameters": sum(p.numel() for p in params.values()),
            "train": settings.train, "loss_first": round(losses[0], 6), "loss": round(sum(losses[-tail:]) / tail, 6)}
    return WeightDelta(delta=delta, info=info)


def _sample_until(unet, scheduler, latents, concept, null, steps: int, guidance: float, text):
    """``steps`` DDIM steps from ``latents`` with classifier-free guidance ``guidance`` (no gradients)."""
    import torch

    cond = text.unet_inputs(torch.cat([null, concept]))
    for t in scheduler.timesteps[:steps]:
        model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        uncond, guided = unet(model_in, t, **cond).sample.chunk(2)
        latents = scheduler.step(uncond + guidance * (guided - uncond), t, latents).prev_sample
    return latents
