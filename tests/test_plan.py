"""The compiled plan: resolved defaults, method presets, a hash that moves
with every setting, byte-identical output, and ``policykit plan`` exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import policykit
from policykit.cli import main
from policykit.plan import (DEFAULT_MIN_COSINE, DEFAULT_RADIUS, DEFAULT_SAMPLES, Plan, changed_inputs,
                            compile_plan, plan_json)
from policykit.policy.loader import load_policy

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests/fixtures/diff"

POLICY = """\
apiVersion: policykit/v1alpha1
kind: ErasurePolicy
metadata:
  name: t
  version: 1.0.0
base_model:
  id: builtin:shapes
  revision: main
defaults:
  strength: 0.9
  neighbors:
    samples: 8
erase:
  - concept: red circle
    anchor: gray circle
    synonyms: [crimson circle]
    neighbors:
      radius: 0.3
    templates: ["a {}", "a picture of a {}"]
  - concept: Mickey Mouse
    category: character
preserve:
  - concept: blue circle
audit:
  probes:
    - prompt: an apple
      expect: erased
      concept: red circle
training:
  method: realera
  seed: 3
"""


def write(directory: Path, text: str = POLICY, name: str = "policy.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def compiled(path: Path) -> Plan:
    loaded = load_policy(path)
    assert loaded.ok, [d.format_text() for d in loaded.diagnostics]
    return compile_plan(loaded)


def edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def test_every_field_is_resolved_from_entry_then_defaults_then_builtin(tmp_path):
    plan = compiled(write(tmp_path))
    red, mickey = plan.erase
    assert red.anchor == "gray circle" and mickey.anchor == "a character"   # category default
    assert red.templates == ("a {}", "a picture of a {}")
    assert mickey.templates[0] == "a photo of {}"
    assert red.strength == mickey.strength == 0.9                            # from defaults
    assert red.neighbors.radius == 0.3 and red.neighbors.beyond_radius == 0.6
    assert mickey.neighbors.radius == DEFAULT_RADIUS and mickey.neighbors.beyond_radius == 2 * DEFAULT_RADIUS
    assert red.neighbors.samples == red.neighbors.beyond_samples == 8        # beyond_samples follows samples
    assert mickey.neighbors.min_cosine == DEFAULT_MIN_COSINE and mickey.neighbors.space == "text"
    assert DEFAULT_SAMPLES == 16
    assert plan.probes[0].concept == "red circle" and plan.preserve[0].weight == 1.0
    assert plan.inputs.base_model.revision == "main" and plan.inputs.toolkit_version == policykit.__version__


def test_plan_json_is_byte_identical_across_compiles_and_directories(tmp_path):
    # extends, so that relative source paths are exercised too
    for name in ("old.yaml", "shared-defaults.yaml"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    elsewhere = tmp_path / "some" / "other" / "checkout"
    elsewhere.mkdir(parents=True)
    for name in ("old.yaml", "shared-defaults.yaml"):
        shutil.copy(FIXTURES / name, elsewhere / name)
    first = plan_json(compiled(tmp_path / "old.yaml"))
    assert first == plan_json(compiled(tmp_path / "old.yaml"))
    assert first == plan_json(compiled(elsewhere / "old.yaml"))
    assert str(tmp_path) not in first
    sources = [s["path"] for s in json.loads(first)["inputs"]["sources"]]
    assert sources == ["shared-defaults.yaml", "old.yaml"]  # the loader resolves extends


def test_from_json_round_trips_and_rejects_edits(tmp_path):
    plan = compiled(write(tmp_path))
    text = plan_json(plan)
    assert Plan.from_json(text) == plan
    doc = json.loads(text)
    doc["erase"][0]["strength"] = 0.1
    with pytest.raises(ValueError, match="plan_hash"):
        Plan.from_json(json.dumps(doc))
    with pytest.raises(ValueError, match="format_version"):
        Plan.from_json(json.dumps({**json.loads(text), "format_version": 99}))


@pytest.mark.parametrize("method, stages", [
    ("realera", ["mine_neighbors", "beyond_concept_regularization", "closed_form_refinement", "noise_alignment", "audit"]),
    ("realera-no-bcr", ["mine_neighbors", "closed_form_refinement", "noise_alignment", "audit"]),
    ("realera-cf", ["mine_neighbors", "beyond_concept_regularization", "closed_form_refinement", "audit"]),
    ("uce", ["closed_form_refinement", "audit"]),
    ("mace", ["closed_form_refinement", "mace_lora", "audit"]),
    ("esd", ["esd_finetune", "audit"]),
    ("esd-u", ["esd_finetune", "audit"]),
])
def test_method_presets_expand_to_their_stages(tmp_path, method, stages):
    plan = compiled(write(tmp_path, edit(POLICY, "method: realera", f"method: {method}")))
    assert plan.stage_names == stages
    alignment = plan.stage("noise_alignment")
    if alignment is not None:
        assert alignment.settings.target == "anchor"
    finetune = plan.stage("esd_finetune")
    if finetune is not None:
        assert finetune.settings.train == ("xattn" if method == "esd" else "noxattn")
        assert finetune.settings.negative_guidance == 1.0
    refinement = plan.stage("closed_form_refinement")
    if refinement is not None:
        assert refinement.settings.use_mined_neighbors == method.startswith("realera")
        assert refinement.settings.use_beyond_concept == (method in ("realera", "realera-cf"))
        assert refinement.settings.rows == (method if method in ("uce", "mace") else "realera")


@pytest.mark.parametrize("disabled, missing", [
    ("  closed_form:\n    enabled: false\n", "closed_form_refinement"),
    ("  lora:\n    enabled: false\n", "noise_alignment"),
])
def test_disabled_stages_are_left_out(tmp_path, disabled, missing):
    plan = compiled(write(tmp_path, POLICY + disabled))
    assert missing not in plan.stage_names and "mine_neighbors" in plan.stage_names


def test_disabled_audit_and_no_edit_stage(tmp_path, capsys):
    text = edit(POLICY, "audit:\n", "audit:\n  enabled: false\n")
    text += "  closed_form:\n    enabled: false\n  lora:\n    enabled: false\n"
    assert compiled(write(tmp_path, text)).stage_names == []
    main(["plan", str(tmp_path / "policy.yaml")])
    assert "warning: no-edit-stage" in capsys.readouterr().err


@pytest.mark.parametrize("old, new", [
    ("radius: 0.3", "radius: 0.35"),
    ("samples: 8", "samples: 9"),
    ("strength: 0.9", "strength: 0.8"),
    ("anchor: gray circle", "anchor: grey circle"),
    ("synonyms: [crimson circle]", "synonyms: [crimson circle, red disc]"),
    ('"a picture of a {}"]', '"an image of a {}"]'),
    ("category: character", "category: person"),
    ("concept: blue circle", "concept: blue circle\n    weight: 2"),
    ("expect: erased", "expect: preserved"),
    ("seed: 3", "seed: 4"),
    ("method: realera", "method: mace"),
    ("revision: main", "revision: v2"),
    ("  revision: main", "  revision: main\n  sha256: " + "a" * 64),
    ("id: builtin:shapes", "id: ./models/shapes"),
    ("version: 1.0.0", "version: 1.0.1"),
    ("training:\n", "output:\n  dir: elsewhere\ntraining:\n"),
    ("training:\n", "training:\n  lora:\n    rank: 8\n"),
    ("training:\n", "training:\n  closed_form:\n    lambda: 0.5\n"),
    ("audit:\n", "audit:\n  thresholds:\n    max_efficacy_accuracy: 0.05\n"),
    ("audit:\n", "audit:\n  samples_per_prompt: 2\n"),
])
def test_plan_hash_changes_with_every_setting(tmp_path, old, new):
    before = compiled(write(tmp_path / "a"))
    after = compiled(write(tmp_path / "b", edit(POLICY, old, new)))
    assert before.plan_hash != after.plan_hash
    assert before.inputs.policy_sha256 != after.inputs.policy_sha256


def test_a_comment_changes_the_source_hash_but_not_the_policy_hash(tmp_path):
    before = compiled(write(tmp_path / "a"))
    after = compiled(write(tmp_path / "b", "# reviewed\n" + POLICY))
    assert before.inputs.policy_sha256 == after.inputs.policy_sha256
    assert before.plan_hash != after.plan_hash
    assert changed_inputs(before, after) == ["source policy.yaml changed"]


def test_changed_inputs_names_what_moved(tmp_path, monkeypatch):
    stored = compiled(write(tmp_path / "a"))
    assert changed_inputs(stored, compiled(write(tmp_path / "a"))) == []
    current = compiled(write(tmp_path / "b", edit(POLICY, "revision: main", "revision: v2")))
    changes = changed_inputs(stored, current)
    assert any(c.startswith("policy content changed") for c in changes)
    assert any("base model changed (builtin:shapes@main -> builtin:shapes@v2)" in c for c in changes)
    monkeypatch.setattr(policykit, "__version__", "9.9.9")
    assert changed_inputs(stored, compiled(write(tmp_path / "a"))) == \
        [f"toolkit version changed ({stored.inputs.toolkit_version} -> 9.9.9)"]


# ------------------------------------------------------------------ the artifact identity

#: POLICY with only concepts builtin:shapes can draw, for the commands that check that.
SHAPES_POLICY = edit(POLICY, "  - concept: Mickey Mouse\n    category: character\n", "")


@pytest.mark.parametrize("old, new", [
    ("erase:\n", "# reviewed by the trust team\nerase:\n"),        # a comment
    ("  strength: 0.9\n", "  strength: 0.9  # same value\n"),
    ("    samples: 8\n", "    samples: 8\n    beyond_samples: 8\n"),  # a default spelled out
    ("training:\n", "output:\n  dir: elsewhere\n  signing_key: k.pem\ntraining:\n"),  # where, not what
])
def test_the_identity_ignores_what_does_not_change_the_artifact(tmp_path, old, new):
    from policykit.plan import artifact_identity

    before = compiled(write(tmp_path / "a", SHAPES_POLICY))
    after = compiled(write(tmp_path / "b", edit(SHAPES_POLICY, old, new)))
    assert artifact_identity(before, "ab" * 32, {"engine_version": 3}) == \
        artifact_identity(after, "ab" * 32, {"engine_version": 3})


def test_the_identity_covers_the_plan_the_model_and_the_engine(tmp_path, monkeypatch):
    from policykit.plan import artifact_identity

    plan = compiled(write(tmp_path / "a", SHAPES_POLICY))
    engine = {"engine_version": 3, "shell_mass": 0.5}
    identity = artifact_identity(plan, "ab" * 32, engine)
    assert artifact_identity(plan, "cd" * 32, engine) != identity                                 # model bytes
    assert artifact_identity(plan, "ab" * 32, {**engine, "engine_version": 4}) != identity        # engine
    assert artifact_identity(plan, "ab" * 32, {**engine, "shell_mass": 1.0}) != identity          # its options
    for old, new in (("radius: 0.3", "radius: 0.4"), ("seed: 3", "seed: 4"), ("version: 1.0.0", "version: 1.0.1"),
                     ("audit:\n", "audit:\n  guidance_scales: [7.5]\n")):
        changed = compiled(write(tmp_path / "b", edit(SHAPES_POLICY, old, new)))
        assert artifact_identity(changed, "ab" * 32, engine) != identity, (old, new)
    monkeypatch.setattr(policykit, "__version__", "9.9.9")  # the toolkit's version is provenance only
    assert artifact_identity(compiled(write(tmp_path / "a", SHAPES_POLICY)), "ab" * 32, engine) == identity


def _publish_stand_in(root: Path, policy: Path, *, engine=None) -> Path:
    """What apply leaves for plan to compare: plan.json and a manifest with the artifact identity (the
    weights do not matter here; tests/test_apply_identity.py runs the real apply)."""
    from policykit.apply import engine_settings, resolve_base_model
    from policykit.artifact.manifest import write_manifest
    from policykit.plan import artifact_identity

    loaded = load_policy(policy)
    plan = compile_plan(loaded)
    model_sha = plan.inputs.base_model.sha256 or resolve_base_model(loaded, plan).sha256()
    engine = engine or engine_settings(plan)
    path = root / plan.output.dir / plan.inputs.policy_name / plan.inputs.policy_version
    path.mkdir(parents=True)
    (path / "plan.json").write_text(plan_json(plan))
    write_manifest(path, {"kind": "policykit-artifact", "status": "passed",
                          "inputs_id": artifact_identity(plan, model_sha, engine),
                          "policy": {"name": plan.inputs.policy_name, "version": plan.inputs.policy_version},
                          "plan": {"hash": plan.plan_hash}, "base_model": {"id": plan.inputs.base_model.id,
                                                                          "sha256": model_sha},
                          "engine": engine, "signer": None})
    return path


def test_plan_exits_0_exactly_when_the_artifact_has_this_identity(tmp_path, monkeypatch, capsys):
    from policykit.realera import engine

    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, SHAPES_POLICY)
    assert main(["plan", "--no-model", str(path)]) == 2
    assert "apply would create it" in capsys.readouterr().out
    _publish_stand_in(tmp_path, path)
    assert main(["plan", "--no-model", str(path)]) == 0
    assert "nothing to do" in capsys.readouterr().out

    write(tmp_path, "# reviewed\n" + SHAPES_POLICY)  # a comment: the same artifact, no version bump needed
    assert main(["plan", "--no-model", str(path)]) == 0
    capsys.readouterr()

    monkeypatch.setattr(engine, "ENGINE_VERSION", engine.ENGINE_VERSION + 1)  # the engine changed
    assert main(["plan", "--no-model", str(path), "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "conflict" and f"engine version {engine.ENGINE_VERSION - 1} -> " in doc["message"]
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)

    write(tmp_path, edit(SHAPES_POLICY, "radius: 0.3", "radius: 0.4"))
    assert main(["plan", "--no-model", str(path), "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["format_version"] == 1 and doc["status"] == "conflict"
    assert "plan: 1 radius widened" in doc["message"] and "bump metadata.version" in doc["message"]
    assert doc["plan"]["erase"][0]["neighbors"]["radius"] == 0.4


MODEL_POLICY = """\
apiVersion: policykit/v1alpha1
kind: ErasurePolicy
metadata:
  name: local
  version: 1.0.0
base_model:
  id: ./model
erase:
  - concept: red circle
    anchor: gray circle
"""


def test_an_unpinned_model_that_changed_is_a_change_and_a_pinned_one_needs_no_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    (model / "weights.bin").write_bytes(b"\0" * 64)
    path = write(tmp_path, MODEL_POLICY)
    _publish_stand_in(tmp_path, path)
    assert main(["plan", "--no-model", str(path)]) == 0
    (model / "weights.bin").write_bytes(b"\1" * 64)  # new bytes under the same name: apply would see them
    assert main(["plan", "--no-model", str(path)]) == 2
    assert "base model sha256" in " ".join(capsys.readouterr().out.split())

    shutil.rmtree(model)  # unpinned and gone: apply could not tell, and neither can plan
    assert main(["plan", "--no-model", str(path)]) == 1
    assert "model-not-available" in capsys.readouterr().err

    pinned = tmp_path / "pinned"
    pinned.mkdir()
    policy = write(pinned, MODEL_POLICY.replace("  id: ./model\n", "  id: ./model\n  sha256: " + "a" * 64 + "\n")
                   .replace("name: local", "name: pinned"))
    _publish_stand_in(tmp_path, policy)
    assert main(["plan", "--no-model", str(policy)]) == 0  # compared by its pin: no model needed


# ------------------------------------------------------------------ the command


def test_plan_command_exit_codes_follow_the_artifact(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, SHAPES_POLICY)
    out, graph = tmp_path / "plan.json", tmp_path / "graph.svg"
    assert main(["plan", str(path), "--out", str(out), "--graph", str(graph)]) == 2
    text = capsys.readouterr().out
    assert "apply would create it" in text and "red circle" in text and "closed_form_refinement" in text
    plan = Plan.from_json(out.read_text())
    assert plan.plan_hash in text and graph.read_text().startswith("<svg")

    _publish_stand_in(tmp_path, path)
    assert main(["plan", str(path)]) == 0
    assert "nothing to do" in capsys.readouterr().out

    write(tmp_path, edit(SHAPES_POLICY, "radius: 0.3", "radius: 0.4"))
    assert main(["plan", str(path), "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["format_version"] == 1 and doc["status"] == "conflict"


def test_plan_command_fails_on_graph_conflicts(tmp_path, capsys):
    path = write(tmp_path, edit(SHAPES_POLICY, "concept: blue circle", "concept: crimson circle"))
    assert main(["plan", str(path), "--format", "github"]) == 1
    out = capsys.readouterr()
    assert "::error file=" in out.err and "erase-preserve-conflict" in out.err
    assert main(["plan", str(path), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "error" and doc["diagnostics"][0]["code"] == "erase-preserve-conflict"


def test_plan_command_fails_on_invalid_policy(tmp_path, capsys):
    path = write(tmp_path, edit(POLICY, "radius: 0.3", "radius: -1"))
    assert main(["plan", str(path)]) == 1
    assert "error" in capsys.readouterr().err


def test_a_bare_policy_compiles_without_source_hashes(tmp_path):
    loaded = load_policy(write(tmp_path))
    from_loaded, from_policy = compile_plan(loaded), compile_plan(loaded.policy)
    assert from_policy.inputs.sources == () and from_loaded.inputs.sources[0].path == "policy.yaml"
    assert from_policy.erase == from_loaded.erase and from_policy.stages == from_loaded.stages
    assert from_policy.plan_hash != from_loaded.plan_hash


CATALOG = """\
catalog:
  names: [green triangle, Mickey  mouse, yellow star, blue circle, an apple, purple cross, yellow star]
  mass: 1.5
  audited: 2
"""


def test_a_catalog_preserves_its_names_at_the_mass_rule_and_audits_a_sample(tmp_path):
    from policykit.audit.sampling import audit_prompts

    plan = compiled(write(tmp_path, edit(POLICY, "training:\n", CATALOG + "training:\n")))
    catalog = plan.catalog
    # what the policy already places (erased, preserved, a probe's prompt and concept) is left out, a name
    # listed twice is kept once, compared as the loader compares concepts
    assert catalog.names == ("green triangle", "yellow star", "an apple", "purple cross")
    assert catalog.left_out == ("Mickey  mouse", "blue circle")
    assert catalog.weight == pytest.approx(1.5 * 2 / 4)
    catalogued = [p for p in plan.preserve if p.concept in catalog.names]
    assert [p.concept for p in plan.preserve[:1]] == ["blue circle"] and len(catalogued) == 4
    assert {p.weight for p in catalogued} == {catalog.weight}
    # the audit checks the listed preserve and the sample, drawn with the training seed
    assert len(catalog.audited) == 2 and set(catalog.audited) <= set(catalog.names)
    preserved = {p.concept for p in audit_prompts(plan) if p.role == "preserved"}
    assert preserved == {"blue circle", *catalog.audited}
    again = compiled(write(tmp_path / "again", edit(POLICY, "training:\n", CATALOG + "training:\n")))
    assert again.catalog.audited == catalog.audited
    other_seed = edit(edit(POLICY, "  seed: 3\n", "  seed: 4\n"), "training:\n", CATALOG + "training:\n")
    assert compiled(write(tmp_path / "seed", other_seed)).catalog.names == catalog.names


def test_a_plan_without_a_catalog_hashes_and_writes_as_before_catalogs(tmp_path):
    plan = compiled(write(tmp_path))
    assert plan.catalog is None and "catalog" not in plan.body() and '"catalog"' not in plan_json(plan)
    assert Plan.from_json(plan_json(plan)) == plan
    with_catalog = compiled(write(tmp_path / "c", edit(POLICY, "training:\n", CATALOG + "training:\n")))
    assert Plan.from_json(plan_json(with_catalog)) == with_catalog


def test_a_catalog_needs_names_or_a_world(tmp_path, capsys):
    path = write(tmp_path, edit(POLICY, "training:\n", "catalog:\n  mass: 2\ntraining:\n"))
    assert main(["validate", str(path)]) != 0
    assert "a catalog needs names" in capsys.readouterr().out


def test_a_builtin_catalog_is_every_entity_of_the_world_but_the_placed_ones(tmp_path):
    from policykit.emblems.world import load_world

    names = [e.name for e in load_world().entities]
    text = edit(POLICY, "  id: builtin:shapes\n", "  id: builtin:emblems\n")
    text = edit(text, "  - concept: Mickey Mouse\n", f"  - concept: {names[0]}\n")
    plan = compiled(write(tmp_path, edit(text, "training:\n", "catalog:\n  builtin: builtin:emblems\ntraining:\n")))
    assert plan.catalog.names == tuple(names[1:]) and plan.catalog.left_out == (names[0],)
    assert plan.catalog.weight == pytest.approx(round(2.0 * 2 / (len(names) - 1), 6))
