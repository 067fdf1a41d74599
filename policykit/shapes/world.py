"""The shapes world's vocabulary, read from ``world.toml``.

A :class:`World` knows the colours, shapes, synonyms, associated words and
caption templates of the built-in world, and what every phrase means. It is
plain data (no torch), so ``plan`` and tests can use it cheaply.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

WORLD_FILE = Path(__file__).with_name("world.toml")


@dataclass(frozen=True, order=True)
class Concept:
    """One colour-and-shape pair, the unit a caption means and a classifier reads."""

    colour: str
    shape: str

    @property
    def name(self) -> str:
        """The canonical phrase, e.g. ``"red circle"``."""
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Phrase:
    """A phrase that means a concept, and how it reaches it."""

    text: str
    concept: Concept
    kind: str  # "canonical", "synonym" (a synonym in colour or shape) or "associated"


@dataclass(frozen=True, eq=False)  # identity-hashed: one loaded world, used as a cache key
class World:
    """The whole vocabulary of the built-in world and the image settings."""

    image_size: int
    background: tuple[int, int, int]
    min_extent: int
    max_extent: int
    margin: int
    colour_jitter: int
    neutral_colour: str
    templates: tuple[str, ...]
    colour_rgb: dict[str, tuple[int, int, int]]
    colour_synonyms: dict[str, tuple[str, ...]]
    shape_synonyms: dict[str, tuple[str, ...]]
    associated: dict[str, Concept]

    @property
    def colours(self) -> tuple[str, ...]:
        """Colour names, in file order."""
        return tuple(self.colour_rgb)

    @property
    def shapes(self) -> tuple[str, ...]:
        """Shape names, in file order."""
        return tuple(self.shape_synonyms)

    @property
    def concepts(self) -> tuple[Concept, ...]:
        """Every colour x shape concept, colour-major."""
        return tuple(Concept(c, s) for c in self.colours for s in self.shapes)

    def concept(self, name: str) -> Concept:
        """The concept with canonical name ``name`` (``"red circle"``); KeyError if none."""
        for concept in self.concepts:
            if concept.name == name:
                return concept
        raise KeyError(f"{name!r} is not a concept of the shapes world")

    def phrases(self, concept: Concept) -> list[Phrase]:
        """Every phrase that means ``concept``: canonical first, then synonyms, then associated words."""
        colour_words = (concept.colour, *self.colour_synonyms[concept.colour])
        shape_words = (concept.shape, *self.shape_synonyms[concept.shape])
        found = [Phrase(concept.name, concept, "canonical")]
        for colour_word in colour_words:
            for shape_word in shape_words:
                text = f"{colour_word} {shape_word}"
                if text != concept.name:
                    found.append(Phrase(text, concept, "synonym"))
        found += [Phrase(w, concept, "associated") for w, c in self.associated.items() if c == concept]
        return found

    def meaning(self, phrase: str) -> Concept | None:
        """The concept a phrase means (``"scarlet disc"`` -> red circle), None if it means none."""
        words = phrase.lower().split()
        if len(words) == 1:
            return self.associated.get(words[0])
        if len(words) != 2:
            return None
        colour = next((c for c in self.colours if words[0] in (c, *self.colour_synonyms[c])), None)
        shape = next((s for s in self.shapes if words[1] in (s, *self.shape_synonyms[s])), None)
        if colour is None or shape is None:
            return None
        return Concept(colour, shape)

    def words(self) -> list[str]:
        """Every word a caption of this world can contain, sorted."""
        found: set[str] = set()
        for template in self.templates:
            found.update(w for w in template.replace("{}", " ").split())
        for colour in self.colours:
            found.update((colour, *self.colour_synonyms[colour]))
        for shape in self.shapes:
            found.update((shape, *self.shape_synonyms[shape]))
        found.update(self.associated)
        return sorted(found)


def _rgb(value: list[int], where: str) -> tuple[int, int, int]:
    if len(value) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in value):
        raise ValueError(f"{where}: expected three integers 0..255, got {value!r}")
    return (value[0], value[1], value[2])


@lru_cache(maxsize=None)
def load_world(path: Path = WORLD_FILE) -> World:
    """Read and check the world file (cached: the world is immutable)."""
    data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    image = data["image"]
    colour_rgb = {name: _rgb(c["rgb"], f"colours.{name}.rgb") for name, c in data["colours"].items()}
    colour_synonyms = {name: tuple(c.get("synonyms", ())) for name, c in data["colours"].items()}
    shape_synonyms = {name: tuple(s.get("synonyms", ())) for name, s in data["shapes"].items()}
    associated: dict[str, Concept] = {}
    for word, meaning in data.get("associated", {}).items():
        colour, _, shape = meaning.partition(" ")
        if colour not in colour_rgb or shape not in shape_synonyms:
            raise ValueError(f"associated.{word}: {meaning!r} is not a colour-and-shape pair of this world")
        associated[word] = Concept(colour, shape)
    world = World(
        image_size=int(image["size"]),
        background=_rgb(image["background"], "image.background"),
        min_extent=int(image["min_extent"]),
        max_extent=int(image["max_extent"]),
        margin=int(image["margin"]),
        colour_jitter=int(image["colour_jitter"]),
        neutral_colour=str(data["neutral_colour"]),
        templates=tuple(data["templates"]),
        colour_rgb=colour_rgb,
        colour_synonyms=colour_synonyms,
        shape_synonyms=shape_synonyms,
        associated=associated,
    )
    _check_unambiguous(world)
    return world


def check_one_owner(groups: list[tuple[str, tuple[str, ...]]]) -> None:
    """Raise ValueError if a word is listed under two owners (``groups``: owner and its words)."""
    seen: dict[str, str] = {}
    for owner, words in groups:
        for word in words:
            if word in seen and seen[word] != owner:
                raise ValueError(f"word {word!r} means both {seen[word]!r} and {owner!r}")
            seen[word] = owner


def _check_unambiguous(world: World) -> None:
    """Every word must have one meaning, or captions would contradict each other."""
    groups = [(c, (c, *world.colour_synonyms[c])) for c in world.colours]
    groups += [(s, (s, *world.shape_synonyms[s])) for s in world.shapes]
    groups += [(w, (w,)) for w in world.associated]
    check_one_owner(groups)
    if world.neutral_colour not in world.colour_rgb:
        raise ValueError(f"neutral_colour {world.neutral_colour!r} is not a colour of this world")
    if not all(t.count("{}") == 1 for t in world.templates):
        raise ValueError("every template must contain exactly one '{}'")
