"""Every policy shipped in policies/ loads, has a clean concept graph and compiles."""

from pathlib import Path

import pytest

from policykit.diagnostics import has_errors
from policykit.graph import build_graph
from policykit.plan import compile_plan, plan_json
from policykit.policy.loader import load_policy

REPO = Path(__file__).resolve().parents[1]
POLICIES = sorted((REPO / "policies").rglob("*.yaml"))


def test_there_are_example_policies():
    names = {p.name for p in POLICIES}
    assert {"demo.yaml", "brand-safety.yaml", "explicit-content.yaml", "artist-styles.yaml"} <= names


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_shipped_policy_is_valid_and_compiles(path):
    loaded = load_policy(path)
    assert loaded.ok, [d.format_text() for d in loaded.diagnostics]
    graph = build_graph(loaded)
    assert not has_errors(graph.diagnostics), [d.format_text() for d in graph.diagnostics]
    plan = compile_plan(loaded)
    assert plan.erase and plan.stages
    assert plan_json(plan) == plan_json(compile_plan(load_policy(path)))


def test_an_example_uses_extends_and_inherits_from_both_bases():
    plan = compile_plan(load_policy(REPO / "policies" / "kids-safe.yaml"))
    erased = {c.concept for c in plan.erase}
    assert {"nudity", "Mickey Mouse", "graphic violence"} <= erased
    assert plan.inputs.policy_name == "kids-safe"
    assert len(plan.inputs.sources) == 3


def test_the_100_entity_policy_is_what_its_script_writes():
    """policies/brand-emblems-100.yaml is the test-e100 task as benchmarks/emblem_tasks.py writes it."""
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    from emblem_tasks import POLICY_100, policy_text

    assert (REPO / POLICY_100).read_text(encoding="utf-8") == policy_text(), \
        "stale: run python benchmarks/emblem_tasks.py --write-policy"
    plan = compile_plan(load_policy(REPO / POLICY_100))
    assert len(plan.erase) == 100
