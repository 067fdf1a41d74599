"""Benchmark: how long the builtin:emblems training recipe takes on this machine, without running it.

The issue's budget is 2 hours for the whole recipe on the 2 CPU cores, and a
run takes about that long, so this times a few steps of each stage with the
recipe's own code (``policykit.emblems.train``) and projects the full run:

- each stage's time per step is that of a ``--steps`` run after an untimed
  ``--warmup`` run (first calls allocate and pick kernels);
- the latents are timed on ``--latent-images`` images and scaled to the recipe's;
- the polish is projected at the first phase's time per step (same code, batch
  and model).

The text encoder's cache starts cold in so short a run, so the projection
counts more text-encoder passes than a full run makes: it errs long. Prints
numbers; asserts nothing. Every recipe knob of ``python -m
policykit.emblems.train`` can be given, to project another recipe; ``--write``
puts the table into docs/benchmarks.md, in a section of its own per recipe
(``emblems-train-time``, or with the knobs that differ from the shipped
recipe's appended, e.g. ``emblems-train-time-unet-heads-8``):

    python benchmarks/emblems_train_time.py [--steps 30] [--threads 2] [--unet-heads 8 ...] [--write]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def per_step(run, warmup: int, steps: int) -> float:
    """Seconds per step: ``run(n)`` runs a stage for n steps, first ``warmup`` (untimed: first-call costs), then ``steps``.

    The timed run includes building the stage's models, a fraction of a second: over 30 steps, about 1%.
    """
    run(warmup)
    t0 = time.perf_counter()
    run(steps)
    return (time.perf_counter() - t0) / steps


def main(argv: list[str] | None = None) -> int:
    """Time a few steps of every stage and project the recipe's total."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from policykit.emblems.train import Recipe

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per stage")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps run first")
    parser.add_argument("--latent-images", type=int, default=1024)
    parser.add_argument("--budget-minutes", type=float, default=120.0)
    parser.add_argument("--write", action="store_true", help="also write the table into docs/benchmarks.md")
    defaults = Recipe(threads=2)
    for name, value in asdict(defaults).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args(argv)
    recipe = Recipe(**{name: getattr(args, name) for name in asdict(defaults)})

    import torch

    from policykit.emblems import train as T
    from policykit.emblems.tokenizer import build_tokenizer
    from policykit.emblems.world import load_world

    torch.set_num_threads(recipe.threads)
    started = time.monotonic()
    world = load_world()
    tokenizer = build_tokenizer(world.words(), list(world.syllables))
    none = T.Checkpoints(None, recipe, 5.0)
    quiet = T._log
    T._log = lambda *a, **k: None  # the stages' progress lines would interleave with the table
    try:
        clip_s = per_step(lambda n: T.train_clip(world, tokenizer, replace(recipe, clip_steps=n), none, started),
                          args.warmup, args.steps)
        clip = T.train_clip(world, tokenizer, replace(recipe, clip_steps=1), none, started)
        vae_s = per_step(lambda n: T.train_vae(world, replace(recipe, vae_steps=n), none, started),
                         args.warmup, args.steps)
        vae = T.train_vae(world, replace(recipe, vae_steps=1), none, started)
        t0 = time.perf_counter()
        inputs = T.encode_latents(world, vae, replace(recipe, unet_images=args.latent_images), started)
        latents_s = (time.perf_counter() - t0) / args.latent_images * recipe.unet_images
        states = T.TextStates(tokenizer, T.text_encoder_from_clip(clip))
        unet_s = per_step(lambda n: T.train_unet(world, states, inputs, replace(recipe, unet_steps=n), none, started),
                          args.warmup, args.steps)
    finally:
        T._log = quiet

    from report import git_commit, header, markdown_table, text_table, write_section

    stages = [("CLIP", clip_s, recipe.clip_steps), ("VAE", vae_s, recipe.vae_steps),
              ("latents", None, recipe.unet_images), ("U-Net", unet_s, recipe.unet_steps),
              ("polish", unet_s, recipe.unet_polish_steps)]
    rows, total = [], 0.0
    for name, seconds, count in stages:
        minutes = (latents_s if seconds is None else seconds * count) / 60
        total += minutes
        rate = f"{latents_s / count * 1000:.2f} ms/image" if seconds is None else f"{seconds:.3f} s/step"
        rows.append([name, rate, f"{count:,}", f"{minutes:.1f}"])
    rows.append(["total", "", "", f"{total:.1f}"])
    changed = {k.replace("_", "-"): v for k, v in asdict(recipe).items() if v != getattr(defaults, k)}
    headers = ["stage", "time", "steps or images", "minutes"]
    notes = (f"{T.machine()}; {recipe.threads} threads; code at commit {git_commit()}. Recipe: the shipped one"
             + "".join(f" --{k} {v}" for k, v in changed.items()) + f"; budget {args.budget_minutes:.0f} min. "
             f"The text encoder ran on {states.encoded}/{states.looked_up} captions in the timed U-Net steps "
             "(a full run reuses more).")
    opening = f"{header(argv)}\n{notes}\n\n"
    print(opening + text_table(headers, rows))
    if args.write:
        name = "-".join(["emblems-train-time", *(f"{k}-{v}" for k, v in changed.items())])
        print(f"wrote section {name} of {write_section(name, opening + markdown_table(headers, rows))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
