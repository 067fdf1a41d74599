"""Loading the shapes pipeline and drawing images from it.

The world loads with :func:`policykit.models.loading.load_pipeline`, the call
that loads a real Stable Diffusion directory; ``sample_images`` draws seeded
batches as uint8 arrays the pixel-truth classifier reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: The trained world, shipped inside the package.
MODEL_DIR = Path(__file__).with_name("model")
#: Sampling defaults used by the quality tests, the docs table and the benchmark.
SAMPLING_STEPS = 25
GUIDANCE_SCALE = 4.0


def load_clip(path: str | Path = MODEL_DIR):
    """The full tiny ``CLIPModel`` (text and vision towers) stored beside the pipeline."""
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(str(Path(path) / "clip"), local_files_only=True)


def pipeline_fingerprint(pipe) -> str:
    """sha256 of everything in ``pipe`` that decides an image: the weights of its text encoder, U-Net
    (an applied edit or LoRA included) and VAE, its tokenizer's vocabulary and merges, its scheduler.

    Taken from the loaded modules, not the files, so an edit applied in memory changes it.
    """
    from policykit.hashing import content_id, tensors_sha256

    weights = tensors_sha256((f"{part}.{name}", tensor) for part in ("text_encoder", "unet", "vae")
                             for name, tensor in getattr(pipe, part).state_dict().items())
    tokenizer = pipe.tokenizer
    merges = sorted([" ".join(pair), rank] for pair, rank in getattr(tokenizer, "bpe_ranks", {}).items())
    # repr: scheduler configs hold -inf (lambda_min_clipped), which JSON cannot spell
    scheduler = sorted([key, repr(value)] for key, value in pipe.scheduler.config.items())
    return content_id({"weights": weights, "vocab": tokenizer.get_vocab(), "merges": merges,
                       "scheduler": [type(pipe.scheduler).__name__, scheduler]})


def sample_images(pipe, prompts: list[str], seed: int, steps: int = SAMPLING_STEPS,
                  guidance_scale: float = GUIDANCE_SCALE, batch_size: int = 16,
                  cache_dir: str | Path | None = None) -> np.ndarray:
    """One image per prompt, as (N, H, W, 3) uint8; batch ``b`` uses generator seed ``seed + b``.

    With ``cache_dir``, each batch's images are kept there under a key of everything that decides
    them (:func:`pipeline_fingerprint`, the batch's prompts, its seed, the steps, the guidance, the
    torch version and thread count), and a batch already there is read instead of sampled: a long
    measurement stopped part-way picks up where it stopped, and can never read another model's images.
    """
    import os

    import torch

    from policykit.hashing import content_id

    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        fingerprint = pipeline_fingerprint(pipe)
    chunks = []
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        batch = prompts[start:start + batch_size]
        path = None
        if cache is not None:
            key = content_id([fingerprint, batch, seed + b, steps, guidance_scale, torch.__version__,
                              torch.get_num_threads()])
            path = cache / f"{key}.npy"
            try:
                chunks.append(np.load(path, allow_pickle=False))
                continue
            except (OSError, ValueError):
                pass  # not there yet, or unreadable: sample it again
        generator = torch.Generator("cpu").manual_seed(seed + b)
        with torch.no_grad():
            out = pipe(batch, num_inference_steps=steps, guidance_scale=guidance_scale,
                       generator=generator, output_type="np")
        chunks.append(np.clip(np.round(out.images * 255.0), 0, 255).astype(np.uint8))
        if path is not None:
            partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.npy")
            np.save(partial, chunks[-1], allow_pickle=False)
            os.replace(partial, path)  # a stop mid-write leaves no half file under the key
    return np.concatenate(chunks)


def clip_pixel_values(images: np.ndarray):
    """uint8 (N, H, W, 3) images as the tiny CLIP's vision input: (N, 3, H, W) float in [-1, 1]."""
    import torch

    return torch.from_numpy(np.asarray(images, dtype=np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()
