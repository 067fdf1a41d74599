"""The pixel-truth classifier: colour and shape measured from pixels.

In the shapes world this is the ground truth the audit trusts. It reads the
foreground (pixels far from the background colour), names its colour by the
nearest palette colour and its shape by the best-matching drawn template of
the same bounding box. No learning is involved, so it cannot share a
model's blind spots.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from policykit.shapes.render import draw_shape
from policykit.shapes.world import Concept, World

#: Side of the normalised foreground mask compared against the shape templates.
_TEMPLATE_SIDE = 16
#: Below this contrast to the background (max channel difference) nothing is drawn.
MIN_CONTRAST = 40
#: Fewer foreground pixels than this: no shape.
MIN_PIXELS = 12
#: A foreground colour farther than this (RGB distance) from every palette colour has no name.
MAX_COLOUR_DISTANCE = 110.0


@dataclass(frozen=True)
class PixelReading:
    """What the pixels show: a colour and a shape, each None when unreadable."""

    colour: str | None
    shape: str | None
    foreground_pixels: int

    @property
    def concept(self) -> Concept | None:
        """The concept shown, or None unless both colour and shape were read."""
        if self.colour is None or self.shape is None:
            return None
        return Concept(self.colour, self.shape)


@lru_cache(maxsize=8)
def _shape_templates(world: World) -> dict[str, np.ndarray]:
    """Each shape drawn to fill the template square, as a 0..1 float mask."""
    side = _TEMPLATE_SIDE
    templates = {}
    for shape in world.shapes:
        drawn = draw_shape(side, shape, 0.0, 0.0, float(side), (0, 0, 0), (255, 255, 255))
        templates[shape] = 1.0 - drawn[..., 0].astype(np.float64) / 255.0
    return templates


def classify_image(world: World, image: np.ndarray) -> PixelReading:
    """Read colour and shape from one (H, W, 3) uint8 image of this world."""
    pixels = np.asarray(image, dtype=np.float64)
    difference = np.abs(pixels - np.array(world.background, dtype=np.float64)).max(axis=-1)
    contrast = np.percentile(difference, 99)
    if contrast < MIN_CONTRAST:
        return PixelReading(None, None, 0)
    # Half the shape's own contrast separates fill from background for every
    # colour alike, and ignores the soft anti-aliased or blurred rim.
    mask = difference > contrast / 2
    count = int(mask.sum())
    if count < MIN_PIXELS:
        return PixelReading(None, None, count)
    return PixelReading(_name_colour(world, pixels, difference, mask), _name_shape(world, mask), count)


def _name_colour(world: World, pixels: np.ndarray, difference: np.ndarray, mask: np.ndarray) -> str | None:
    # The core (strongest pixels) carries the fill colour; the rim is mixed with background.
    core = mask & (difference >= np.percentile(difference[mask], 50))
    fill = np.median(pixels[core], axis=0)
    names = world.colours
    distances = [float(np.linalg.norm(fill - np.array(world.colour_rgb[n]))) for n in names]
    best = int(np.argmin(distances))
    return names[best] if distances[best] <= MAX_COLOUR_DISTANCE else None


def _name_shape(world: World, mask: np.ndarray) -> str | None:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    crop = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.float32)
    normalised = np.asarray(Image.fromarray(crop * 255.0).resize((_TEMPLATE_SIDE, _TEMPLATE_SIDE), Image.Resampling.BILINEAR)) / 255.0
    scores = {shape: float(np.abs(normalised - template).mean()) for shape, template in _shape_templates(world).items()}
    return min(scores, key=scores.get)


def classify_images(world: World, images: np.ndarray) -> list[PixelReading]:
    """:func:`classify_image` over a (N, H, W, 3) uint8 batch."""
    return [classify_image(world, image) for image in images]
