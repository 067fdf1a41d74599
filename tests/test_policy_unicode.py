"""Hostile Unicode in policies: non-ASCII digits in versions, hidden characters
in concept text, NFKC, and concepts that look alike (UTS #39 skeletons)."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import jsonschema
import pytest

from policykit.graph import CONFLICTS_WITH, build_graph
from policykit.policy.loader import load_policy
from policykit.policy.schema import json_schema

REPO = Path(__file__).resolve().parents[1]

HEAD = """\
apiVersion: policykit/v1alpha1
kind: ErasurePolicy
metadata:
  name: t
  version: {version}
base_model:
  id: org/model
"""


def write(tmp_path: Path, body: str, version: str = "1.0.0") -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(HEAD.format(version=version) + body, encoding="utf-8")
    return path


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if needle in line)


ERASE = "erase:\n  - concept: red circle\n"


# ------------------------------------------------------------------ versions (item 9)


@pytest.mark.parametrize("version", ["2.1\uff10.0", "\u0661.0.0", "1.\u0967.0", "1.0.0-rc.\uff11", "1.0.0+b\u0662"],
                         ids=["full-width", "arabic-indic", "devanagari", "prerelease", "build"])
def test_version_digits_must_be_ascii(tmp_path, version):
    path = write(tmp_path, ERASE, version=f'"{version}"')
    loaded = load_policy(path)
    assert [(d.code, d.line, d.col) for d in loaded.diagnostics] == [("invalid-format", 5, 12)]
    assert "ASCII digits" in loaded.diagnostics[0].message
    # the published JSON Schema says the same to editors and CI
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(version, json_schema()["$defs"]["Metadata"]["properties"]["version"])


def test_ascii_semver_still_validates(tmp_path):
    for version in ("2.10.0", "0.0.1-alpha.1+build.5", "10.20.30"):
        assert load_policy(write(tmp_path, ERASE, version=version)).ok, version


def _patterns(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern":
                yield value
            else:
                yield from _patterns(value)
    elif isinstance(node, list):
        for value in node:
            yield from _patterns(value)


def test_no_schema_pattern_uses_a_unicode_aware_class():
    # \d, \w, \s and \b match far more than ASCII in Python and in pydantic's Rust
    # regex, but not in JSON Schema's ECMAScript: the pattern would mean two things.
    patterns = list(_patterns(json_schema()))
    assert len(patterns) >= 3  # name, version, sha256
    for pattern in patterns:
        assert not re.search(r"\\[dDwWsSbB]", pattern), pattern
        assert pattern.isascii(), pattern


def test_a_name_with_a_look_alike_letter_is_refused(tmp_path):
    path = write(tmp_path, ERASE).read_text(encoding="utf-8").replace("name: t", "name: d\u0435mo")
    (tmp_path / "policy.yaml").write_text(path, encoding="utf-8")
    loaded = load_policy(tmp_path / "policy.yaml")
    assert [(d.code, d.line) for d in loaded.diagnostics] == [("invalid-format", 4)]


# ------------------------------------------------------- hidden characters (item 10)

HIDDEN = ["\u202e", "\u202a", "\u200e", "\u200f", "\u2066", "\u2069", "\u061c", "\u200b", "\u00ad", "\ufeff",
          "\u2060", "\u2028", "\U000e0041", "\ue000"]


@pytest.mark.parametrize("char", HIDDEN, ids=[f"U+{ord(c):04X}" for c in HIDDEN])
@pytest.mark.parametrize("written", ["raw", "escaped"])
def test_hidden_characters_are_refused_in_concept_text(tmp_path, char, written):
    value = char if written == "raw" else f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}"
    path = write(tmp_path, f'erase:\n  - concept: "elcric{value}der"\n')
    loaded = load_policy(path)
    assert [(d.code, d.line, d.col) for d in loaded.diagnostics] == [("invalid-value", 9, 14)]
    message = loaded.diagnostics[0].message
    assert f"U+{ord(char):04X}" in message and "at character 7" in message


@pytest.mark.parametrize("field, body", [
    ("synonyms", "erase:\n  - concept: red circle\n    synonyms: [\"a\u202eb\"]\n"),
    ("associated", "erase:\n  - concept: red circle\n    associated: [\"a\u200bb\"]\n"),
    ("anchor", "erase:\n  - concept: red circle\n    anchor: \"a\u2066b\"\n"),
    ("templates", "erase:\n  - concept: red circle\n    templates: [\"a {}\u200f\"]\n"),
    ("defaults.anchor", "defaults:\n  anchor: \"a\u00adb\"\n" + ERASE),
    ("preserve", ERASE + "preserve:\n  - concept: \"a\u202eb\"\n"),
    ("probe prompt", ERASE + "audit:\n  probes:\n    - prompt: \"a\u202eb\"\n      expect: erased\n"),
    ("probe concept", ERASE + "audit:\n  probes:\n    - prompt: ab\n      concept: \"a\u202eb\"\n      expect: erased\n"),
])
def test_every_concept_text_field_is_checked(tmp_path, field, body):
    path = write(tmp_path, body)
    loaded = load_policy(path)
    assert [d.code for d in loaded.diagnostics] == ["invalid-value"], field
    assert loaded.diagnostics[0].line == line_of(path, '"a')


@pytest.mark.parametrize("value", ["\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian with ZWNJ
                                   "\U0001F468\u200d\u2695\ufe0f",  # emoji ZWJ sequence with VS16
                                   "caf\u00e9", "\u03bf\u03bb\u03b1"])
def test_text_that_needs_joiners_and_variation_selectors_is_kept(tmp_path, value):
    loaded = load_policy(write(tmp_path, f'erase:\n  - concept: "{value}"\n'))
    assert loaded.ok, [d.format_text() for d in loaded.diagnostics]
    assert loaded.policy.erase[0].concept == unicodedata.normalize("NFKC", value)


def test_a_block_scalar_concept_is_one_line_once_stripped(tmp_path):
    loaded = load_policy(write(tmp_path, "erase:\n  - concept: >\n      red\n      circle\n"))
    assert loaded.ok and loaded.policy.erase[0].concept == "red circle"
    loaded = load_policy(write(tmp_path, "erase:\n  - concept: |\n      red\n      circle\n"))
    assert [d.code for d in loaded.diagnostics] == ["invalid-value"]  # a line break inside a concept
    assert "U+000A" in loaded.diagnostics[0].message


def test_concept_text_is_kept_in_nfkc_and_compared_that_way(tmp_path):
    path = write(tmp_path, "erase:\n  - concept: \uff52\uff45\uff44\u3000\uff43\uff49\uff52\uff43\uff4c\uff45\n"
                           "  - concept: Red Circle\n")
    loaded = load_policy(path)
    assert loaded.ok
    assert loaded.policy.erase[0].concept == "red circle"  # full-width letters and ideographic space
    graph = build_graph(loaded)
    assert [(d.code, d.line) for d in graph.diagnostics] == [("duplicate-erase", 10)]


def test_every_invisible_code_point_except_joiners_and_selectors_is_forbidden():
    from policykit.policy import confusables, text

    # The two tables are written out (no unicodedata): keep them consistent.
    allowed = {0x200C, 0x200D, *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)}
    for first, last in confusables.DEFAULT_IGNORABLE:
        for code in range(first, last + 1):
            found = text.forbidden_character(chr(code))
            assert (found is None) == (code in allowed), hex(code)
    for code in (*range(0x20), *range(0x7F, 0xA0), 0xD800, 0xFDD0, 0xFFFE, 0x1FFFF, 0x10FFFD):
        assert text.forbidden_character(chr(code)) is not None, hex(code)
    assert text.forbidden_character("red circle, \u00e9t\u00e9, \u4e2d\u6587") is None


# ------------------------------------------------------------- confusables (item 10)


def test_erasing_a_look_alike_and_preserving_the_original_is_a_conflict(tmp_path):
    path = write(tmp_path, "erase:\n  - concept: r\u0435d circle\n    anchor: gray circle\n"
                           "preserve:\n  - concept: red circle\n")
    graph = build_graph(load_policy(path))
    errors = [d for d in graph.diagnostics if d.severity == "error"]
    assert [(d.code, d.line, d.col) for d in errors] == [("confusable-conflict", 12, 14)]
    assert "'r\u0435d circle' is erased and 'red circle' is preserved" in errors[0].message
    assert ("red circle", "r\u0435d circle") in graph.relations(CONFLICTS_WITH)
    # and the disguised word itself is pointed out where it is written
    [mixed] = [d for d in graph.diagnostics if d.code == "mixed-script"]
    assert (mixed.severity, mixed.line) == ("warning", 9) and "U+0435 (CYRILLIC SMALL LETTER IE)" in mixed.message


def test_an_anchor_that_looks_like_an_erased_concept_is_a_conflict(tmp_path):
    path = write(tmp_path, "erase:\n  - concept: red circle\n    anchor: red \u0441ircle\n")  # Cyrillic es
    graph = build_graph(load_policy(path))
    assert [(d.code, d.line) for d in graph.diagnostics if d.severity == "error"] == [("confusable-conflict", 10)]


def test_look_alikes_on_the_same_side_are_a_warning(tmp_path):
    path = write(tmp_path, "erase:\n  - concept: modern art\n  - concept: rnodern art\n")
    graph = build_graph(load_policy(path))
    assert [(d.code, d.severity, d.line) for d in graph.diagnostics] == [("confusable", "warning", 10)]
    assert graph.ok


def test_a_probe_preserving_a_look_alike_of_an_erased_concept_is_a_conflict(tmp_path):
    path = write(tmp_path, ERASE + "audit:\n  probes:\n    - prompt: a photo of a r\u0435d circle\n"
                                   "      expect: preserved\n")
    graph = build_graph(load_policy(path))
    [conflict] = [d for d in graph.diagnostics if d.code == "probe-conflict"]
    assert conflict.line == 13 and "written like 'red circle', which is erased" in conflict.message


@pytest.mark.parametrize("word, flagged", [("r\u0435d", True), ("\u0440\u0430ypal", True), ("I\u015f\u0131k", False),
                                           ("\u03bf\u03bb\u03b1", False), ("na\u00efve", False), ("stop", False)])
def test_only_a_word_mixing_scripts_is_flagged(tmp_path, word, flagged):
    graph = build_graph(load_policy(write(tmp_path, f"erase:\n  - concept: {word}\n")))
    assert [d.code for d in graph.diagnostics] == (["mixed-script"] if flagged else [])


def test_distinct_concepts_are_not_confusable():
    policy = load_policy(REPO / "policies" / "demo.yaml")
    assert build_graph(policy).diagnostics == []


# ------------------------------------------------------------------- skeletons


@pytest.mark.parametrize("a, b", [
    ("r\u0435d circle", "red circle"),  # Cyrillic ie
    ("\u0440\u0430ypal", "paypal"),  # Cyrillic er, a
    ("rnodern", "modern"),  # m -> rn
    ("I1l", "lll"),
    ("red\u200b circle", "red circle"),  # default ignorables are removed
    ("e\u0301", "\u00e9"),  # NFD first
])
def test_confusable_pairs_share_a_skeleton(a, b):
    from policykit.policy import confusables

    assert confusables.skeleton(a) == confusables.skeleton(b)


@pytest.mark.parametrize("a, b", [("red circle", "blue circle"), ("cat", "cot"), ("\u00e9", "e")])
def test_different_text_has_different_skeletons(a, b):
    from policykit.policy import confusables

    assert confusables.skeleton(a) != confusables.skeleton(b)


def test_skeleton_follows_the_uts39_definition_on_a_small_table():
    from policykit.policy import confusables

    # NFD, drop Default_Ignorable, map every character, NFD again.
    mapping = confusables.parse_mapping("0430 0061\n00C5 0041 030A\n212B 00C5\n")
    assert confusables.skeleton("\u0430\u00ad", mapping) == "a"
    # U+212B ANGSTROM SIGN is NFD-decomposed to A + ring before mapping; U+00C5 never survives NFD
    assert confusables.skeleton("\u212b", mapping) == "A\u030a"


def test_the_shipped_data_is_unicode_17_confusables():
    from policykit.policy import confusables

    data = confusables.DATA_FILE.read_text(encoding="utf-8")
    assert "# Version: 17.0.0" in data and "Unicode" in data.splitlines()[2]
    mapping = confusables.prototypes()
    assert len(mapping) == 6565
    assert mapping["\u0435"] == "e" and mapping["m"] == "rn" and mapping["0"] == "O"


def test_compact_keeps_the_header_and_every_mapping():
    from policykit.policy import confusables

    upstream = ("\ufeff# confusables.txt\n# Version: 99.0.0\n#\n"
                "05AD ;\t0596 ;\tMA\t# ( \u05ad \u2192 \u0596 ) HEBREW\n\n"
                "006D ;\t0072 006E ;\tMA\t# ( m \u2192 rn )\n")
    out = confusables.compact(upstream)
    assert out.startswith("# confusables.txt\n# Version: 99.0.0\n")
    assert confusables.parse_mapping(out) == {"\u05ad": "\u0596", "m": "rn"}


def test_validate_stays_fast_on_a_thousand_concepts(tmp_path):
    import time

    body = "erase:\n" + "".join(f"  - concept: brand {i}\n    synonyms: [brand number {i}]\n" for i in range(1000))
    body += "preserve:\n" + "".join(f"  - concept: keep {i}\n" for i in range(1000))
    loaded = load_policy(write(tmp_path, body))
    start = time.perf_counter()
    graph = build_graph(loaded)
    assert time.perf_counter() - start < 3.0
    assert json.loads(graph.to_json())["diagnostics"] == []
