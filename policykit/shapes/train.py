"""Train the built-in shapes world from nothing: ``python -m policykit.shapes.train --out DIR``.

One seeded recipe, read top to bottom:

1. tokenizer: BPE merges learned on the world's words (``tokenizer.py``);
2. tiny CLIP, trained contrastively on generated images and captions;
3. tiny AutoencoderKL, trained to reconstruct generated images;
4. tiny U-Net, trained with SD's DDPM epsilon objective on the VAE latents,
   conditioned on the *frozen* CLIP text tower's last hidden state, with
   caption dropout so classifier-free guidance has an unconditional branch;
5. save an ordinary diffusers ``StableDiffusionPipeline`` directory, plus the
   full CLIP under ``clip/`` for scoring.

The defaults reproduce the shipped ``policykit/shapes/model`` (see
docs/builtin-shapes.md for the command and how long it took).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from policykit.shapes.render import caption_for, generate_images
from policykit.shapes.world import World, load_world

#: Data streams: each stage reads its own seeded stream of generated examples.
_CLIP_STREAM, _VAE_STREAM, _UNET_STREAM = 1, 2, 3


@dataclass(frozen=True)
class Recipe:
    """Every knob of the training recipe (the defaults make the shipped model)."""

    seed: int = 0
    #: One thread: on a 2-core machine shared with other jobs, two OpenMP
    #: threads spin against each other and run several times slower.
    threads: int = 1
    clip_steps: int = 800
    clip_batch: int = 64
    clip_lr: float = 1e-3
    #: Target weight for image/caption pairs that share the colour or the shape:
    #: a red square half-matches "red circle", which gives the text space the
    #: structure real CLIP learns from the web (shared words -> nearby concepts).
    clip_partial_credit: float = 0.15
    vae_steps: int = 600
    vae_batch: int = 16
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    vae_foreground_weight: float = 4.0
    unet_steps: int = 4000
    unet_batch: int = 32
    unet_lr: float = 5e-4
    unet_images: int = 9600
    caption_dropout: float = 0.1
    ema_decay: float = 0.999


def _log(message: str, started: float) -> None:
    print(f"[{time.monotonic() - started:7.1f}s] {message}", flush=True)


def _lr_at(step: int, steps: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _pixels(images: np.ndarray):
    import torch

    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def _tokenize(tokenizer, captions: list[str]):
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def optimizer_step(optimizer, loss, lr: float, clip_norm_of=None) -> None:
    """Set the learning rate, back-propagate ``loss`` and step (clipping the gradient norm of ``clip_norm_of`` to 1)."""
    import torch

    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_norm_of is not None:
        torch.nn.utils.clip_grad_norm_(clip_norm_of, 1.0)
    optimizer.step()


def vae_loss(vae, x, background, foreground_weight: float, kl_weight: float, generator=None):
    """Reconstruction (L1 + L2, pixels away from ``background`` weighted up) plus SD's small KL term."""
    weight = 1.0 + foreground_weight * ((x - background).abs().amax(dim=1, keepdim=True) > 0.1).float()
    posterior = vae.encode(x).latent_dist
    reconstruction = vae.decode(posterior.sample(generator=generator)).sample
    error = reconstruction - x
    return (weight * (error.abs() + error.pow(2))).mean() + kl_weight * posterior.kl().mean()


def diffusion_loss(unet, scheduler, latents, hidden, generator=None, min_snr_gamma: float = 0.0):
    """SD's DDPM epsilon objective: noise the latents at random timesteps, predict the noise.

    ``min_snr_gamma`` > 0 weights each sample's squared error by min(SNR(t), gamma) / SNR(t), where
    SNR(t) = alpha_bar_t / (1 - alpha_bar_t): the Min-SNR-gamma strategy of Hang et al., "Efficient
    Diffusion Training via Min-SNR Weighting Strategy" (ICCV 2023), for an epsilon-predicting model. It
    takes weight off the least noisy timesteps, where the image is almost given and the caption barely
    matters; the paper reports the same quality in fewer steps at gamma 5. 0 is the plain objective.
    """
    import torch
    import torch.nn.functional as F

    # randn_like follows the latents' memory layout: kept for the global generator, so that
    # builtin:shapes' recipe still writes the bytes it shipped.
    noise = torch.randn_like(latents) if generator is None else torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    predicted = unet(noisy, timesteps, hidden).sample
    if not min_snr_gamma:
        return F.mse_loss(predicted, noise)
    alpha_bar = scheduler.alphas_cumprod.to(torch.float64)[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    weight = (snr.clamp(max=min_snr_gamma) / snr).to(predicted.dtype)
    return (weight * (predicted - noise).pow(2).mean(dim=(1, 2, 3))).mean()


def ema_update(ema, model, step: int, decay: float) -> None:
    """Move the EMA weights towards the model's; warmed up so that short runs are not dominated by early steps."""
    import torch

    decay = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)


def train_clip(world: World, tokenizer, recipe: Recipe, started: float):
    """The tiny CLIP, trained with a contrastive loss whose positives are same-concept pairs."""
    import torch
    import torch.nn.functional as F

    from policykit.shapes.architecture import build_clip

    torch.manual_seed(recipe.seed)
    clip = build_clip(len(tokenizer), world.image_size, tokenizer.bos_token_id,
                      tokenizer.eos_token_id, tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(clip.parameters(), lr=recipe.clip_lr, weight_decay=0.01)
    clip.train()
    for step in range(recipe.clip_steps):
        images, examples = generate_images(world, _CLIP_STREAM + 100 * recipe.seed, recipe.clip_batch,
                                           start=step * recipe.clip_batch)
        colours = torch.tensor([world.colours.index(e.concept.colour) for e in examples])
        shapes = torch.tensor([world.shapes.index(e.concept.shape) for e in examples])
        same_colour = colours[:, None] == colours[None, :]
        same_shape = shapes[:, None] == shapes[None, :]
        target = (same_colour & same_shape).float() + recipe.clip_partial_credit * (same_colour ^ same_shape).float()
        target = target / target.sum(dim=1, keepdim=True)
        out = clip(input_ids=_tokenize(tokenizer, [e.caption for e in examples]), pixel_values=_pixels(images))
        logits = out.logits_per_text  # symmetric target, so one matrix serves both directions
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        optimizer_step(optimizer, loss, _lr_at(step, recipe.clip_steps, recipe.clip_lr))
        if step % 250 == 0 or step == recipe.clip_steps - 1:
            _log(f"clip step {step:5d} loss {loss.item():.4f}", started)
    clip.eval()
    return clip


def train_vae(world: World, recipe: Recipe, started: float):
    """The tiny AutoencoderKL, trained on reconstruction with a small KL term (as SD's)."""
    import torch

    from policykit.shapes.architecture import build_vae

    torch.manual_seed(recipe.seed)
    vae = build_vae(world.image_size)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    vae.train()
    for step in range(recipe.vae_steps):
        images, _ = generate_images(world, _VAE_STREAM + 100 * recipe.seed, recipe.vae_batch,
                                    start=step * recipe.vae_batch)
        x = _pixels(images)
        # The shape covers a small part of the image; weighting its pixels up
        # makes the autoencoder spend its capacity on the fill colour, which
        # is what the world's concepts are about, not on the flat background.
        background = torch.tensor(world.background, dtype=torch.float32).view(1, 3, 1, 1) / 127.5 - 1.0
        loss = vae_loss(vae, x, background, recipe.vae_foreground_weight, recipe.vae_kl_weight)
        optimizer_step(optimizer, loss, _lr_at(step, recipe.vae_steps, recipe.vae_lr))
        if step % 100 == 0 or step == recipe.vae_steps - 1:
            _log(f"vae step {step:5d} loss {loss.item():.4f}", started)
    vae.eval()
    return vae


def _caption_table(world: World):
    """Every caption the U-Net can be trained on (and the empty one), with its row."""
    captions = [""]
    for concept in world.concepts:
        for phrase in world.phrases(concept):
            captions += [t.format(phrase.text) for t in world.templates]
    captions = list(dict.fromkeys(captions))
    return captions, {c: i for i, c in enumerate(captions)}


def train_unet(world: World, tokenizer, text_encoder, vae, recipe: Recipe, started: float):
    """The tiny U-Net (EMA weights), trained on latents of generated images."""
    import torch

    from policykit.shapes.architecture import build_training_scheduler, build_unet

    # The inputs are fixed: encode every image and every caption once.
    images, examples = generate_images(world, _UNET_STREAM + 100 * recipe.seed, recipe.unet_images)
    with torch.no_grad():
        means, stds = [], []
        for start in range(0, len(images), 256):
            dist = vae.encode(_pixels(images[start:start + 256])).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
        means, stds = torch.cat(means), torch.cat(stds)
        scaling = float(1.0 / torch.cat([means + stds * torch.randn_like(stds)]).std())
        vae.register_to_config(scaling_factor=scaling)
        captions, caption_row = _caption_table(world)
        hidden = torch.cat([text_encoder(_tokenize(tokenizer, captions[s:s + 512]))[0]
                            for s in range(0, len(captions), 512)])
    _log(f"unet inputs: {len(images)} latents (scaling {scaling:.4f}), {len(captions)} captions", started)

    torch.manual_seed(recipe.seed)
    unet = build_unet(world.image_size // 4)
    ema = build_unet(world.image_size // 4)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    scheduler = build_training_scheduler()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=recipe.unet_lr, weight_decay=0.01)
    rng = np.random.default_rng([recipe.seed, _UNET_STREAM])
    concepts = [e.concept for e in examples]
    unet.train()
    for step in range(recipe.unet_steps):
        index = torch.from_numpy(rng.integers(0, len(images), recipe.unet_batch))
        rows = [0 if rng.random() < recipe.caption_dropout else caption_row[caption_for(world, concepts[i], rng)]
                for i in index.tolist()]
        latents = (means[index] + stds[index] * torch.randn_like(stds[index])) * scaling
        loss = diffusion_loss(unet, scheduler, latents, hidden[rows])
        optimizer_step(optimizer, loss, _lr_at(step, recipe.unet_steps, recipe.unet_lr, warmup=200), unet.parameters())
        ema_update(ema, unet, step, recipe.ema_decay)
        if step % 250 == 0 or step == recipe.unet_steps - 1:
            _log(f"unet step {step:5d} loss {loss.item():.4f}", started)
    ema.eval()
    return ema


def text_encoder_from_clip(clip):
    """The CLIP text tower as a standalone ``CLIPTextModel`` (what SD calls ``text_encoder``)."""
    from transformers import CLIPTextModel

    text_encoder = CLIPTextModel(clip.config.text_config)
    # transformers 5 keeps the text tower as a CLIPTextModel inside CLIPModel: same keys.
    text_encoder.load_state_dict(clip.text_model.state_dict())
    return text_encoder.eval()


def save_world(out: Path, clip, text_encoder, tokenizer, vae, unet, recipe: Recipe) -> None:
    """Write the pipeline directory (plus ``clip/`` and the recipe) to ``out``."""
    from diffusers import StableDiffusionPipeline

    from policykit.shapes.architecture import build_sampling_scheduler
    from policykit.shapes.tokenizer import build_vocab

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=build_sampling_scheduler(), safety_checker=None,
                                   feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    pipe.save_pretrained(str(out))
    clip.save_pretrained(str(out / "clip"))
    # The slow (pure Python) CLIPTokenizer of older transformers reads these two files.
    vocab, merges = build_vocab(load_world().words())
    (out / "tokenizer" / "vocab.json").write_text(json.dumps(vocab, indent=1) + "\n", encoding="utf-8")
    (out / "tokenizer" / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    # Only what determines the weights: a rerun of the same recipe writes the same file.
    (out / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2) + "\n", encoding="utf-8")


def train(out: Path, recipe: Recipe) -> None:
    """Run the whole recipe and save the world to ``out``."""
    import os

    # Idle OpenMP workers must sleep, not spin, when other jobs share the cores.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from policykit.shapes.tokenizer import build_tokenizer

    threads_before = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        started = time.monotonic()
        world = load_world()
        tokenizer = build_tokenizer(world.words())
        clip = train_clip(world, tokenizer, recipe, started)
        text_encoder = text_encoder_from_clip(clip)
        vae = train_vae(world, recipe, started)
        unet = train_unet(world, tokenizer, text_encoder, vae, recipe, started)
        seconds = time.monotonic() - started
    finally:
        torch.set_num_threads(threads_before)
    save_world(out, clip, text_encoder, tokenizer, vae, unet, recipe)
    _log(f"saved to {out} (training took {seconds / 60:.1f} min)", started)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m policykit.shapes.train --out DIR [--unet-steps N ...]``."""
    parser = argparse.ArgumentParser(prog="python -m policykit.shapes.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to write the pipeline to")
    defaults = Recipe()
    for name, value in asdict(defaults).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args(argv)
    recipe = Recipe(**{name: getattr(args, name) for name in asdict(defaults)})
    train(args.out, recipe)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
