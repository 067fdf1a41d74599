"""The checked-in JSON Schema and policy reference match the pydantic models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from policykit.policy.loader import load_policy
from policykit.policy.schema import SCHEMA_FILE, json_schema, json_schema_text

REPO = Path(__file__).resolve().parents[1]
POLICIES = sorted((REPO / "policies").rglob("*.yaml"))


def _is_fragment(path: Path) -> bool:
    """A file some policy extends: not a complete policy on its own."""
    return any(path.resolve() in {s.resolve() for s in load_policy(p).sources[:-1]} for p in POLICIES)

REGENERATE_SCHEMA = "python -m policykit schema --out schemas/erasure-policy.v1alpha1.json"
REGENERATE_REFERENCE = "python -m policykit.policy.reference > docs/policy-reference.md"


def test_checked_in_schema_is_current():
    checked_in = (REPO / SCHEMA_FILE).read_text(encoding="utf-8")
    assert checked_in == json_schema_text(), f"schema is stale; run: {REGENERATE_SCHEMA}"


def test_schema_command_prints_the_same_text():
    out = subprocess.run([sys.executable, "-m", "policykit", "schema"], cwd=REPO,
                         capture_output=True, text=True, check=True)
    assert out.stdout == json_schema_text()


def test_schema_is_a_valid_draft_2020_12_schema_with_an_id():
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"].endswith("erasure-policy.v1alpha1.json")
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    assert "apiVersion" in schema["required"]
    assert schema["$defs"]["ClosedForm"]["properties"]["lambda"]["exclusiveMinimum"] == 0


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_every_shipped_policy_validates_against_the_schema(path):
    loaded = load_policy(path)
    if not loaded.ok and _is_fragment(path):
        pytest.skip("an incomplete base that other policies extend; checked as part of them")
    assert loaded.ok, [d.format_text() for d in loaded.diagnostics]
    # A policy built with extends is checked as merged: what apply will run.
    jsonschema.Draft202012Validator(json_schema()).validate(loaded.data)


def test_schema_rejects_what_the_loader_rejects():
    bad = load_policy(REPO / "tests" / "fixtures" / "policies" / "bad" / "many-problems.yaml").data
    errors = list(jsonschema.Draft202012Validator(json_schema()).iter_errors(bad))
    assert len(errors) >= 5


def test_checked_in_reference_is_current():
    from policykit.policy.reference import render_reference

    checked_in = (REPO / "docs" / "policy-reference.md").read_text(encoding="utf-8")
    assert checked_in == render_reference(), f"reference is stale; run: {REGENERATE_REFERENCE}"


def test_schema_out_writes_the_file(tmp_path):
    from policykit.cli import main

    out = tmp_path / "sub" / "schema.json"
    assert main(["schema", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == json_schema_text()
    assert json.loads(out.read_text())["title"] == "ErasurePolicy (policykit/v1alpha1)"


def test_every_diagnostic_code_is_documented():
    import re

    from policykit.policy.reference import DIAGNOSTIC_CODES

    sources = "".join((REPO / "policykit" / "policy" / name).read_text()
                      for name in ("yaml_tree.py", "loader.py", "schema_errors.py", "fmt.py"))
    emitted = set(re.findall(r'Diagnostic\(\s*"([a-z0-9-]+)"', sources))
    emitted |= set(re.findall(r'(?:self\.error|self\._error)\(\s*"([a-z0-9-]+)"', sources))
    emitted |= set(re.findall(r'return "([a-z-]+)", f?"', sources))
    emitted |= {"yaml-anchor", "yaml-alias"}  # built as f"yaml-{what}"
    assert len(emitted) > 20
    assert emitted <= set(DIAGNOSTIC_CODES), emitted - set(DIAGNOSTIC_CODES)
