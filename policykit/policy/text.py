"""What the text of a concept, prompt or template may contain, and its canonical form.

Concept text reaches a tokenizer, a reviewer and an audit report. Characters
that look like nothing, or that reorder what a reviewer sees, let a policy
say one thing to the model and another to the person approving it, so
:func:`clean_phrase` refuses them:

- control characters (C0, DEL, C1) and line or paragraph separators: a
  phrase is one line of text;
- bidirectional controls (U+061C, U+200E, U+200F, U+202A-U+202E,
  U+2066-U+2069): a right-to-left override makes ``elcric der`` show as
  ``red circle`` ("Trojan Source", CVE-2021-42574);
- other invisible characters (Unicode's Default_Ignorable_Code_Point, such
  as U+200B ZERO WIDTH SPACE, U+00AD SOFT HYPHEN, U+FEFF, tag characters),
  except the three kinds real text needs: ZERO WIDTH NON-JOINER and ZERO
  WIDTH JOINER (Persian and Indic words, emoji sequences) and variation
  selectors (emoji presentation);
- surrogates, private-use characters and noncharacters, which name no
  character anyone can see.

Everything else is kept and put in Unicode normalization form NFKC, so
``ｒｅｄ　ｃｉｒｃｌｅ`` (full-width) and ``red circle`` are one concept and
the model is trained on the text people read. The ranges are written out here
rather than read from :mod:`unicodedata`, whose version differs between
Python releases: what is refused must not depend on the interpreter.
"""

from __future__ import annotations

import unicodedata

# (first, last, what it is): every range refused in a phrase, in code point order.
_FORBIDDEN: tuple[tuple[int, int, str], ...] = (
    (0x0000, 0x001F, "a control character"),
    (0x007F, 0x009F, "a control character"),
    (0x00AD, 0x00AD, "an invisible character"),
    (0x034F, 0x034F, "an invisible character"),
    (0x061C, 0x061C, "a bidirectional control character"),
    (0x115F, 0x1160, "an invisible character"),
    (0x17B4, 0x17B5, "an invisible character"),
    (0x180B, 0x180F, "an invisible character"),
    (0x200B, 0x200B, "an invisible character"),
    # 0x200C ZERO WIDTH NON-JOINER and 0x200D ZERO WIDTH JOINER are allowed.
    (0x200E, 0x200F, "a bidirectional control character"),
    (0x2028, 0x2029, "a line or paragraph separator"),
    (0x202A, 0x202E, "a bidirectional control character"),
    (0x2060, 0x2065, "an invisible character"),
    (0x2066, 0x2069, "a bidirectional control character"),
    (0x206A, 0x206F, "an invisible character"),
    (0x3164, 0x3164, "an invisible character"),
    (0xD800, 0xDFFF, "a surrogate"),
    (0xE000, 0xF8FF, "a private-use character"),
    (0xFDD0, 0xFDEF, "a noncharacter"),
    # 0xFE00..0xFE0F variation selectors are allowed.
    (0xFEFF, 0xFEFF, "an invisible character"),
    (0xFFA0, 0xFFA0, "an invisible character"),
    (0xFFF0, 0xFFF8, "an invisible character"),
    (0x1BCA0, 0x1BCA3, "an invisible character"),
    (0x1D173, 0x1D17A, "an invisible character"),
    (0xE0000, 0xE00FF, "an invisible character"),
    # 0xE0100..0xE01EF variation selectors are allowed.
    (0xE01F0, 0xE0FFF, "an invisible character"),
    (0xF0000, 0x10FFFF, "a private-use character"),
)


def forbidden_character(text: str) -> tuple[int, str, str] | None:
    """The first character of ``text`` a phrase may not contain, as
    ``(index, character, what it is)``; None when there is none."""
    for index, char in enumerate(text):
        code = ord(char)
        if 0x20 <= code < 0x7F:
            continue  # printable ASCII: the common case, decided at once
        if (code & 0xFFFE) == 0xFFFE:
            return index, char, "a noncharacter"
        for first, last, what in _FORBIDDEN:
            if code < first:
                break
            if code <= last:
                return index, char, what
    return None


def describe_character(char: str) -> str:
    """``U+202E (RIGHT-TO-LEFT OVERRIDE)``: a character as messages show it."""
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X}" + (f" ({name})" if name else "")


def clean_phrase(value: object) -> object:
    """``value`` in NFKC when it is a string a phrase may hold; ValueError
    naming the first forbidden character otherwise. Non-strings pass
    through untouched, for the type check that follows to report."""
    if not isinstance(value, str):
        return value
    # Surrounding whitespace (the newline a YAML block scalar ends with) is
    # stripped anyway; only what is left is one line that must hold no controls.
    value = value.strip()
    found = forbidden_character(value)
    if found is not None:
        index, char, what = found
        raise ValueError(f"{describe_character(char)} at character {index + 1} is {what}; "
                         "concept and prompt text may not contain control, bidirectional or invisible characters")
    return unicodedata.normalize("NFKC", value)
