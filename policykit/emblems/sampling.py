"""Loading the emblems pipeline and drawing images from it.

The same calls as builtin:shapes (``policykit.shapes.sampling``), pointed at
``policykit/emblems/model``: an ordinary ``StableDiffusionPipeline``
directory, plus the full CLIP under ``clip/``.
"""

from __future__ import annotations

from pathlib import Path

from policykit.shapes import sampling as _shapes_sampling
from policykit.shapes.sampling import GUIDANCE_SCALE, SAMPLING_STEPS, clip_pixel_values, sample_images

__all__ = ["MODEL_DIR", "GUIDANCE_SCALE", "SAMPLING_STEPS", "load_pipeline", "load_clip", "sample_images",
           "clip_pixel_values", "model_available"]

#: The trained world, shipped inside the package.
MODEL_DIR = Path(__file__).with_name("model")
#: The sha256 pin of the shipped weights (:func:`policykit.models.pin.model_sha256` over its files): what
#: ``python -m policykit.emblems.train --out policykit/emblems/model --threads 2`` wrote
#: (docs/builtin-emblems.md); policies/brand-emblems.yaml pins it too.
MODEL_SHA256 = "271d97839728bd59efe926d0e002638b0f2c28f93e1d886696226470b26b032a"


def model_available(path: str | Path = MODEL_DIR) -> bool:
    """Whether a trained pipeline is at ``path``."""
    return (Path(path) / "model_index.json").is_file()


def load_pipeline(path: str | Path = MODEL_DIR):
    """The ``StableDiffusionPipeline`` stored at ``path`` (offline, CPU, float32, no progress bars)."""
    from policykit.models.loading import load_pipeline as load

    return load(path)


def load_clip(path: str | Path = MODEL_DIR):
    """The full ``CLIPModel`` (text and vision towers) stored beside the pipeline."""
    return _shapes_sampling.load_clip(path)
