"""Loading policies: positions of every problem, extends merge rules, limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from policykit.policy.loader import MAX_EXTENDS_DEPTH, load_policy

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "policies"

MINIMAL = """\
apiVersion: policykit/v1alpha1
kind: ErasurePolicy
metadata:
  name: minimal
  version: 0.1.0
base_model:
  id: builtin:shapes
erase:
  - concept: red circle
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _by_position(loaded) -> dict[tuple[int, int], tuple[str, str]]:
    return {(d.line, d.col): (d.code, d.message) for d in loaded.diagnostics}


def test_demo_and_minimal_policies_load():
    for path in (REPO / "policies" / "demo.yaml", FIXTURES / "good-minimal.yaml"):
        loaded = load_policy(path)
        assert loaded.ok, [d.format_text() for d in loaded.diagnostics]
        assert loaded.diagnostics == []
        assert loaded.sources == [path]


def test_every_problem_of_a_file_is_reported_at_its_key_or_value():
    loaded = load_policy(FIXTURES / "bad" / "many-problems.yaml")
    assert not loaded.ok
    found = _by_position(loaded)
    expected = {
        (1, 13): "invalid-value",    # apiVersion value
        (4, 9): "invalid-format",    # metadata.name value 'Demo'
        (5, 12): "wrong-type",       # version: 1.0 is a number
        (6, 1): "missing-field",     # base_model: {} lacks id -> the parent key
        (9, 5): "unknown-key",       # radiuss key
        (10, 14): "wrong-type",      # samples: "16" (a string is not a number)
        (13, 15): "invalid-value",   # category: objet
        (14, 15): "out-of-range",    # strength: 0
        (15, 14): "out-of-range",    # concept: ""
        (16, 16): "invalid-value",   # template with a stray '{'
        (19, 5): "unknown-key",      # wieght
        (21, 9): "wrong-type",       # seed: true
        (23, 15): "invalid-value",   # targets: [to_q]
        (24, 13): "out-of-range",    # lambda: -1
        (25, 1): "unknown-key",      # bogus
    }
    assert {pos: code for pos, (code, _) in found.items()} == expected
    assert "did you mean 'radius'?" in found[(9, 5)][1]
    assert "did you mean 'weight'?" in found[(19, 5)][1]
    assert "'Demo'" in found[(4, 9)][1]
    assert all(d.file.endswith("many-problems.yaml") for d in loaded.diagnostics)
    # Messages say what was expected in words, not in pydantic's.
    assert not any("Input should" in d.message for d in loaded.diagnostics)


def test_position_maps_paths_to_values_and_keys(tmp_path):
    path = _write(tmp_path, "p.yaml", MINIMAL + "preserve:\n  - concept: a\n  - concept: b\n  - concept: c\n")
    loaded = load_policy(path)
    assert loaded.ok
    assert loaded.position(("preserve", 2, "concept")) == (str(path), 13, 14)
    assert loaded.key_position(("preserve", 2, "concept")) == (str(path), 13, 5)
    assert loaded.position(("metadata", "name")) == (str(path), 4, 9)
    # A field left out: the deepest value that exists (the entry) is used.
    assert loaded.position(("erase", 0, "anchor")) == (str(path), 9, 5)


def test_duplicate_keys_are_errors_at_the_second_key(tmp_path):
    path = _write(tmp_path, "p.yaml", MINIMAL.replace("  version: 0.1.0\n", "  version: 0.1.0\n  name: again\n"))
    loaded = load_policy(path)
    assert [(d.code, d.line, d.col) for d in loaded.diagnostics] == [("duplicate-key", 6, 3)]
    assert "first at line 4" in loaded.diagnostics[0].message


def test_missing_required_field_points_at_its_parent(tmp_path):
    path = _write(tmp_path, "p.yaml", MINIMAL.replace("  version: 0.1.0\n", ""))
    loaded = load_policy(path)
    assert [(d.code, d.line, d.col) for d in loaded.diagnostics] == [("missing-field", 3, 1)]
    assert "version" in loaded.diagnostics[0].message


@pytest.mark.parametrize("value, code", [
    ("[1, 2]", "wrong-type"), ("{a: 1}", "wrong-type"), ("abc", "wrong-type"),
    ("'0.5'", "wrong-type"), ("true", "wrong-type"), ("3", "out-of-range"),
])
def test_wrong_types_get_clean_messages(tmp_path, value, code):
    path = _write(tmp_path, "p.yaml", MINIMAL + f"    strength: {value}\n")
    loaded = load_policy(path)
    assert [(d.code, d.line, d.col) for d in loaded.diagnostics] == [(code, 10, 15)]
    assert "erase[0].strength" in loaded.diagnostics[0].message


def test_extends_merges_bases_by_the_documented_rules():
    loaded = load_policy(FIXTURES / "extends" / "child.yaml")
    assert loaded.ok, [d.format_text() for d in loaded.diagnostics]
    policy = loaded.policy
    # Mappings merge recursively: radius from the base, samples from the child.
    assert policy.defaults.neighbors.radius == 0.3 and policy.defaults.neighbors.samples == 32
    assert policy.defaults.strength == 0.8
    # erase merges by normalized concept: "Blue  Square" is replaced in place.
    assert [(e.concept, e.anchor) for e in policy.erase] == [
        ("red circle", "gray circle"), ("blue square", "a square"), ("yellow circle", None)]
    assert [p.concept for p in policy.preserve] == ["green triangle"]
    # audit.probes concatenate, bases first.
    assert [p.prompt for p in policy.audit.probes] == ["a red circle", "a yellow circle"]
    # extends is not inherited; sources are in merge order.
    assert policy.extends == ["base.yaml"]
    assert [p.name for p in loaded.sources] == ["base.yaml", "child.yaml"]
    # Positions point into the file that supplied each value.
    assert loaded.position(("erase", 0, "anchor"))[0].endswith("base.yaml")
    assert loaded.position(("erase", 1, "anchor"))[0].endswith("child.yaml")
    assert loaded.position(("defaults", "neighbors", "radius"))[1:] == (9, 13)


def test_problems_in_a_base_are_reported_in_the_base():
    loaded = load_policy(FIXTURES / "extends" / "uses-bad-base.yaml")
    assert not loaded.ok
    [diagnostic] = loaded.diagnostics
    assert diagnostic.file.endswith("bad-base.yaml")
    assert (diagnostic.code, diagnostic.line, diagnostic.col) == ("unknown-key", 3, 5)


def test_extends_cycle_is_an_error_showing_the_chain():
    loaded = load_policy(FIXTURES / "extends" / "cycle" / "a.yaml")
    assert [d.code for d in loaded.diagnostics] == ["extends-cycle"]
    assert "a.yaml -> b.yaml -> a.yaml" in loaded.diagnostics[0].message
    assert loaded.diagnostics[0].file.endswith("b.yaml")


def test_extends_may_not_leave_the_policy_directory():
    loaded = load_policy(FIXTURES / "extends" / "escapes.yaml")
    assert [(d.code, d.line) for d in loaded.diagnostics] == [("extends-outside-root", 4), ("extends-outside-root", 5)]


def test_extends_through_a_symlink_outside_is_refused(tmp_path):
    outside = _write(tmp_path, "outside/secret.yaml", "defaults: {strength: 0.5}\n")
    inside = tmp_path / "policy"
    inside.mkdir()
    (inside / "link.yaml").symlink_to(outside)
    path = _write(inside, "p.yaml", MINIMAL + "extends: [link.yaml]\n")
    loaded = load_policy(path)
    assert [d.code for d in loaded.diagnostics] == ["extends-outside-root"]


def test_missing_base_is_reported_at_the_extends_entry(tmp_path):
    path = _write(tmp_path, "p.yaml", MINIMAL + "extends:\n  - nowhere.yaml\n")
    loaded = load_policy(path)
    assert [(d.code, d.file, d.line, d.col) for d in loaded.diagnostics] == [("file-not-found", str(path), 11, 5)]


def test_extends_depth_is_bounded(tmp_path):
    for i in range(MAX_EXTENDS_DEPTH + 3):
        _write(tmp_path, f"b{i}.yaml", f"extends: [b{i + 1}.yaml]\n")
    _write(tmp_path, f"b{MAX_EXTENDS_DEPTH + 3}.yaml", "defaults: {strength: 0.5}\n")
    loaded = load_policy(_write(tmp_path, "p.yaml", MINIMAL + "extends: [b0.yaml]\n"))
    assert "extends-too-deep" in [d.code for d in loaded.diagnostics]


def test_read_file_is_used_for_every_file(tmp_path):
    files = {
        Path("repo/p.yaml"): (MINIMAL + "extends: [base/common.yaml]\n").encode(),
        Path("repo/base/common.yaml"): b"defaults:\n  strength: 0.25\n",
    }
    read = []

    def reader(path: Path) -> bytes:
        read.append(path)
        return files[Path(path)]

    loaded = load_policy("repo/p.yaml", read_file=reader)
    assert loaded.ok, loaded.diagnostics
    assert loaded.policy.defaults.strength == 0.25
    assert sorted(map(str, read)) == ["repo/base/common.yaml", "repo/p.yaml"]


def test_data_is_the_merged_plain_data():
    loaded = load_policy(FIXTURES / "good-minimal.yaml")
    assert loaded.data["erase"] == [{"concept": "red circle"}]
    assert loaded.data["metadata"] == {"name": "minimal", "version": "0.1.0"}


def test_extends_file_count_is_bounded(tmp_path):
    from policykit.policy.loader import MAX_EXTENDS_FILES

    names = [f"b{i}.yaml" for i in range(MAX_EXTENDS_FILES + 5)]
    for name in names:
        _write(tmp_path, name, "defaults: {strength: 0.5}\n")
    loaded = load_policy(_write(tmp_path, "p.yaml", MINIMAL + f"extends: [{', '.join(names)}]\n"))
    assert [d.code for d in loaded.diagnostics].count("extends-too-many") == 6
    assert len(loaded.sources) == MAX_EXTENDS_FILES


def test_extends_must_be_a_list_of_paths(tmp_path):
    loaded = load_policy(_write(tmp_path, "p.yaml", MINIMAL + "extends: base.yaml\n"))
    assert [(d.code, d.line, d.col) for d in loaded.diagnostics] == [("wrong-type", 10, 10)]


def test_a_diamond_merges_each_base_once(tmp_path):
    _write(tmp_path, "root.yaml", "audit:\n  probes:\n    - {prompt: a red circle, expect: erased}\n")
    _write(tmp_path, "left.yaml", "extends: [root.yaml]\n")
    _write(tmp_path, "right.yaml", "extends: [./root.yaml]\n")
    loaded = load_policy(_write(tmp_path, "p.yaml", MINIMAL + "extends: [left.yaml, right.yaml]\n"))
    assert loaded.ok, loaded.diagnostics
    assert len(loaded.policy.audit.probes) == 1
    assert [p.name for p in loaded.sources] == ["root.yaml", "left.yaml", "right.yaml", "p.yaml"]


def test_cross_field_check_points_at_the_field_it_names(tmp_path):
    text = MINIMAL + "    neighbors:\n      radius: 0.5\n      beyond_radius: 0.2\n"
    loaded = load_policy(_write(tmp_path, "p.yaml", text))
    assert [(d.code, d.line, d.col) for d in loaded.diagnostics] == [("invalid-value", 12, 7)]
    assert "beyond_radius must be larger than radius" in loaded.diagnostics[0].message
