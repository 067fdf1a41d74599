"""builtin:shapes: policykit's own tiny text-to-image world.

Coloured shapes on a plain background, captions with synonyms and associated
words, a tiny CLIP, a tiny latent diffusion model saved as an ordinary
diffusers ``StableDiffusionPipeline``, and a pixel-truth classifier. See
docs/builtin-shapes.md.

- ``world``: the vocabulary (``world.toml``) and what each phrase means;
- ``render``: the deterministic data generator;
- ``classify``: the pixel-truth classifier;
- ``tokenizer`` / ``architecture`` / ``train``: the training recipe
  (``python -m policykit.shapes.train --out DIR``);
- ``sampling``: load the shipped pipeline and draw images;
- ``quality``: the accuracy and text-geometry measurements.

Importing this package is light: torch loads only when a model is built or loaded.
"""

from policykit.shapes.world import Concept, World, load_world

__all__ = ["Concept", "World", "load_world"]
