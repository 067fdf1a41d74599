"""The concept graph: nodes and relations, cross-entry conflicts with their
positions, and the JSON / DOT / SVG exports."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from policykit.graph import (ANCHOR, ASSOCIATED, CONFLICTS_WITH, ERASE, MAPS_TO, PRESERVE, PRESERVES, PROBES,
                             SYNONYM, SYNONYM_OF, ConceptGraph, build_graph)
from policykit.policy.loader import load_policy

REPO = Path(__file__).resolve().parents[1]

HEAD = """\
apiVersion: policykit/v1alpha1
kind: ErasurePolicy
metadata:
  name: t
  version: 1.0.0
base_model:
  id: builtin:shapes
"""


def load(tmp_path: Path, body: str, name: str = "policy.yaml"):
    path = tmp_path / name
    path.write_text(HEAD + body, encoding="utf-8")
    loaded = load_policy(path)
    assert loaded.ok, [d.format_text() for d in loaded.diagnostics]
    return loaded


def line_of(path: Path, needle: str, occurrence: int = 1) -> int:
    """1-based line of the ``occurrence``-th line containing ``needle``."""
    hits = [i for i, text in enumerate(path.read_text().splitlines(), 1) if needle in text]
    return hits[occurrence - 1]


def codes(graph: ConceptGraph) -> list[str]:
    return sorted(d.code for d in graph.diagnostics)


def expect_line(loaded, diagnostic, needle: str, occurrence: int = 1) -> None:
    """The diagnostic points at the line of ``needle`` (a loader that lost positions fails here)."""
    assert Path(diagnostic.file).resolve() == Path(loaded.path).resolve()
    assert diagnostic.line == line_of(Path(loaded.path), needle, occurrence)
    assert diagnostic.col > 0


def test_demo_graph_has_every_role_and_relation():
    graph = build_graph(load_policy(REPO / "policies/demo.yaml"))
    assert graph.diagnostics == []
    assert graph.nodes_with(ERASE) == ["red circle"]
    assert set(graph.nodes_with(SYNONYM)) == {"crimson circle", "scarlet disc", "red disc"}
    assert set(graph.nodes_with(ASSOCIATED)) == {"apple", "cherry"}
    assert graph.nodes_with(ANCHOR) == ["gray circle"]
    assert len(graph.nodes_with(PRESERVE)) == 4
    assert ("red circle", "gray circle") in graph.relations(MAPS_TO)
    assert ("scarlet disc", "red circle") in graph.relations(SYNONYM_OF)
    assert ("policy:demo", "blue circle") in graph.relations(PRESERVES)


def test_node_ids_are_normalized_and_keep_the_original_text(tmp_path):
    loaded = load(tmp_path, """\
erase:
  - concept: Mickey   Mouse
    category: character
preserve:
  - concept: Minnie Mouse
""")
    graph = build_graph(loaded)
    assert graph.nodes_with(ERASE) == ["mickey mouse"]
    assert graph.graph.nodes["mickey mouse"]["text"] == "Mickey   Mouse"
    # no anchor anywhere: the category default
    assert graph.nodes_with(ANCHOR) == ["a character"]


def test_concept_both_erased_and_preserved_is_an_error_at_the_preserve(tmp_path):
    loaded = load(tmp_path, """\
erase:
  - concept: red circle
    anchor: gray circle
preserve:
  - concept: blue circle
  - concept: Red  CIRCLE
""")
    graph = build_graph(loaded)
    assert codes(graph) == ["erase-preserve-conflict"]
    diagnostic = graph.diagnostics[0]
    assert diagnostic.severity == "error" and "erased" in diagnostic.message
    assert ("red circle", "red circle") in graph.relations(CONFLICTS_WITH)
    expect_line(loaded, diagnostic, "Red  CIRCLE")


@pytest.mark.parametrize("word, role_text", [("apple", "associated with"), ("crimson circle", "a synonym of")])
def test_preserving_a_synonym_or_associated_word_of_an_erased_concept_is_an_error(tmp_path, word, role_text):
    loaded = load(tmp_path, f"""\
erase:
  - concept: red circle
    anchor: gray circle
    synonyms: [crimson circle]
    associated: [apple]
preserve:
  - concept: {word}
""")
    graph = build_graph(loaded)
    assert codes(graph) == ["erase-preserve-conflict"]
    assert role_text in graph.diagnostics[0].message and "'red circle'" in graph.diagnostics[0].message
    expect_line(loaded, graph.diagnostics[0], f"concept: {word}")


def test_anchor_that_is_erased_is_an_error_at_the_anchor(tmp_path):
    loaded = load(tmp_path, """\
erase:
  - concept: red circle
    anchor: blue circle
  - concept: blue circle
    anchor: gray circle
""")
    graph = build_graph(loaded)
    assert codes(graph) == ["anchor-erased"]
    expect_line(loaded, graph.diagnostics[0], "anchor: blue circle")


def test_anchor_erased_through_defaults_points_at_the_default(tmp_path):
    loaded = load(tmp_path, """\
defaults:
  anchor: a shape
erase:
  - concept: red circle
  - concept: blue circle
    synonyms: [a shape]
    anchor: gray circle
""")
    graph = build_graph(loaded)
    assert codes(graph) == ["anchor-erased"]
    assert "synonym" in graph.diagnostics[0].message
    expect_line(loaded, graph.diagnostics[0], "anchor: a shape")


def test_anchor_cycle_is_reported_once(tmp_path):
    loaded = load(tmp_path, """\
erase:
  - concept: red circle
    anchor: blue circle
  - concept: blue circle
    anchor: red circle
""")
    graph = build_graph(loaded)
    assert codes(graph) == ["anchor-cycle"]
    assert "'red circle' -> 'blue circle' -> 'red circle'" in graph.diagnostics[0].message
    expect_line(loaded, graph.diagnostics[0], "anchor: blue circle")


def test_concept_mapped_to_itself_is_a_cycle(tmp_path):
    loaded = load(tmp_path, """\
erase:
  - concept: red circle
    anchor: Red Circle
""")
    graph = build_graph(loaded)
    assert codes(graph) == ["anchor-cycle"]
    assert "mapped to itself" in graph.diagnostics[0].message


def test_duplicates_erase_is_error_preserve_is_warning(tmp_path):
    loaded = load(tmp_path, """\
erase:
  - concept: red circle
    anchor: gray circle
  - concept: red  circle
    anchor: gray circle
preserve:
  - concept: blue circle
  - concept: Blue Circle
""")
    graph = build_graph(loaded)
    by_code = {d.code: d for d in graph.diagnostics}
    assert sorted(by_code) == ["duplicate-erase", "duplicate-preserve"]
    assert by_code["duplicate-erase"].severity == "error"
    assert by_code["duplicate-preserve"].severity == "warning"
    expect_line(loaded, by_code["duplicate-erase"], "concept: red  circle")
    expect_line(loaded, by_code["duplicate-preserve"], "concept: Blue Circle")


def test_word_shared_by_two_erased_concepts_is_a_warning(tmp_path):
    loaded = load(tmp_path, """\
erase:
  - concept: red circle
    anchor: gray circle
    associated: [apple]
  - concept: green circle
    anchor: gray circle
    associated: [apple]
""")
    graph = build_graph(loaded)
    assert codes(graph) == ["shared-word"]
    assert graph.diagnostics[0].severity == "warning" and graph.ok
    expect_line(loaded, graph.diagnostics[0], "associated: [apple]", occurrence=2)


def test_probe_expecting_an_erased_concept_preserved_is_an_error(tmp_path):
    loaded = load(tmp_path, """\
erase:
  - concept: red circle
    anchor: gray circle
    associated: [apple]
preserve:
  - concept: blue circle
audit:
  probes:
    - prompt: a photo of an apple on a table
      concept: apple
      expect: preserved
    - prompt: blue circle
      expect: erased
    - prompt: a red circle at night
      concept: red circle
      expect: erased
""")
    graph = build_graph(loaded)
    assert codes(graph) == ["probe-conflict", "probe-conflict"]
    assert ("probe:a photo of an apple on a table", "apple") in graph.relations(PROBES)
    assert ("probe:a red circle at night", "red circle") in graph.relations(PROBES)
    expect_line(loaded, graph.diagnostics[0], "expect: preserved")


def test_probe_without_concept_conflicts_with_what_its_prompt_shows(tmp_path):
    # No `concept:`: the probe shows what its prompt contains, as whole words.
    loaded = load(tmp_path, """\
erase:
  - concept: red circle
    anchor: gray circle
    associated: [apple]
preserve:
  - concept: blue circle
audit:
  probes:
    - prompt: a photo of a red circle on a table
      expect: preserved
    - prompt: an apple, seen from above
      expect: preserved
    - prompt: a picture of a blue circle
      expect: erased
    - prompt: a red circle beside a blue circle
      expect: erased
    - prompt: a bored circle
      expect: preserved
""")
    graph = build_graph(loaded)
    conflicts = [d for d in graph.diagnostics if d.code == "probe-conflict"]
    assert [d.line for d in conflicts] == [line_of(Path(loaded.path), "expect:", k) for k in (1, 2, 3)]
    assert "'red circle' (in its prompt) to be preserved, but it is erased" in conflicts[0].message
    assert "'apple' (in its prompt)" in conflicts[1].message and "associated with" in conflicts[1].message
    assert "'blue circle' (in its prompt) to be erased, but the policy preserves it" in conflicts[2].message
    # the fourth also shows the erased red circle, so expecting it erased is right; "bored circle" is no "red circle"
    assert len(conflicts) == 3 and all(d.severity == "error" for d in conflicts)
    assert ("probe:a photo of a red circle on a table", "red circle") in graph.relations(CONFLICTS_WITH)


def test_add_conflict_is_the_hook_for_model_based_checks():
    graph = build_graph(load_policy(REPO / "policies/demo.yaml"))
    diagnostic = graph.add_conflict("blue circle", "red circle", code="preserve-inside-radius",
                                    message="'blue circle' is inside the erase radius of 'red circle'",
                                    location=("policies/demo.yaml", 30, 5))
    assert graph.diagnostics == [diagnostic] and diagnostic.line == 30
    assert ("blue circle", "red circle") in graph.relations(CONFLICTS_WITH)
    assert graph.ok  # a warning by default
    with pytest.raises(KeyError):
        graph.add_conflict("nope", "red circle", code="x", message="y")


def _conflicted_graph(tmp_path) -> ConceptGraph:
    return build_graph(load(tmp_path, """\
erase:
  - concept: red circle
    anchor: gray circle
    synonyms: [crimson circle, "say \\"red\\" <b>&"]
  - concept: blue circle
    category: nsfw
preserve:
  - concept: crimson circle
audit:
  probes:
    - prompt: a red circle
      concept: red circle
      expect: erased
"""))


def test_json_round_trips(tmp_path):
    graph = _conflicted_graph(tmp_path)
    text = graph.to_json()
    doc = json.loads(text)
    assert doc["format_version"] == 1 and doc["multigraph"] is True
    again = ConceptGraph.from_json(text)
    assert again.to_json() == text
    assert sorted(again.graph.edges(keys=True)) == sorted(graph.graph.edges(keys=True))
    assert again.diagnostics == graph.diagnostics
    assert again.kinds("crimson circle") == ["preserve", "synonym"]
    with pytest.raises(ValueError):
        ConceptGraph.from_json(json.dumps({**doc, "format_version": 99}))


def test_svg_is_well_formed_and_shows_every_node_and_relation(tmp_path):
    graph = _conflicted_graph(tmp_path)
    svg = graph.to_svg()
    root = ET.fromstring(svg)
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    for label in ("red circle", "gray circle", "crimson circle", 'say "red" <b>&', '"" (empty prompt)', "a red circle"):
        assert label in texts
    for relation in ("maps-to", "synonym-of", "probes", "conflicts-with"):
        assert relation in texts
    assert "#c62828" in svg  # the conflict is drawn in red


def test_svg_of_fifty_nodes_stays_legible(tmp_path):
    erase = "".join(f"  - concept: concept {i}\n    anchor: anchor {i % 5}\n    synonyms: [alias {i}]\n"
                    for i in range(12))
    preserve = "".join(f"  - concept: keep {i}\n" for i in range(12))
    graph = build_graph(load(tmp_path, f"erase:\n{erase}preserve:\n{preserve}"))
    assert graph.graph.number_of_nodes() >= 42
    root = ET.fromstring(graph.to_svg())
    rects = [r for r in root.iter("{http://www.w3.org/2000/svg}rect") if r.get("rx") == "6"]
    boxes = [(float(r.get("x")), float(r.get("y")), float(r.get("width")), float(r.get("height"))) for r in rects]
    assert len(boxes) == graph.graph.number_of_nodes() - 1  # all but the policy root
    for i, a in enumerate(boxes):  # no two node boxes overlap
        for b in boxes[i + 1:]:
            assert a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1]
    assert float(root.get("height")) < 40 * 30  # one column of ~24 rows, not a tower


def test_dot_lists_nodes_and_labelled_edges(tmp_path):
    dot = _conflicted_graph(tmp_path).to_dot()
    assert dot.startswith('digraph "t" {')
    assert '"red circle" -> "gray circle" [label="maps-to"];' in dot
    assert '"say \\"red\\" <b>&"' in dot


def test_write_picks_the_format_by_suffix(tmp_path):
    graph = build_graph(load_policy(REPO / "policies/demo.yaml"))
    for suffix in (".json", ".dot", ".svg"):
        graph.write(tmp_path / f"g{suffix}")
    assert json.loads((tmp_path / "g.json").read_text())["format_version"] == 1
    ET.parse(tmp_path / "g.svg")
    with pytest.raises(ValueError):
        graph.write(tmp_path / "g.png")
