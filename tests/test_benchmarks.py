"""The benchmarks' own logic: the quality suite measures what it says, and sections land in the docs.

The benchmarks run by hand (they take an hour); these checks keep their
definitions honest without a model: every phrase a task uses means the
concept the task says it means in the shapes world, held-out prompts are
really held out of the policy, and every task compiles for every method.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import quality  # noqa: E402
import report  # noqa: E402


@pytest.fixture(scope="module")
def world():
    from policykit.shapes.world import load_world

    return load_world()


@pytest.mark.parametrize("task", quality.tasks(), ids=lambda t: t.name)
def test_every_phrase_means_what_the_task_says(task, world):
    for entry in task.erase:
        concept = world.meaning(entry.concept)
        assert concept is not None and concept.name == entry.concept
        assert world.meaning(entry.anchor) is not None and entry.anchor != entry.concept
        for phrase in (*entry.synonyms, *entry.associated):
            assert world.meaning(phrase) == concept, (phrase, entry.concept)
    for phrase, concept in task.held_out_erased:
        assert world.meaning(phrase).name == concept, phrase
    for concept in (*task.preserve, *task.held_out_preserved):
        assert world.meaning(concept).name == concept


@pytest.mark.parametrize("task", quality.tasks(), ids=lambda t: t.name)
def test_held_out_prompts_are_not_in_the_policy(task):
    listed = {p for e in task.erase for p in (e.concept, *e.synonyms, *e.associated)}
    erased = {e.concept for e in task.erase}
    for phrase, concept in task.held_out_erased:
        assert phrase not in listed and concept in erased
    touched = erased | set(task.preserve) | {e.anchor for e in task.erase}
    for concept in task.held_out_preserved:
        assert concept not in touched, concept


def test_the_suite_covers_the_issue():
    names = [t.name for t in quality.tasks()]
    assert names == ["pair", "colour", "shape", "associated", "set-2", "set-5", "set-10"]
    sizes = {t.name: len(t.erase) for t in quality.tasks()}
    assert (sizes["set-2"], sizes["set-5"], sizes["set-10"]) == (2, 5, 10)
    colour = next(t for t in quality.tasks() if t.name == "colour")
    assert {e.concept.split()[1] for e in colour.erase} == {"circle", "square", "triangle", "cross"}
    associated = next(t for t in quality.tasks() if t.name == "associated")
    assert not any(e.associated for e in associated.erase)  # reached only through held-out words


@pytest.mark.parametrize("method", quality.METHODS)
def test_every_task_compiles_for_every_method(method):
    for task in quality.tasks():
        plan = quality.compile_task(task, method)
        assert plan.method == method
        probes = {p.prompt: p.expect for p in plan.probes}
        assert len(probes) == len(task.held_out_erased) + len(task.held_out_preserved)


def test_sweep_beyond_radius_is_relative_to_the_radius():
    task = quality.tasks()[0]
    plan = quality.compile_task(task, "realera", radius=0.2, beyond=0.2 * 3.0)
    assert plan.erase[0].neighbors.radius == pytest.approx(0.2)
    assert plan.erase[0].neighbors.beyond_radius == pytest.approx(0.6)


def test_unit_keys_change_with_every_setting():
    base = quality.Unit("pair", "realera")
    keys = {base.key(), quality.Unit("pair", "uce").key(), quality.Unit("pair", "realera", radius=0.2).key(),
            quality.Unit("pair", "realera", beyond=3.0).key(), quality.Unit("pair", "realera", space="token").key(),
            quality.Unit("pair", "realera", samples_per_prompt=4).key()}
    assert len(keys) == 6
    assert base.key() == quality.Unit("pair", "realera").key()


def test_a_result_on_other_weights_of_its_world_has_a_key_of_its_own(monkeypatch):
    unit = quality.Unit("pair", "realera")
    keyless = unit.key()
    assert quality.world_sha256("builtin:shapes") == quality.KEYLESS_WORLD_SHA256["builtin:shapes"]
    monkeypatch.setitem(quality.WORLD_SHA256_OVERRIDE, "builtin:shapes", "ab" * 32)
    assert unit.key() != keyless
    monkeypatch.setitem(quality.WORLD_SHA256_OVERRIDE, "builtin:shapes", "cd" * 32)
    assert len({keyless, unit.key(), quality.Unit("pair", "realera").key()}) == 2
    with pytest.raises(SystemExit, match="only reports"):
        quality.measure(unit, Path("unused"))


def test_every_stored_result_is_found_under_the_weights_it_names(monkeypatch):
    """A stored result's file name is the key of the unit it records, on the weights it was measured on
    (results from before ``world_sha256`` was recorded: the keyless weights), so a report finds every one."""
    import json

    folder = quality.EMBLEM_RESULTS  # builtin:shapes' stored results are of engine version 4 (see below)
    records = [(f, json.loads(f.read_text())) for f in sorted(folder.glob("*/*.json"))]
    # an engine version is part of every key: results of an earlier engine are reported by that engine's code
    current = [(f, r) for f, r in records if r["engine_version"] == quality.engine_version()]
    assert len(current) >= 100
    for file, record in current:
        unit = quality.Unit(**{**record["unit"], "overrides": tuple(record["unit"].get("overrides", ()))})
        world = quality._task(unit.task).world
        sha = record.get("world_sha256", quality.KEYLESS_WORLD_SHA256[world])
        monkeypatch.setitem(quality.WORLD_SHA256_OVERRIDE, world, sha)
        assert file.name == f"{unit.method}-{unit.key()}.json", file


def test_world_sha256_is_for_reports_only():
    with pytest.raises(SystemExit, match="--report-only"):
        quality.main(["--world-sha256", "builtin:shapes=" + "ab" * 32])
    with pytest.raises(SystemExit, match="64 hex digits"):
        quality.main(["--report-only", "--world-sha256", "builtin:shapes=abc"])


def test_a_named_section_takes_the_tables_and_readme_is_left_alone(monkeypatch):
    written = []
    monkeypatch.setattr(report, "write_section", lambda name, markdown, doc=None: written.append((name, doc))
                        or quality.ROOT / "docs" / "benchmarks.md")
    assert quality.main(["--suite", "emblems", "--tasks", "test-e100", "--methods", "uce", "--report-only",
                         "--world-sha256", "builtin:emblems=" + quality.KEYLESS_WORLD_SHA256["builtin:emblems"],
                         "--section", "a-partial-table"]) == 0
    assert written == [("a-partial-table", None)]
    written.clear()
    quality.main(["--suite", "emblems", "--tasks", "test-e100", "--methods", "uce", "--report-only",
                  "--world-sha256", "builtin:emblems=" + quality.KEYLESS_WORLD_SHA256["builtin:emblems"]])
    assert [name for name, _ in written] == ["emblems-test", "emblems-e100"]  # the suite's own, and README's
    assert written[1][1] == quality.ROOT / "README.md"


def test_write_section_replaces_its_own_block_and_keeps_the_rest(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nprose\n", encoding="utf-8")
    report.write_section("speed", "first", doc)
    report.write_section("quality", "q1", doc)
    report.write_section("speed", "second", doc)
    text = doc.read_text(encoding="utf-8")
    assert "prose" in text and "second" in text and "q1" in text and "first" not in text
    assert text.count("<!-- bench:speed:begin -->") == 1
    assert text.index("second") < text.index("q1")  # replaced in place, not appended
