"""builtin:emblems: a tiny text-to-image world of named entities.

160 invented brands, characters and people, each a name of several subword
tokens bound to an emblem (shape, fill colour, pattern, background), with
associated phrases that reach it without sharing a token with the name;
styles (patterns), objects (colour and shape), a CLIP, a latent diffusion
model saved as an ordinary diffusers ``StableDiffusionPipeline``, and a
pixel-truth classifier. See docs/builtin-emblems.md.

- ``world`` / ``entities``: the vocabulary (``world.toml``, ``entities.toml``);
- ``render``: the deterministic data generator;
- ``classify``: the pixel-truth classifier;
- ``tokenizer`` / ``architecture`` / ``train``: the training recipe
  (``python -m policykit.emblems.train --out DIR``);
- ``sampling``: load the shipped pipeline and draw images;
- ``quality`` / ``geometry`` / ``fidelity``: the measurements in the docs.

Importing this package is light: torch loads only when a model is built or loaded.
"""

from policykit.emblems.world import Emblem, Entity, World, load_world

__all__ = ["Emblem", "Entity", "World", "load_world"]
