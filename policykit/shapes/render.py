"""The deterministic data generator: one coloured shape on a plain background.

Example ``i`` of a seed is always the same image and caption: its random
numbers come from ``numpy.random.default_rng([seed, i])``, so any subset can be
regenerated, in any order, on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from policykit.shapes.world import Concept, World

#: Shapes are drawn this many times larger, then box-filtered down: smooth edges.
_SUPERSAMPLE = 4
#: Arm width of the cross, as a share of its extent.
CROSS_ARM = 0.36


@dataclass(frozen=True)
class Example:
    """One generated training example."""

    image: np.ndarray  # (size, size, 3) uint8
    concept: Concept
    caption: str


def shape_outline(shape: str, x0: float, y0: float, extent: float) -> list[list[tuple[float, float]]]:
    """Polygons (or for circles, the bounding box) that draw ``shape`` in the square at (x0, y0)."""
    x1, y1 = x0 + extent, y0 + extent
    if shape == "circle":
        return [[(x0, y0), (x1, y1)]]
    if shape == "square":
        return [[(x0, y0), (x1, y0), (x1, y1), (x0, y1)]]
    if shape == "triangle":
        return [[(x0 + extent / 2, y0), (x1, y1), (x0, y1)]]
    if shape == "cross":
        lo, hi = 0.5 - CROSS_ARM / 2, 0.5 + CROSS_ARM / 2
        vertical = [(x0 + lo * extent, y0), (x0 + hi * extent, y0), (x0 + hi * extent, y1), (x0 + lo * extent, y1)]
        horizontal = [(x0, y0 + lo * extent), (x1, y0 + lo * extent), (x1, y0 + hi * extent), (x0, y0 + hi * extent)]
        return [vertical, horizontal]
    raise ValueError(f"no geometry for shape {shape!r}")


def draw_shape(size: int, shape: str, x0: float, y0: float, extent: float,
               fill: tuple[int, int, int], background: tuple[int, int, int]) -> np.ndarray:
    """An anti-aliased (size, size, 3) uint8 image of one filled shape."""
    big = Image.new("RGB", (size * _SUPERSAMPLE, size * _SUPERSAMPLE), background)
    pen = ImageDraw.Draw(big)
    s = _SUPERSAMPLE
    for outline in shape_outline(shape, x0 * s, y0 * s, extent * s):
        if shape == "circle":
            pen.ellipse([outline[0], (outline[1][0] - 1, outline[1][1] - 1)], fill=fill)
        else:
            pen.polygon(outline, fill=fill)
    return np.asarray(big.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def random_placement(world, rng: np.random.Generator) -> tuple[float, float, float]:
    """A random bounding-box side and top-left corner inside the world's margin: ``(extent, x0, y0)``."""
    size = world.image_size
    extent = rng.uniform(world.min_extent, world.max_extent)
    x0 = rng.uniform(world.margin, size - world.margin - extent)
    y0 = rng.uniform(world.margin, size - world.margin - extent)
    return extent, x0, y0


def jittered(rgb: tuple[int, int, int], amount: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """``rgb`` with a uniform per-channel jitter of +-``amount``, clipped to 0..255."""
    jitter = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(v) for v in np.clip(np.array(rgb) + jitter, 0, 255))


def render_concept(world: World, concept: Concept, rng: np.random.Generator) -> np.ndarray:
    """A random rendering of ``concept``: jittered position, size and fill colour."""
    extent, x0, y0 = random_placement(world, rng)
    fill = jittered(world.colour_rgb[concept.colour], world.colour_jitter, rng)
    return draw_shape(world.image_size, concept.shape, x0, y0, extent, fill, world.background)


def caption_for(world: World, concept: Concept, rng: np.random.Generator,
                synonym_share: float = 0.4, associated_share: float = 0.2) -> str:
    """A random caption meaning ``concept``.

    The canonical phrase is the most common; synonym phrases and associated
    words take the given shares (associated words only where the concept has some).
    """
    phrases = world.phrases(concept)
    synonyms = [p.text for p in phrases if p.kind == "synonym"]
    associated = [p.text for p in phrases if p.kind == "associated"]
    draw = rng.random()
    if associated and draw < associated_share:
        phrase = associated[rng.integers(len(associated))]
    elif synonyms and draw < associated_share + synonym_share:
        phrase = synonyms[rng.integers(len(synonyms))]
    else:
        phrase = concept.name
    template = world.templates[rng.integers(len(world.templates))]
    return template.format(phrase)


def generate_example(world: World, seed: int, index: int) -> Example:
    """Example ``index`` of the stream ``seed``: concepts cycle, everything else is drawn."""
    rng = np.random.default_rng([seed, index])
    concepts = world.concepts
    concept = concepts[index % len(concepts)]
    image = render_concept(world, concept, rng)
    return Example(image=image, concept=concept, caption=caption_for(world, concept, rng))


def generate_images(world: World, seed: int, count: int, start: int = 0) -> tuple[np.ndarray, list[Example]]:
    """Examples ``start .. start+count-1`` and their images stacked as (count, size, size, 3) uint8."""
    examples = [generate_example(world, seed, i) for i in range(start, start + count)]
    return np.stack([e.image for e in examples]), examples
