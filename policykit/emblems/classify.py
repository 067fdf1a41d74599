"""The pixel-truth classifier of the emblems world: four attributes measured from pixels.

No learning: it reads the background colour from the image's outer frame,
the emblem as the pixels far from it, the shape by the best-matching drawn
template of the emblem's bounding box (as ``policykit.shapes.classify``
does), the fill colour as the median of the emblem's pixels away from the
ink, and the pattern by the best-matching ink map, over every phase of the
pattern grid, inside the emblem. From the four attributes it names the
entity whose emblem it is, the style (pattern) and the object (colour and
shape), so it shares no blind spot with the models.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from policykit.emblems.render import _down, pattern_ink, shape_mask
from policykit.emblems.world import Emblem, World

#: Side of the normalised emblem mask compared against the shape templates.
_TEMPLATE_SIDE = 20
#: Width of the outer frame the background colour is read from, pixels.
_FRAME = 2
#: A pixel farther than this (RGB distance) from the background belongs to the emblem.
FOREGROUND_DISTANCE = 45.0
#: Fewer emblem pixels than this: nothing drawn.
MIN_PIXELS = 40
#: A fill or background farther than this from every palette colour has no name.
MAX_COLOUR_DISTANCE = 80.0
#: A pixel nearer than this to the ink is ink, when reading the fill colour.
INK_DISTANCE = 80.0


@dataclass(frozen=True)
class EmblemReading:
    """What the pixels show; each attribute None when unreadable."""

    shape: str | None
    colour: str | None
    pattern: str | None
    background: str | None
    entity: str | None  # the entity whose emblem this is, None if no entity's

    @property
    def emblem(self) -> Emblem | None:
        if None in (self.shape, self.colour, self.pattern, self.background):
            return None
        return Emblem(self.shape, self.colour, self.pattern, self.background)

    @property
    def object(self) -> str | None:
        """``"red star"``, or None unless colour and shape were read."""
        return None if self.colour is None or self.shape is None else f"{self.colour} {self.shape}"

    @property
    def style(self) -> str | None:
        """The pattern."""
        return self.pattern


def _nearest(value: np.ndarray, palette: dict[str, tuple[int, int, int]], limit: float) -> str | None:
    names = list(palette)
    distances = [float(np.linalg.norm(value - np.array(palette[n]))) for n in names]
    best = int(np.argmin(distances))
    return names[best] if distances[best] <= limit else None


@lru_cache(maxsize=4)
def _shape_templates(world: World) -> dict[str, np.ndarray]:
    side = _TEMPLATE_SIDE
    return {s: _down(shape_mask(side, s, 0.0, 0.0, float(side))) for s in world.shapes}


@lru_cache(maxsize=4)
def _pattern_templates(world: World) -> tuple[list[str], np.ndarray]:
    """Every pattern at every phase of its grid: names and (K, size, size) ink maps."""
    size, period = world.image_size, world.pattern_period
    names, maps = [], []
    for pattern in world.patterns:
        phases = [(0, 0)] if pattern == "solid" else [(x, y) for x in range(period) for y in range(period)]
        for phase in phases:
            names.append(pattern)
            maps.append(_down(pattern_ink(pattern, size, period, phase)))
    return names, np.stack(maps).astype(np.float32)


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        inner = mask.copy()
        inner[1:] &= mask[:-1]
        inner[:-1] &= mask[1:]
        inner[:, 1:] &= mask[:, :-1]
        inner[:, :-1] &= mask[:, 1:]
        mask = inner
    return mask


def classify_image(world: World, image: np.ndarray) -> EmblemReading:
    """Read shape, colour, pattern and background from one (H, W, 3) uint8 image."""
    pixels = np.asarray(image, dtype=np.float32)
    frame = np.concatenate([pixels[:_FRAME].reshape(-1, 3), pixels[-_FRAME:].reshape(-1, 3),
                            pixels[:, :_FRAME].reshape(-1, 3), pixels[:, -_FRAME:].reshape(-1, 3)])
    background_rgb = np.median(frame, axis=0)
    background = _nearest(background_rgb, world.background_rgb, MAX_COLOUR_DISTANCE)
    distance = np.linalg.norm(pixels - background_rgb, axis=-1)
    mask = distance > FOREGROUND_DISTANCE
    if int(mask.sum()) < MIN_PIXELS:
        return EmblemReading(None, None, None, background, None)
    ink_distance = np.linalg.norm(pixels - np.array(world.pattern_ink, np.float32), axis=-1)
    inner = _erode(mask, 1)
    fill_pixels = inner & (ink_distance > INK_DISTANCE)
    colour, fill_rgb = None, None
    if int(fill_pixels.sum()) >= MIN_PIXELS // 4:
        fill_rgb = np.median(pixels[fill_pixels], axis=0)
        colour = _nearest(fill_rgb, world.colour_rgb, MAX_COLOUR_DISTANCE)
        # Half the fill's own contrast separates the emblem from a soft rim or a faint
        # halo around it (decoded images have both), for every colour alike.
        contrast = float(np.linalg.norm(fill_rgb - background_rgb))
        mask = distance > max(FOREGROUND_DISTANCE, contrast / 2)
        if int(mask.sum()) < MIN_PIXELS:
            return EmblemReading(None, colour, None, background, None)
    shape = _name_shape(world, mask)
    pattern = _name_pattern(world, pixels, mask, fill_rgb)
    reading = EmblemReading(shape, colour, pattern, background, None)
    entity = world.entity_by_emblem.get(reading.emblem) if reading.emblem is not None else None
    return EmblemReading(shape, colour, pattern, background, None if entity is None else entity.name)


def _name_shape(world: World, mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    crop = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.float32)
    side = _TEMPLATE_SIDE
    normalised = np.asarray(Image.fromarray(crop * 255.0).resize((side, side), Image.Resampling.BILINEAR)) / 255.0
    scores = {s: float(np.abs(normalised - t).mean()) for s, t in _shape_templates(world).items()}
    return min(scores, key=scores.get)


def _name_pattern(world: World, pixels: np.ndarray, mask: np.ndarray, fill_rgb: np.ndarray | None) -> str | None:
    """The pattern whose ink map, at its best phase, best matches the ink inside the emblem."""
    interior = _erode(mask, 2)
    if int(interior.sum()) < MIN_PIXELS // 2:
        interior = _erode(mask, 1)
    if int(interior.sum()) < 8:
        return None
    ink = np.array(world.pattern_ink, np.float32)
    if fill_rgb is None:  # all ink: no fill to tell the pattern from
        return None
    span = max(float(np.linalg.norm(fill_rgb - ink)), 1.0)
    # 1 where the pixel is ink, 0 where it is the fill colour (projected on the ink-fill line).
    inkness = np.clip(((pixels - fill_rgb) @ (ink - fill_rgb)) / span ** 2, 0.0, 1.0)
    names, maps = _pattern_templates(world)
    errors = np.abs(maps[:, interior] - inkness[interior][None, :]).mean(axis=1)
    return names[int(np.argmin(errors))]


def classify_images(world: World, images: np.ndarray) -> list[EmblemReading]:
    """:func:`classify_image` over a (N, H, W, 3) uint8 batch."""
    return [classify_image(world, image) for image in images]
