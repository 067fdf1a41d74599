"""Per-category defaults: the prompt templates and anchor a concept gets when
its policy names none. Real-model templates follow UCE/MACE practice;
``builtin:shapes`` policies usually set their own templates.
"""

from __future__ import annotations

from policykit.policy.schema import Category

DEFAULT_TEMPLATES: dict[Category, tuple[str, ...]] = {
    Category.object: ("a photo of {}", "a picture of {}", "an image of {}", "{}"),
    Category.style: ("a painting in the style of {}", "an artwork by {}", "a landscape in the style of {}", "{}"),
    Category.character: ("a photo of {}", "a drawing of {}", "a cartoon of {}", "{}"),
    Category.person: ("a photo of {}", "a portrait of {}", "a picture of {}", "{}"),
    Category.nsfw: ("a photo of {}", "an image of {}", "a painting of {}", "{}"),
    Category.brand: ("the logo of {}", "a photo of {}", "a product by {}", "{}"),
}

DEFAULT_ANCHORS: dict[Category, str] = {
    Category.object: "an object",
    Category.style: "art",
    Category.character: "a character",
    Category.person: "a person",
    Category.nsfw: "",
    Category.brand: "a logo",
}


def resolve_anchor(entry, defaults, index: int) -> tuple[str, tuple[str | int, ...]]:
    """The anchor erase entry number ``index`` maps to, and the policy path
    that supplied it (for diagnostics).

    Precedence: the entry's own ``anchor``, then ``defaults.anchor``, then the
    category default, for which the path is the entry's ``category`` key:
    that is the line a reader changes to get another anchor.
    """
    if entry.anchor is not None:
        return entry.anchor, ("erase", index, "anchor")
    if defaults.anchor is not None:
        return defaults.anchor, ("defaults", "anchor")
    return DEFAULT_ANCHORS[Category(entry.category)], ("erase", index, "category")


def resolve_templates(entry, defaults) -> tuple[str, ...]:
    """The prompt templates of an erase entry: its own, else the policy's
    defaults, else the category's."""
    if entry.templates is not None:
        return tuple(entry.templates)
    if defaults.templates is not None:
        return tuple(defaults.templates)
    return DEFAULT_TEMPLATES[Category(entry.category)]
