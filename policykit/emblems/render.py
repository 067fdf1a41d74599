"""The deterministic data generator: one patterned emblem on a coloured background.

Example ``i`` of a seed is always the same image and caption: its random
numbers come from ``numpy.random.default_rng([seed, i])``. Even examples show
the entities' emblems in turn, odd ones a random emblem, so entities and
free combinations of shape, colour, pattern and background are both learned.

Patterns are drawn in the ink colour on a grid of ``pattern_period`` pixels
(stripes and checker cells half a period wide, one dot per period) aligned
to the image, so a 4x down-sampling VAE sees whole pattern cells per latent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from policykit.emblems.world import Emblem, Entity, Meaning, World
from policykit.shapes.render import jittered, random_placement, shape_outline

#: Drawn this many times larger, then box-filtered down: smooth edges and dots.
_SUPERSAMPLE = 4
#: Inner radius of the star, as a share of its outer radius.
STAR_INNER = 0.5
#: Dot radius, as a share of the pattern period.
DOT_RADIUS = 0.22


def emblem_outline(shape: str, x0: float, y0: float, extent: float) -> list[list[tuple[float, float]]]:
    """Polygons (for circles, the bounding box) that draw ``shape`` filling the square at (x0, y0)."""
    x1, y1, mid = x0 + extent, y0 + extent, extent / 2
    if shape == "diamond":
        return [[(x0 + mid, y0), (x1, y0 + mid), (x0 + mid, y1), (x0, y0 + mid)]]
    if shape == "star":
        points = []
        for k in range(10):
            radius = 1.0 if k % 2 == 0 else STAR_INNER
            angle = math.pi * k / 5 - math.pi / 2
            points.append((radius * math.cos(angle), radius * math.sin(angle)))
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        # Stretched to fill the square, as every shape of this world does.
        return [[(x0 + (x - min(xs)) / (max(xs) - min(xs)) * extent, y0 + (y - min(ys)) / (max(ys) - min(ys)) * extent)
                 for x, y in points]]
    return shape_outline(shape, x0, y0, extent)


def shape_mask(size: int, shape: str, x0: float, y0: float, extent: float, supersample: int = _SUPERSAMPLE) -> np.ndarray:
    """Coverage (0..1 float, (size*supersample)^2) of one shape."""
    s = supersample
    big = Image.new("L", (size * s, size * s), 0)
    pen = ImageDraw.Draw(big)
    for outline in emblem_outline(shape, x0 * s, y0 * s, extent * s):
        if shape == "circle":
            pen.ellipse([outline[0], (outline[1][0] - 1, outline[1][1] - 1)], fill=255)
        else:
            pen.polygon(outline, fill=255)
    return np.asarray(big, dtype=np.float32) / 255.0


def pattern_ink(pattern: str, size: int, period: int, offset: tuple[int, int] = (0, 0),
                supersample: int = _SUPERSAMPLE) -> np.ndarray:
    """Where the pattern puts ink: 0/1 float map at ``supersample`` resolution ((size*supersample)^2)."""
    n = size * supersample
    coords = (np.arange(n, dtype=np.float32) + 0.5) / supersample
    u = (coords[None, :] + offset[0]) % period
    v = (coords[:, None] + offset[1]) % period
    half = period / 2
    if pattern == "solid":
        return np.zeros((n, n), np.float32)
    if pattern == "striped":
        return np.broadcast_to((v < half), (n, n)).astype(np.float32)
    if pattern == "checkered":
        return ((u < half) ^ (v < half)).astype(np.float32)
    if pattern == "dotted":
        return (((u - half / 2) ** 2 + (v - half / 2) ** 2) < (DOT_RADIUS * period) ** 2).astype(np.float32)
    raise ValueError(f"no pattern {pattern!r}")


def _down(big: np.ndarray, supersample: int = _SUPERSAMPLE) -> np.ndarray:
    n = big.shape[0] // supersample
    return big.reshape(n, supersample, n, supersample, *big.shape[2:]).mean(axis=(1, 3))


@lru_cache(maxsize=16)
def _ink_cached(pattern: str, size: int, period: int) -> np.ndarray:
    return pattern_ink(pattern, size, period)


def draw_emblem(world: World, emblem: Emblem, x0: float, y0: float, extent: float,
                fill: tuple[int, int, int], background: tuple[int, int, int]) -> np.ndarray:
    """An anti-aliased (size, size, 3) uint8 image of one emblem."""
    size = world.image_size
    coverage = shape_mask(size, emblem.shape, x0, y0, extent)[..., None]
    ink = _ink_cached(emblem.pattern, size, world.pattern_period)[..., None]
    colour = ink * np.array(world.pattern_ink, np.float32) + (1 - ink) * np.array(fill, np.float32)
    big = coverage * colour + (1 - coverage) * np.array(background, np.float32)
    return np.clip(np.round(_down(big)), 0, 255).astype(np.uint8)


def render_emblem(world: World, emblem: Emblem, rng: np.random.Generator) -> np.ndarray:
    """A random rendering of ``emblem``: jittered position, size, fill and background colour."""
    extent, x0, y0 = random_placement(world, rng)
    fill = jittered(world.colour_rgb[emblem.colour], world.colour_jitter, rng)
    background = jittered(world.background_rgb[emblem.background], world.background_jitter, rng)
    return draw_emblem(world, emblem, x0, y0, extent, fill, background)


@dataclass(frozen=True)
class Example:
    """One generated example: the image, its emblem, and the entity when it shows one on purpose."""

    image: np.ndarray  # (size, size, 3) uint8
    emblem: Emblem
    entity: Entity | None


def _pick(words: tuple[str, ...], rng: np.random.Generator, canonical_share: float = 0.5) -> str:
    """The first word (the canonical one) half of the time, else one of the others."""
    if len(words) == 1 or rng.random() < canonical_share:
        return words[0]
    return words[1 + int(rng.integers(len(words) - 1))]


def caption_for(world: World, example: Example, rng: np.random.Generator,
                name_share: float = 0.5, associated_share: float = 0.35) -> tuple[str, Meaning]:
    """A random caption for an example, and what it means.

    Entity examples: the name (``name_share``), an associated phrase
    (``associated_share``) or else a full description. Other examples: an
    object phrase (35%, ``a red star``), a style phrase (40%, ``a red star in
    zebra style``) or a full phrase (25%, ``a striped red star on cream``).
    Synonyms take half of each slot.
    """
    e = example.emblem
    cw, sw = _pick(world.colour_words(e.colour), rng), _pick(world.shape_words(e.shape), rng)
    draw = rng.random()
    if example.entity is not None and draw < name_share + associated_share:
        entity = example.entity
        meaning = Meaning(e.shape, e.colour, e.pattern, e.background, entity.name)
        if draw < name_share:
            phrase = entity.name
        else:
            phrase = entity.associated[int(rng.integers(len(entity.associated)))]
    elif example.entity is None and draw < 0.35:
        phrase, meaning = world.object_phrase(cw, sw), Meaning(e.shape, e.colour)
    elif example.entity is None and draw < 0.75:
        options = world.style_phrases(e.pattern, cw, sw)
        phrase, meaning = options[int(rng.integers(len(options)))], Meaning(e.shape, e.colour, e.pattern)
    else:
        options = world.full_phrases(e, cw, sw, _pick(world.background_words(e.background), rng))
        phrase, meaning = options[int(rng.integers(len(options)))], Meaning(e.shape, e.colour, e.pattern, e.background)
    template = world.templates[int(rng.integers(len(world.templates)))]
    return template.format(phrase), meaning


def random_emblem(world: World, rng: np.random.Generator) -> Emblem:
    """A uniformly random combination of the four attributes."""
    return Emblem(*(world.values(a)[int(rng.integers(len(world.values(a))))]
                    for a in ("shape", "colour", "pattern", "background")))


def generate_example(world: World, seed: int, index: int) -> Example:
    """Example ``index`` of the stream ``seed``: even ones cycle through the entities, odd ones are random."""
    rng = np.random.default_rng([seed, index])
    if index % 2 == 0:
        entity = world.entities[(index // 2) % len(world.entities)]
        emblem = entity.emblem
    else:
        entity, emblem = None, random_emblem(world, rng)
    return Example(render_emblem(world, emblem, rng), emblem, entity)


def generate_images(world: World, seed: int, count: int, start: int = 0) -> tuple[np.ndarray, list[Example]]:
    """Examples ``start .. start+count-1`` and their images stacked as (count, size, size, 3) uint8."""
    examples = [generate_example(world, seed, i) for i in range(start, start + count)]
    return np.stack([e.image for e in examples]), examples
