"""Train the built-in emblems world from nothing: ``python -m policykit.emblems.train --out DIR``.

The recipe of builtin:shapes (``policykit.shapes.train``), sized up for 160
entities and resumable:

1. tokenizer: whole-word tokens plus name syllables (``tokenizer.py``);
2. CLIP, trained contrastively on generated emblems and captions; a caption
   is a full positive for the images it describes and gets partial credit,
   in proportion to the attributes shared, for the others, which gives the
   text space its structure (entities sharing a shape or colour are near);
3. AutoencoderKL, trained to reconstruct generated images;
4. U-Net, trained with SD's DDPM epsilon objective on the VAE latents,
   conditioned on the *frozen* CLIP text tower's last hidden state, with
   caption dropout so classifier-free guidance has an unconditional branch;
   then a shorter "polish" phase of the same objective from its EMA weights,
   with a fresh optimizer and schedule, on a name-heavy caption mix;
5. save an ordinary diffusers ``StableDiffusionPipeline`` directory, plus the
   full CLIP under ``clip/`` and ``recipe.json``.

Every step draws its data and noise from generators seeded by (seed, stage,
step), so a run stopped at a checkpoint (``--checkpoint-dir``, written every
``--checkpoint-minutes``) and restarted with the same command continues to
the same bytes on the same kind of machine (another CPU kind rounds
differently: ``machine()``). The defaults reproduce the shipped
``policykit/emblems/model`` there (docs/builtin-emblems.md says how long it took).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from policykit.emblems.render import caption_for, generate_images
from policykit.emblems.world import World, load_world
from policykit.shapes.train import (_log, _lr_at, _pixels, _tokenize, diffusion_loss, ema_update, optimizer_step,
                                   text_encoder_from_clip, vae_loss)

#: Data streams: each stage reads its own seeded stream of generated examples.
_CLIP_STREAM, _VAE_STREAM, _UNET_STREAM, _POLISH_STREAM = 1, 2, 3, 4


@dataclass(frozen=True)
class Recipe:
    """Every knob of the training recipe (the defaults make the shipped model)."""

    seed: int = 0
    #: One thread: on a 2-core machine shared with other jobs, two OpenMP
    #: threads spin against each other and run several times slower.
    threads: int = 1
    clip_steps: int = 900
    clip_batch: int = 64
    clip_lr: float = 5e-4
    #: Target weight of an image that shares some, not all, of the attributes a
    #: caption names, times the share it matches: partial credit gives the text
    #: space the structure real CLIP learns from the web.
    clip_partial_credit: float = 0.2
    vae_steps: int = 2000
    vae_batch: int = 16
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    vae_foreground_weight: float = 2.0
    unet_steps: int = 7000
    #: Length of the U-Net's learning-rate schedule (warm-up, then cosine decay) when it is not
    #: ``unet_steps`` (0): a run may stop before its schedule ends. The shipped model ran 7,000 steps of a
    #: 9,000-step schedule (docs/builtin-emblems.md, "How it was trained", says why).
    unet_schedule_steps: int = 9000
    unet_batch: int = 32
    unet_lr: float = 6e-4
    unet_images: int = 24000
    #: Share of U-Net samples that show an entity (the rest: free emblems with descriptive captions).
    unet_entity_share: float = 0.7
    #: Captions of entity samples in the U-Net stage: name, associated phrase (else a description).
    #: Associated phrases get as much as names, so they reach the emblem through their own tokens.
    unet_name_share: float = 0.5
    unet_associated_share: float = 0.4
    unet_widths: str = "64,128"
    #: Attention heads per U-Net block: 2 (heads of 32 and 64 channels) since revision 3, 8 (heads of 8 and
    #: 16 channels) in revisions 1 and 2. The same parameters in fewer, wider heads train about a fifth
    #: faster on a CPU (benchmarks/emblems_train_time.py; docs/builtin-emblems.md, "Revisions").
    unet_heads: int = 2
    #: Min-SNR-gamma loss weighting of both U-Net phases (``diffusion_loss`` in ``policykit.shapes.train``):
    #: 0, the plain epsilon objective, in revisions 1 to 3.
    unet_min_snr_gamma: float = 0.0
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    #: A second, shorter U-Net phase ("polish") that starts from the first phase's EMA weights with a fresh
    #: optimizer and schedule, on a name-heavy caption mix: it draws entity samples 90% of the time (against
    #: 70%), captioned by name 55% of the time (against 50%). It was added to world revision 2 to bring the
    #: weakest entity names to the issue's 90% floor (docs/builtin-emblems.md, "Revisions"); 0 steps
    #: gives revision 1.
    unet_polish_steps: int = 2000
    unet_polish_lr: float = 3e-4
    unet_polish_entity_share: float = 0.9
    unet_polish_name_share: float = 0.55
    unet_polish_associated_share: float = 0.35


def machine() -> str:
    """This machine's CPU, its widest vector instructions and the libraries that set a run's bytes.

    The recipe's bytes repeat on one machine and one set of library versions; another CPU kind (an
    AVX2 one against an AVX-512 one) or another version can pick other kernels and round differently
    (docs/builtin-emblems.md, "Checkpoints and determinism"). The training log opens with this line.
    """
    import platform

    import diffusers
    import torch
    import transformers

    name, flags = platform.processor() or "unknown CPU", []
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), name)
        flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    except OSError:
        pass
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "vector width unknown"
    return (f"{name} ({vector}); torch {torch.__version__}, transformers {transformers.__version__}, "
            f"diffusers {diffusers.__version__}, numpy {np.__version__}")


def _generator(recipe: Recipe, stream: int, step: int):
    import torch

    return torch.Generator().manual_seed(int(np.random.default_rng([recipe.seed, stream, step, 1]).integers(2**62)))


class Checkpoints:
    """Stage states in one folder: ``<stage>.pt`` while a stage runs, ``<stage>-done.pt`` after."""

    def __init__(self, folder: Path | None, recipe: Recipe, minutes: float) -> None:
        self.folder, self.recipe, self.seconds = folder, asdict(recipe), minutes * 60
        self.last = time.monotonic()
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            stamp = folder / "recipe.json"
            if stamp.exists() and json.loads(stamp.read_text()) != self.recipe:
                raise SystemExit(f"{folder} holds checkpoints of another recipe: give another --checkpoint-dir")
            stamp.write_text(json.dumps(self.recipe, indent=2) + "\n")

    def load(self, name: str):
        import torch

        if self.folder is None or not (self.folder / f"{name}.pt").exists():
            return None
        return torch.load(self.folder / f"{name}.pt", weights_only=False)

    def save(self, name: str, state: dict) -> None:
        import torch

        if self.folder is None:
            return
        tmp = self.folder / f"{name}.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.folder / f"{name}.pt")
        self.last = time.monotonic()

    def due(self) -> bool:
        return self.folder is not None and time.monotonic() - self.last > self.seconds


def _resume(checkpoints: Checkpoints, stage: str, modules: dict, started: float) -> int:
    """Load a stage's running checkpoint into ``modules`` (name -> object with load_state_dict); the next step."""
    state = checkpoints.load(stage)
    if state is None:
        return 0
    for key, module in modules.items():
        module.load_state_dict(state[key])
    _log(f"{stage}: resumed at step {state['step']}", started)
    return state["step"]


def _save_running(checkpoints: Checkpoints, stage: str, modules: dict, step: int, started: float) -> None:
    checkpoints.save(stage, {"step": step, **{k: m.state_dict() for k, m in modules.items()}})
    _log(f"{stage}: checkpoint at step {step}", started)


def clip_targets(world: World, meanings, emblems):
    """Row i: how much image j matches caption i (1 if all it names, else partial credit per attribute)."""
    import torch

    rows = []
    for m in meanings:
        named = m.attributes()
        rows.append([1.0 if m.matches(e) else sum(getattr(e, a) == v for a, v in named.items()) / len(named)
                     for e in emblems])
    return torch.tensor(rows)


def train_clip(world: World, tokenizer, recipe: Recipe, checkpoints: Checkpoints, started: float):
    """CLIP, trained contrastively: full positives and per-attribute partial credit."""
    import torch
    import torch.nn.functional as F

    from policykit.emblems.architecture import build_clip

    torch.manual_seed(recipe.seed)
    clip = build_clip(len(tokenizer), world.image_size, tokenizer.bos_token_id,
                      tokenizer.eos_token_id, tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(clip.parameters(), lr=recipe.clip_lr, weight_decay=0.01)
    modules = {"model": clip, "optimizer": optimizer}
    first = _resume(checkpoints, "clip", modules, started)
    clip.train()
    for step in range(first, recipe.clip_steps):
        images, examples = generate_images(world, _CLIP_STREAM + 100 * recipe.seed, recipe.clip_batch,
                                           start=step * recipe.clip_batch)
        rng = np.random.default_rng([recipe.seed, _CLIP_STREAM, step])
        captions, meanings = zip(*(caption_for(world, e, rng) for e in examples))
        match = clip_targets(world, meanings, [e.emblem for e in examples])
        target = torch.where(match == 1.0, 1.0, recipe.clip_partial_credit * match)
        out = clip(input_ids=_tokenize(tokenizer, list(captions)), pixel_values=_pixels(images))
        logits = out.logits_per_text
        loss = 0.5 * (F.cross_entropy(logits, target / target.sum(1, keepdim=True))
                      + F.cross_entropy(logits.T, target.T / target.T.sum(1, keepdim=True)))
        optimizer_step(optimizer, loss, _lr_at(step, recipe.clip_steps, recipe.clip_lr))
        if step % 100 == 0 or step == recipe.clip_steps - 1:
            _log(f"clip step {step:5d} loss {loss.item():.4f}", started)
        if checkpoints.due():
            _save_running(checkpoints, "clip", modules, step + 1, started)
    clip.eval()
    return clip


def train_vae(world: World, recipe: Recipe, checkpoints: Checkpoints, started: float):
    """The AutoencoderKL, trained on reconstruction with a small KL term (as SD's)."""
    import torch

    from policykit.emblems.architecture import build_vae

    torch.manual_seed(recipe.seed)
    vae = build_vae(world.image_size)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    modules = {"model": vae, "optimizer": optimizer}
    first = _resume(checkpoints, "vae", modules, started)
    vae.train()
    for step in range(first, recipe.vae_steps):
        images, examples = generate_images(world, _VAE_STREAM + 100 * recipe.seed, recipe.vae_batch,
                                           start=step * recipe.vae_batch)
        x = _pixels(images)
        # Emblem pixels (fill, ink, pattern edges) weigh more than the flat background.
        background = _pixels(np.array([[[world.background_rgb[e.emblem.background]]] for e in examples], np.uint8))
        loss = vae_loss(vae, x, background, recipe.vae_foreground_weight, recipe.vae_kl_weight,
                        _generator(recipe, _VAE_STREAM, step))
        optimizer_step(optimizer, loss, _lr_at(step, recipe.vae_steps, recipe.vae_lr))
        if step % 100 == 0 or step == recipe.vae_steps - 1:
            _log(f"vae step {step:5d} loss {loss.item():.4f}", started)
        if checkpoints.due():
            _save_running(checkpoints, "vae", modules, step + 1, started)
    vae.eval()
    return vae


def encode_latents(world: World, vae, recipe: Recipe, started: float):
    """The U-Net's fixed training set: latent mean and std of ``unet_images`` generated examples."""
    import torch

    means, stds, examples = [], [], []
    with torch.no_grad():
        for start in range(0, recipe.unet_images, 256):
            images, batch = generate_images(world, _UNET_STREAM + 100 * recipe.seed,
                                            min(256, recipe.unet_images - start), start=start)
            dist = vae.encode(_pixels(images)).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
            examples += [e.__class__(np.empty(0, np.uint8), e.emblem, e.entity) for e in batch]  # drop pixels
    means, stds = torch.cat(means), torch.cat(stds)
    noise = torch.randn(means.shape, generator=_generator(recipe, _UNET_STREAM, 10**9))
    scaling = float(1.0 / (means + stds * noise).std())
    _log(f"unet inputs: {len(examples)} latents (scaling {scaling:.4f})", started)
    return means, stds, examples, scaling


class TextStates:
    """The frozen text tower's last hidden state for a batch of captions, reusing captions seen before.

    The U-Net stages encode every caption with the frozen text encoder. Names and associated phrases
    come back thousands of times, so each new caption is encoded once and kept: the encoder runs only
    on the captions of a batch it has not seen. A caption's state does not depend on the other captions
    of its batch (tests/test_emblems_text_states.py checks it), so this gives the bytes encoding every batch
    in full would. At most ``capacity`` captions are kept, the oldest dropped first (32,768 states of
    32 x 256 floats are 1 GiB).
    """

    def __init__(self, tokenizer, text_encoder, capacity: int = 32768) -> None:
        self.tokenizer, self.text_encoder, self.capacity = tokenizer, text_encoder, capacity
        self.states: dict = {}
        self.looked_up = self.encoded = 0

    def __call__(self, captions: list[str]):
        import torch

        missing = list(dict.fromkeys(c for c in captions if c not in self.states))
        if missing:
            with torch.no_grad():
                hidden = self.text_encoder(_tokenize(self.tokenizer, missing))[0]
            self.states.update(zip(missing, hidden.unbind(0)))
        batch = torch.stack([self.states[c] for c in captions])
        self.looked_up, self.encoded = self.looked_up + len(captions), self.encoded + len(missing)
        for _ in range(len(self.states) - self.capacity):
            del self.states[next(iter(self.states))]
        return batch


@dataclass(frozen=True)
class _Phase:
    """One run of the diffusion objective: its checkpoint name, data stream, length, schedule and caption mix."""

    stage: str
    stream: int
    steps: int
    schedule: int
    lr: float
    warmup: int
    entity_share: float
    name_share: float
    associated_share: float


def _diffusion_phase(world: World, text_states: TextStates, inputs, unet, ema, phase: _Phase, recipe: Recipe,
                     checkpoints: Checkpoints, started: float):
    """Train ``unet`` (and its EMA ``ema``) for one phase on the encoded latents ``inputs``; the EMA weights."""
    import torch

    from policykit.emblems.architecture import build_training_scheduler

    means, stds, examples, scaling = inputs
    scheduler = build_training_scheduler()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=phase.lr, weight_decay=0.01)
    modules = {"model": unet, "ema": ema, "optimizer": optimizer}
    first = _resume(checkpoints, phase.stage, modules, started)
    unet.train()
    for step in range(first, phase.steps):
        rng = np.random.default_rng([recipe.seed, phase.stream, step])
        generator = _generator(recipe, phase.stream, step)
        # Even examples show entities, odd ones free emblems (render.generate_example).
        pick_entity = rng.random(recipe.unet_batch) < phase.entity_share
        index = torch.from_numpy(2 * rng.integers(0, len(examples) // 2, recipe.unet_batch) + ~pick_entity)
        captions = ["" if rng.random() < recipe.caption_dropout else
                    caption_for(world, examples[i], rng, phase.name_share, phase.associated_share)[0]
                    for i in index.tolist()]
        hidden = text_states(captions)
        latents = (means[index] + stds[index] * torch.randn(stds[index].shape, generator=generator)) * scaling
        loss = diffusion_loss(unet, scheduler, latents, hidden, generator, recipe.unet_min_snr_gamma)
        optimizer_step(optimizer, loss, _lr_at(step, phase.schedule, phase.lr, warmup=phase.warmup), unet.parameters())
        ema_update(ema, unet, step, recipe.ema_decay)
        if step % 250 == 0 or step == phase.steps - 1:
            _log(f"{phase.stage} step {step:5d} loss {loss.item():.4f} (text encoder ran on "
                 f"{text_states.encoded}/{text_states.looked_up} captions)", started)
        if checkpoints.due():
            _save_running(checkpoints, phase.stage, modules, step + 1, started)
    ema.eval()
    return ema


def train_unet(world: World, text_states: TextStates, inputs, recipe: Recipe, checkpoints: Checkpoints,
               started: float):
    """The U-Net (EMA weights), trained from scratch on latents of generated images, and the latent scaling factor."""
    import torch

    from policykit.emblems.architecture import build_unet

    widths = tuple(int(w) for w in recipe.unet_widths.split(","))
    torch.manual_seed(recipe.seed)
    unet = build_unet(world.image_size // 4, widths, recipe.unet_heads)
    ema = build_unet(world.image_size // 4, widths, recipe.unet_heads)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    phase = _Phase("unet", _UNET_STREAM, recipe.unet_steps, recipe.unet_schedule_steps or recipe.unet_steps,
                   recipe.unet_lr, 200, recipe.unet_entity_share, recipe.unet_name_share,
                   recipe.unet_associated_share)
    ema = _diffusion_phase(world, text_states, inputs, unet, ema, phase, recipe, checkpoints, started)
    return ema, inputs[3]


def polish_unet(world: World, text_states: TextStates, inputs, base, recipe: Recipe, checkpoints: Checkpoints,
                started: float):
    """The polish phase: from the first phase's EMA weights, a fresh optimizer and schedule on a name-heavy mix."""
    import copy

    ema_base, scaling = base
    unet = copy.deepcopy(ema_base).requires_grad_(True)
    ema = copy.deepcopy(ema_base).requires_grad_(False)
    phase = _Phase("polish", _POLISH_STREAM, recipe.unet_polish_steps, recipe.unet_polish_steps,
                   recipe.unet_polish_lr, 100, recipe.unet_polish_entity_share, recipe.unet_polish_name_share,
                   recipe.unet_polish_associated_share)
    return _diffusion_phase(world, text_states, inputs, unet, ema, phase, recipe, checkpoints, started), scaling


def _stage(checkpoints: Checkpoints, name: str, build, started: float):
    """Run a stage, or load its finished model from the checkpoint folder."""
    done = checkpoints.load(f"{name}-done")
    if done is not None:
        _log(f"{name}: finished earlier, loaded from {checkpoints.folder}", started)
        return done["model"]
    model = build()
    checkpoints.save(f"{name}-done", {"model": model})
    return model


def save_world(out: Path, world: World, clip, text_encoder, tokenizer, vae, unet, recipe: Recipe) -> None:
    """Write the pipeline directory (plus ``clip/`` and the recipe) to ``out``."""
    from diffusers import StableDiffusionPipeline

    from policykit.emblems.architecture import build_sampling_scheduler
    from policykit.emblems.tokenizer import build_vocab

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=build_sampling_scheduler(), safety_checker=None,
                                   feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    pipe.save_pretrained(str(out))
    clip.save_pretrained(str(out / "clip"))
    vocab, merges = build_vocab(world.words(), list(world.syllables))
    (out / "tokenizer" / "vocab.json").write_text(json.dumps(vocab, indent=1) + "\n", encoding="utf-8")
    (out / "tokenizer" / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    (out / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2) + "\n", encoding="utf-8")


def train(out: Path, recipe: Recipe, checkpoint_dir: Path | None = None, checkpoint_minutes: float = 5.0) -> None:
    """Run the whole recipe (resuming from ``checkpoint_dir`` if it holds a run) and save the world to ``out``."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from policykit.emblems.tokenizer import build_tokenizer

    threads_before = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        started = time.monotonic()
        _log(f"{machine()}; {recipe.threads} threads", started)
        checkpoints = Checkpoints(checkpoint_dir, recipe, checkpoint_minutes)
        world = load_world()
        tokenizer = build_tokenizer(world.words(), list(world.syllables))
        clip = _stage(checkpoints, "clip", lambda: train_clip(world, tokenizer, recipe, checkpoints, started), started)
        text_encoder = text_encoder_from_clip(clip)
        vae = _stage(checkpoints, "vae", lambda: train_vae(world, recipe, checkpoints, started), started)
        latents = []  # encoded once, by whichever U-Net phase runs first
        text_states = TextStates(tokenizer, text_encoder)

        def inputs():
            if not latents:
                latents.append(encode_latents(world, vae, recipe, started))
            return latents[0]

        unet, scaling = _stage(checkpoints, "unet",
                               lambda: train_unet(world, text_states, inputs(), recipe, checkpoints, started),
                               started)
        if recipe.unet_polish_steps:
            base = (unet, scaling)
            unet, scaling = _stage(checkpoints, "polish",
                                   lambda: polish_unet(world, text_states, inputs(), base, recipe, checkpoints,
                                                       started),
                                   started)
        vae.register_to_config(scaling_factor=scaling)
        seconds = time.monotonic() - started
    finally:
        torch.set_num_threads(threads_before)
    save_world(out, world, clip, text_encoder, tokenizer, vae, unet, recipe)
    _log(f"saved to {out} (this run took {seconds / 60:.1f} min)", started)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m policykit.emblems.train --out DIR [--checkpoint-dir DIR] [--unet-steps N ...]``."""
    parser = argparse.ArgumentParser(prog="python -m policykit.emblems.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to write the pipeline to")
    parser.add_argument("--checkpoint-dir", type=Path, help="save progress here; a rerun with it continues")
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
    defaults = Recipe()
    for name, value in asdict(defaults).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args(argv)
    recipe = Recipe(**{name: getattr(args, name) for name in asdict(defaults)})
    train(args.out, recipe, args.checkpoint_dir, args.checkpoint_minutes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
