"""The emblems world's vocabulary, read from ``world.toml`` and ``entities.toml``.

A :class:`World` knows the shapes, colours, patterns, backgrounds, their
synonyms, the named entities with their emblems and associated phrases, and
the caption templates; :meth:`World.meaning` says what any phrase means. It is
plain data (no torch), so tests and tools can use it cheaply.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

from policykit.shapes.world import _rgb, check_one_owner

WORLD_FILE = Path(__file__).with_name("world.toml")
ENTITIES_FILE = Path(__file__).with_name("entities.toml")
#: The four attributes of an emblem, in order.
ATTRIBUTES = ("shape", "colour", "pattern", "background")


@dataclass(frozen=True, order=True)
class Emblem:
    """One shape, filled with one colour in one pattern, on one background colour."""

    shape: str
    colour: str
    pattern: str
    background: str

    @property
    def description(self) -> str:
        """The canonical full phrase, e.g. ``"a striped red star on cream"``."""
        return f"a {self.pattern} {self.colour} {self.shape} on {self.background}"


@dataclass(frozen=True)
class Entity:
    """A named entity: an invented name bound to one emblem, and its associated phrases."""

    name: str
    emblem: Emblem
    associated: tuple[str, ...]


@dataclass(frozen=True)
class Meaning:
    """What a phrase asks for: some attributes (None = any) and, for names and associated phrases, the entity."""

    shape: str | None = None
    colour: str | None = None
    pattern: str | None = None
    background: str | None = None
    entity: str | None = None

    def attributes(self) -> dict[str, str]:
        """The attributes this meaning fixes."""
        return {a: getattr(self, a) for a in ATTRIBUTES if getattr(self, a) is not None}

    def matches(self, emblem: Emblem) -> bool:
        """Whether ``emblem`` shows what this meaning asks for."""
        return all(getattr(emblem, a) == v for a, v in self.attributes().items())


@dataclass(frozen=True)
class Phrase:
    """A phrase of the world, what it means and how (its kind)."""

    text: str
    meaning: Meaning
    # "name", "associated" (entities); "object" (colour + shape), "style" (object + pattern),
    # "full" (object + pattern + background)
    kind: str


@dataclass(frozen=True, eq=False)  # identity-hashed: one loaded world, used as a cache key
class World:
    """The whole vocabulary of the emblems world and the image settings."""

    image_size: int
    min_extent: int
    max_extent: int
    margin: int
    colour_jitter: int
    background_jitter: int
    pattern_period: int
    pattern_ink: tuple[int, int, int]
    neutral_colour: str
    neutral_pattern: str
    templates: tuple[str, ...]
    colour_rgb: dict[str, tuple[int, int, int]]
    colour_synonyms: dict[str, tuple[str, ...]]
    shape_synonyms: dict[str, tuple[str, ...]]
    pattern_adjectives: dict[str, tuple[str, ...]]
    pattern_phrases: dict[str, tuple[str, ...]]
    background_rgb: dict[str, tuple[int, int, int]]
    background_synonyms: dict[str, tuple[str, ...]]
    entities: tuple[Entity, ...]
    syllables: tuple[str, ...]
    raw: dict

    @property
    def colours(self) -> tuple[str, ...]:
        return tuple(self.colour_rgb)

    @property
    def shapes(self) -> tuple[str, ...]:
        return tuple(self.shape_synonyms)

    @property
    def patterns(self) -> tuple[str, ...]:
        return tuple(self.pattern_adjectives)

    @property
    def backgrounds(self) -> tuple[str, ...]:
        return tuple(self.background_rgb)

    def values(self, attribute: str) -> tuple[str, ...]:
        """The values of one of :data:`ATTRIBUTES`."""
        return {"shape": self.shapes, "colour": self.colours, "pattern": self.patterns,
                "background": self.backgrounds}[attribute]

    def entity(self, name: str) -> Entity:
        """The entity called ``name``; KeyError if none."""
        found = self._entity_by_name.get(name)
        if found is None:
            raise KeyError(f"{name!r} is not an entity of the emblems world")
        return found

    @cached_property
    def _entity_by_name(self) -> dict[str, Entity]:
        return {e.name: e for e in self.entities}

    @cached_property
    def entity_by_emblem(self) -> dict[Emblem, Entity]:
        """The entity each entity emblem belongs to (emblems are distinct)."""
        return {e.emblem: e for e in self.entities}

    # -- phrases ---------------------------------------------------------
    def colour_words(self, colour: str) -> tuple[str, ...]:
        return (colour, *self.colour_synonyms[colour])

    def shape_words(self, shape: str) -> tuple[str, ...]:
        return (shape, *self.shape_synonyms[shape])

    def background_words(self, background: str) -> tuple[str, ...]:
        return (background, *self.background_synonyms[background])

    def object_phrase(self, colour_word: str, shape_word: str) -> str:
        return f"a {colour_word} {shape_word}"

    def style_phrases(self, pattern: str, colour_word: str, shape_word: str) -> list[str]:
        """Every way to say a patterned object: adjective first or a phrase after it."""
        found = [f"a {adj} {colour_word} {shape_word}" for adj in self.pattern_adjectives[pattern]]
        found += [f"a {colour_word} {shape_word} {p}" for p in self.pattern_phrases[pattern]]
        return found

    def full_phrases(self, emblem: Emblem, colour_word: str, shape_word: str, background_word: str) -> list[str]:
        """Patterned object on a background: ``"a striped red star on cream"``, ``"... in stripes on a cream background"``."""
        found = [f"a {adj} {colour_word} {shape_word} on {background_word}" for adj in self.pattern_adjectives[emblem.pattern]]
        found += [f"a {colour_word} {shape_word} {p} on a {background_word} background"
                  for p in self.pattern_phrases[emblem.pattern]]
        return found

    @cached_property
    def phrase_table(self) -> dict[str, Phrase]:
        """Every phrase of the world (names, associated, object, style and full phrases) by text."""
        table: dict[str, Phrase] = {}

        def add(text: str, meaning: Meaning, kind: str) -> None:
            if text in table and table[text].meaning != meaning:
                raise ValueError(f"phrase {text!r} means both {table[text].meaning} and {meaning}")
            table[text] = Phrase(text, meaning, kind)

        for e in self.entities:
            m = Meaning(**{a: getattr(e.emblem, a) for a in ATTRIBUTES}, entity=e.name)
            add(e.name, m, "name")
            for text in e.associated:
                add(text, m, "associated")
        for colour in self.colours:
            for shape in self.shapes:
                for cw in self.colour_words(colour):
                    for sw in self.shape_words(shape):
                        add(self.object_phrase(cw, sw), Meaning(shape, colour), "object")
                        for pattern in self.patterns:
                            for text in self.style_phrases(pattern, cw, sw):
                                add(text, Meaning(shape, colour, pattern), "style")
                            for background in self.backgrounds:
                                emblem = Emblem(shape, colour, pattern, background)
                                for bw in self.background_words(background):
                                    for text in self.full_phrases(emblem, cw, sw, bw):
                                        add(text, Meaning(shape, colour, pattern, background), "full")
        return table

    def meaning(self, phrase: str) -> Meaning | None:
        """What a phrase means (``"a scarlet disc in zebra style"`` -> red striped circle), None if nothing.

        Besides the phrases of :attr:`phrase_table`, a style said alone (``"striped"``, ``"in zebra style"``)
        means its pattern on any object, a shape word alone (``"pentagram"``) that shape in any colour and
        pattern, and a colour word alone (``"scarlet"``) that colour: what a policy erasing a style, a shape
        or a colour everywhere names, and what the audit then judges by that one attribute.
        """
        key = " ".join(phrase.lower().split())
        found = self.phrase_table.get(key)
        return found.meaning if found is not None else self._attribute_words.get(key)

    @cached_property
    def _attribute_words(self) -> dict[str, Meaning]:
        """One attribute said alone: pattern adjectives and phrases, shape words, colour words."""
        words: dict[str, Meaning] = {}
        for pattern in self.patterns:
            for text in (*self.pattern_adjectives[pattern], *self.pattern_phrases[pattern]):
                words[text] = Meaning(pattern=pattern)
        for shape in self.shapes:
            words.update({w: Meaning(shape=shape) for w in self.shape_words(shape)})
        for colour in self.colours:
            words.update({w: Meaning(colour=colour) for w in self.colour_words(colour)})
        return words

    def words(self) -> list[str]:
        """Every ordinary word a caption can contain (names excluded: they are built from syllables), sorted."""
        found: set[str] = set()
        for template in self.templates:
            found.update(template.replace("{}", " ").split())
        for e in self.entities:
            for text in e.associated:
                found.update(text.split())
        found.update(("a", "on", "background"))
        for group in (self.colour_synonyms, self.shape_synonyms, self.background_synonyms):
            for key, synonyms in group.items():
                found.update((key, *synonyms))
        for pattern in self.patterns:
            found.update(self.pattern_adjectives[pattern])
            for p in self.pattern_phrases[pattern]:
                found.update(p.split())
        return sorted(found)


def read_entities(path: Path) -> tuple[Entity, ...]:
    """The entities listed in ``entities.toml`` (empty if the file is missing)."""
    if not path.exists():
        return ()
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return tuple(Entity(e["name"], Emblem(*e["emblem"]), tuple(e["associated"])) for e in data["entity"])


@lru_cache(maxsize=None)
def load_world(path: Path = WORLD_FILE, entities_path: Path = ENTITIES_FILE) -> World:
    """Read and check the world files (cached: the world is immutable)."""
    data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    image = data["image"]
    world = World(
        image_size=int(image["size"]),
        min_extent=int(image["min_extent"]),
        max_extent=int(image["max_extent"]),
        margin=int(image["margin"]),
        colour_jitter=int(image["colour_jitter"]),
        background_jitter=int(image["background_jitter"]),
        pattern_period=int(image["pattern_period"]),
        pattern_ink=_rgb(image["pattern_ink"], "image.pattern_ink"),
        neutral_colour=str(data["neutral_colour"]),
        neutral_pattern=str(data["neutral_pattern"]),
        templates=tuple(data["templates"]),
        colour_rgb={n: _rgb(c["rgb"], f"colours.{n}.rgb") for n, c in data["colours"].items()},
        colour_synonyms={n: tuple(c.get("synonyms", ())) for n, c in data["colours"].items()},
        shape_synonyms={n: tuple(s.get("synonyms", ())) for n, s in data["shapes"].items()},
        pattern_adjectives={n: tuple(p["adjectives"]) for n, p in data["patterns"].items()},
        pattern_phrases={n: tuple(p["phrases"]) for n, p in data["patterns"].items()},
        background_rgb={n: _rgb(b["rgb"], f"backgrounds.{n}.rgb") for n, b in data["backgrounds"].items()},
        background_synonyms={n: tuple(b.get("synonyms", ())) for n, b in data["backgrounds"].items()},
        entities=read_entities(Path(entities_path)),
        syllables=tuple(data["entities"]["syllables"]),
        raw=data,
    )
    _check(world)
    return world


def _check(world: World) -> None:
    """Every content word has one meaning and every entity one distinct, well-formed emblem."""
    groups = [(f"colour {c}", world.colour_words(c)) for c in world.colours]
    groups += [(f"shape {s}", world.shape_words(s)) for s in world.shapes]
    groups += [(f"background {b}", world.background_words(b)) for b in world.backgrounds]
    groups += [(f"pattern {p}", world.pattern_adjectives[p]) for p in world.patterns]
    check_one_owner(groups)
    if world.neutral_colour not in world.colour_rgb or world.neutral_pattern not in world.pattern_adjectives:
        raise ValueError("neutral_colour / neutral_pattern must be a colour / pattern of this world")
    if not all(t.count("{}") == 1 for t in world.templates):
        raise ValueError("every template must contain exactly one '{}'")
    emblems = set()
    for e in world.entities:
        for attribute in ATTRIBUTES:
            if getattr(e.emblem, attribute) not in world.values(attribute):
                raise ValueError(f"entity {e.name}: unknown {attribute} {getattr(e.emblem, attribute)!r}")
        if e.emblem in emblems:
            raise ValueError(f"entity {e.name}: emblem {e.emblem} is taken")
        emblems.add(e.emblem)
