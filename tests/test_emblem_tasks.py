"""The emblems benchmark's style and object tasks (benchmarks/emblem_tasks.py) judge what they say.

Without a model: every concept a task's audit judges has a meaning, the anchors
and held-out phrases are what the task's kind needs, and the benchmark's
classifier reads a pattern, a shape and ``attribute=value`` pairs off clean
renders, rejecting an image that lacks them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import emblem_tasks  # noqa: E402
import quality  # noqa: E402


@pytest.fixture(scope="module")
def world():
    from policykit.emblems.world import load_world

    return load_world()


@pytest.mark.parametrize("task", emblem_tasks.style_tasks(), ids=lambda t: t.name)
def test_every_judged_concept_of_a_style_or_object_task_has_a_meaning(task, world):
    from policykit.audit.sampling import audit_prompts

    plan = quality.compile_task(task, "realera")
    prompts = audit_prompts(plan)
    assert {p.role for p in prompts} >= {"erased", "preserved", "probe-erased", "probe-preserved"}
    for prompt in prompts:
        assert emblem_tasks.judged_meaning(world, prompt.concept) is not None, prompt
    # what is held out is not in the policy
    listed = {plan.erase[0].concept, *plan.erase[0].synonyms, *plan.erase[0].associated}
    for prompt in prompts:
        if prompt.role == "probe-erased":
            assert not any(prompt.prompt.endswith(f" {phrase}") for phrase in listed if " " in phrase)


def test_the_style_task_erases_a_pattern_towards_the_plain_style_and_checks_the_object_is_kept(world):
    task = next(t for t in emblem_tasks.style_tasks() if t.name == "test-style-striped")
    assert task.erase[0].concept == "striped" and task.erase[0].anchor == world.neutral_pattern
    kept = [c for _, c, expect in task.probes if expect == "preserved" and "=" in c]
    assert kept and all(emblem_tasks.judged_meaning(world, c).pattern is None for c in kept)
    residue = [p for p, c, expect in task.probes if expect == "erased"]
    assert any("zebra style" in p for p in residue) and not any("striped" in p for p in residue)


def test_the_entity_style_task_anchors_the_entity_in_the_plain_style(world):
    for task in (t for t in emblem_tasks.style_tasks() if t.name.endswith("entity-style")):
        emblem = world.entity(task.erase[0].concept).emblem
        anchor = world.meaning(task.erase[0].anchor)
        assert anchor.pattern == world.neutral_pattern != emblem.pattern
        assert (anchor.shape, anchor.colour, anchor.background) == (emblem.shape, emblem.colour, emblem.background)
        # the listed and held-out entities wear the same pattern: the style must stay on them
        assert all(world.entity(n).emblem.pattern == emblem.pattern for n in (*task.preserve, *task.held_out_preserved))


def test_judged_meaning_reads_patterns_shapes_and_pairs(world):
    assert emblem_tasks.judged_meaning(world, "banded").attributes() == {"pattern": "striped"}
    assert emblem_tasks.judged_meaning(world, "pentagram").attributes() == {"shape": "star"}
    assert emblem_tasks.judged_meaning(world, "shape=star,colour=red").attributes() == {"shape": "star", "colour": "red"}
    assert emblem_tasks.judged_meaning(world, "a scarlet disc in zebra style").pattern == "striped"
    assert emblem_tasks.judged_meaning(world, "nothing at all") is None
    with pytest.raises(ValueError, match="unknown"):
        emblem_tasks.judged_meaning(world, "shape=blob")


def test_the_benchmark_classifier_judges_clean_renders(world):
    from policykit.emblems.render import render_emblem
    from policykit.emblems.world import Emblem

    rng = np.random.default_rng(0)
    striped_star = render_emblem(world, Emblem("star", "red", "striped", "cream"), rng)
    plain_circle = render_emblem(world, Emblem("circle", "red", "solid", "cream"), rng)
    images = np.stack([striped_star, plain_circle])
    classifier = quality.task_classifier("builtin:emblems")
    assert classifier.shows(images, "striped") == [True, False]
    assert classifier.shows(images, "star") == [True, False]
    assert classifier.shows(images, "shape=circle,colour=red,background=cream") == [False, True]
    assert classifier.shows(images, "a red star in stripes") == [True, False]
    with pytest.raises(ValueError):
        classifier.shows(images, "zorble")


@pytest.mark.parametrize("name", ["dev-e10-d0", "test-e100"])
def test_the_retain_catalog_never_holds_an_entity_the_task_scores(name, world):
    task = quality._task(name)
    catalog = emblem_tasks.catalog_names(task)
    scored = ({e.concept for e in task.erase} | set(task.preserve) | set(task.held_out_preserved)
              | {concept for _, concept in task.held_out_erased})
    assert catalog and not set(catalog) & scored
    assert len(catalog) == len(world.entities) - len(scored & {e.name for e in world.entities})
    # the catalog is preserved by the unit's policy, on top of the task's own preserves; the key of a unit
    # without it is what it was, so stored results stay found
    unit = quality.method_unit(name, "uce[catalog=1]", 1)
    assert unit.catalog and unit.label() == "uce (+ catalog)"
    assert unit.key() != quality.method_unit(name, "uce", 1).key()
    # the policy's catalog, as the compiler resolves it, is exactly the task's catalog: the names it leaves
    # out are those the task scores
    plan = quality.compile_task(task, "uce", catalog=True)
    assert [p.concept for p in plan.preserve] == list(task.preserve) + list(catalog)
    assert plan.catalog.names == catalog and plan.catalog.weight == 1.0 and not plan.catalog.audited
    assert "catalog" not in quality.policy_dict(task, "uce")
    # with a mass, the catalog's names together weigh that many times the erased names
    weighted = quality.compile_task(task, "realera", catalog=True, catalog_mass=2.0).preserve[len(task.preserve):]
    assert sum(p.weight for p in weighted) == pytest.approx(2.0 * len(task.erase), rel=1e-4)
    assert quality.method_unit(name, "realera[catalog=1;catalog_mass=2]", 1).label() == "realera (+ catalog x2)"
    with pytest.raises(SystemExit, match="needs catalog"):
        quality.method_unit(name, "realera[catalog_mass=2]", 1)


def test_plan_identity_hashes_each_stored_plan_and_a_changed_setting_changes_its_hash(tmp_path, capsys):
    import json

    import plan_identity

    unit = {"task": "test-e1-d0", "method": "uce", "samples_per_prompt": 4}
    for name, overrides in (("a", []), ("b", [["training.closed_form.lambda", 5.0]])):
        folder = tmp_path / "test-e1-d0"
        folder.mkdir(exist_ok=True)
        (folder / f"uce-{name}.json").write_text(json.dumps({"unit": {**unit, "overrides": overrides}}))
    (tmp_path / "test-e1-d0" / "base-x.json").write_text(json.dumps({"unit": {**unit, "method": "base"}}))
    assert plan_identity.main(["--results", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["test-e1-d0/uce-a.json", "test-e1-d0/uce-b.json"]
    (a_plan, a_eval), (b_plan, b_eval) = (line.split()[1:] for line in lines)
    assert a_plan != b_plan and a_eval == b_eval
    assert plan_identity.main(["--results", str(tmp_path), "--engine-view"]) == 0
    (a_view, _), (b_view, _) = (line.split()[1:] for line in capsys.readouterr().out.splitlines())
    assert a_view != b_view and a_view != a_plan
