"""Confusable text: Unicode TR39 skeletons, to find concepts that look alike.

Two strings are *confusable* when they have the same skeleton (UTS #39,
section 4): ``rеd circle`` written with a Cyrillic ``е`` and ``red circle``
are different text to a tokenizer and the same text to a reviewer. The
skeleton is defined as: NFD; remove Default_Ignorable_Code_Point characters;
replace each character by its prototype from Unicode's ``confusables.txt``;
NFD again.

The mapping is Unicode's own data (``confusables.txt`` of UTS #39 17.0.0),
kept in ``policykit/data/confusables.txt`` with its header and license
note, one ``SOURCE TARGET...`` line of hexadecimal code points per mapping
(the upstream comments, about 90% of its 745 KB, are dropped). Regenerate it
from a newer release with::

    python -m policykit.policy.confusables confusables.txt > policykit/data/confusables.txt

No library is used: on the package index, ``confusables`` (2021, Unicode
13) compares strings with its own pairwise rules and extra mappings rather
than skeletons; ``confusable-homoglyphs`` (last release January 2024)
checks characters against preferred scripts and has no skeleton; and the
one package that implements the skeleton (``ipfy-homoglyph``, 2026) keeps it
in a private module of a domain-name checker with a single release. The
skeleton itself is ten lines; what matters is the data, and the data is
Unicode's.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from pathlib import Path

DATA_FILE = Path(__file__).resolve().parents[1] / "data" / "confusables.txt"

# Default_Ignorable_Code_Point (DerivedCoreProperties.txt, Unicode 17.0.0):
# removed by the skeleton. Written out so skeletons do not depend on the
# interpreter's Unicode version (unicodedata does not expose this property).
DEFAULT_IGNORABLE: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)


def is_default_ignorable(char: str) -> bool:
    """True for characters with Unicode's Default_Ignorable_Code_Point property."""
    code = ord(char)
    return any(first <= code <= last for first, last in DEFAULT_IGNORABLE)


@lru_cache(maxsize=1)
def prototypes() -> dict[str, str]:
    """The confusables mapping: character -> its prototype (one or more characters)."""
    return parse_mapping(DATA_FILE.read_text(encoding="utf-8"))


def parse_mapping(text: str) -> dict[str, str]:
    """Read mapping lines (``0435 0065``, hex code points, ``#`` comments) into a dict."""
    mapping: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            mapping[chr(int(fields[0], 16))] = "".join(chr(int(f, 16)) for f in fields[1:])
    return mapping


def skeleton(text: str, mapping: dict[str, str] | None = None) -> str:
    """The UTS #39 skeleton of ``text``: equal skeletons mean "confusable"."""
    mapping = prototypes() if mapping is None else mapping
    decomposed = unicodedata.normalize("NFD", text)
    mapped = "".join(mapping.get(c, c) for c in decomposed if not is_default_ignorable(c))
    return unicodedata.normalize("NFD", mapped)


def lookalike_ascii(text: str) -> list[tuple[int, str]]:
    """Non-ASCII letters that stand in for an ASCII letter inside a word that
    is otherwise written in ASCII (``rеd`` with a Cyrillic ``е``), as
    ``(index, character)``; empty when there are none.

    A word written wholly in another script (Greek ``ολα``) is not reported,
    nor are Latin letters beyond ASCII (Turkish ``ı``): only a mix of
    scripts, which real words do not need, is a sign of disguise.
    """
    found: list[tuple[int, str]] = []
    index = 0
    for word in text.split(" "):
        has_ascii_letter = any("a" <= c.lower() <= "z" for c in word)
        if has_ascii_letter:
            for offset, char in enumerate(word):
                if ord(char) > 0x7F and char.isalpha() and not unicodedata.name(char, "").startswith("LATIN "):
                    shape = skeleton(char)
                    if shape and shape.isascii() and shape.isalnum():
                        found.append((index + offset, char))
        index += len(word) + 1
    return found


def describe_lookalikes(text: str) -> str:
    """The :func:`lookalike_ascii` characters of ``text`` for a message
    (``U+0435 (CYRILLIC SMALL LETTER IE) at character 2 looks like 'e'``); empty if none."""
    from policykit.policy.text import describe_character

    return "; ".join(f"{describe_character(char)} at character {index + 1} looks like {skeleton(char)!r}"
                     for index, char in lookalike_ascii(text))


def compact(upstream: str) -> str:
    """Unicode's ``confusables.txt`` in the form kept in ``policykit/data``: its header
    comment, then one ``SOURCE TARGET...`` line per mapping, in the upstream order."""
    header, body = [], []
    for line in upstream.lstrip("\ufeff").splitlines():
        if not body and line.startswith("#"):
            header.append(line)
            continue
        data = line.split("#", 1)[0].strip()
        if data:
            source, target = (field.strip() for field in data.split(";")[:2])
            body.append(f"{source} {target}")
    note = ["#", "# Compacted by `python -m policykit.policy.confusables` (policykit/policy/confusables.py):",
            "# each line is SOURCE TARGET... in hexadecimal; the upstream comments are dropped."]
    return "\n".join(header + note + body) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m policykit.policy.confusables UPSTREAM_FILE``: print the compact data."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m policykit.policy.confusables confusables.txt > policykit/data/confusables.txt",
              file=sys.stderr)
        return 2
    sys.stdout.write(compact(Path(args[0]).read_text(encoding="utf-8")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
