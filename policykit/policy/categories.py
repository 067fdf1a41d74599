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
