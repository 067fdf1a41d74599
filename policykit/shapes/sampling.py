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


def sample_images(pipe, prompts: list[str], seed: int, steps: int = SAMPLING_STEPS,
                  guidance_scale: float = GUIDANCE_SCALE, batch_size: int = 16) -> np.ndarray:
    """One image per prompt, as (N, H, W, 3) uint8; batch ``b`` uses generator seed ``seed + b``."""
    import torch

    chunks = []
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        batch = prompts[start:start + batch_size]
        generator = torch.Generator("cpu").manual_seed(seed + b)
        with torch.no_grad():
            out = pipe(batch, num_inference_steps=steps, guidance_scale=guidance_scale,
                       generator=generator, output_type="np")
        chunks.append(np.clip(np.round(out.images * 255.0), 0, 255).astype(np.uint8))
    return np.concatenate(chunks)


def clip_pixel_values(images: np.ndarray):
    """uint8 (N, H, W, 3) images as the tiny CLIP's vision input: (N, 3, H, W) float in [-1, 1]."""
    import torch

    return torch.from_numpy(np.asarray(images, dtype=np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()
