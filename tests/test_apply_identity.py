"""One meaning of "unchanged": plan, diff and apply agree on the artifact identity.

A comment changes nothing (plan exits 0, diff exits 0, apply does nothing,
no version bump); an engine change, or new bytes in an unpinned model, is a
change to all three. Real applies on the tiny pipeline (closed form only, no
audit: the identity is what is tested here).
"""

import shutil

import pytest

from policykit.apply import ApplyError, apply_policy
from policykit.cli import main

POLICY = """\
apiVersion: policykit/v1alpha1
kind: ErasurePolicy
metadata:
  name: tiny
  version: 1.0.0
base_model:
  id: ./model
defaults:
  neighbors:
    samples: 2
  templates: ["a photo of {}"]
erase:
  - concept: red circle
    anchor: blue circle
training:
  seed: 3
  lora:
    enabled: false
audit:
  enabled: false
"""


@pytest.fixture
def published(tmp_path, tiny_model, monkeypatch):
    """A policy on a copy of the tiny model (unpinned), applied once."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model, tmp_path / "model")
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    first = apply_policy(policy)
    assert first.status == "created"
    return policy, first


def test_a_comment_is_no_change_to_plan_diff_or_apply(published, tmp_path, capsys):
    policy, first = published
    assert main(["plan", "--no-model", str(policy)]) == 0
    old = tmp_path / "old.yaml"
    shutil.copy(policy, old)
    policy.write_text("# reviewed by the trust team, no change\n" + POLICY.replace("seed: 3", "seed: 3  # fixed"))
    assert main(["diff", str(old), str(policy)]) == 0
    assert main(["plan", "--no-model", str(policy)]) == 0
    capsys.readouterr()
    again = apply_policy(policy)
    assert again.status == "unchanged" and again.manifest["content_id"] == first.manifest["content_id"]
    assert main(["apply", str(policy)]) == 0
    assert "up to date" in capsys.readouterr().err


def test_an_engine_change_is_seen_by_plan_and_apply(published, monkeypatch, capsys):
    from policykit.realera import engine

    policy, first = published
    monkeypatch.setattr(engine, "ENGINE_VERSION", engine.ENGINE_VERSION + 1)
    assert main(["plan", "--no-model", str(policy)]) == 2
    assert "engine version" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(ApplyError, match=f"engine version {engine.ENGINE_VERSION - 1} -> {engine.ENGINE_VERSION}"):
        apply_policy(policy)
    default = engine.EngineOptions().shell_mass
    monkeypatch.setattr(engine, "EngineOptions", _with_default(engine.EngineOptions, shell_mass=default + 0.5))
    with pytest.raises(ApplyError, match=f"engine options changed: shell_mass {default:g} -> {default + 0.5:g}"):
        apply_policy(policy)
    assert first.manifest["engine"]["engine_version"] == engine.ENGINE_VERSION - 1  # what built it is recorded


def _with_default(options_class, **changed):
    import dataclasses

    return dataclasses.make_dataclass(options_class.__name__, [
        (f.name, f.type, dataclasses.field(default=changed.get(f.name, f.default)))
        for f in dataclasses.fields(options_class)], frozen=True)


def test_an_unpinned_model_that_changed_is_a_change_to_plan_and_apply(published, tmp_path, capsys):
    policy, _ = published
    index = tmp_path / "model" / "model_index.json"
    index.write_text(index.read_text() + "\n")  # new bytes under the same name
    assert main(["plan", "--no-model", str(policy)]) == 2
    assert "base model sha256" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(ApplyError, match="base model sha256"):
        apply_policy(policy)
