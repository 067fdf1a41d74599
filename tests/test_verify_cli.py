"""`policykit keygen` and `policykit verify` on a stored artifact (no model: a hand-built, complete artifact)."""

import json
import shutil

import pytest

from policykit.artifact.layout import ArtifactLocation
from policykit.artifact.manifest import write_manifest
from policykit.artifact.publish import ArtifactWriter
from policykit.artifact.signing import sign_directory
from policykit.cli import main
from policykit.hashing import sha256_hex

POLICY = """\
apiVersion: policykit/v1alpha1
kind: ErasurePolicy
metadata:
  name: {name}
  version: {version}
base_model:
  id: builtin:shapes
erase:
  - concept: red circle
"""


def _publish(tmp_path, key=None, name="demo", version="1.0.0"):
    """A complete artifact as apply lays it out (policy, plan, edit.json, a delta, manifest), signed with ``key``."""
    from policykit.plan import compile_plan, plan_json
    from policykit.policy.loader import load_policy

    source = tmp_path / f"{name}-{version}.yaml"
    source.write_text(POLICY.format(name=name, version=version))
    plan = compile_plan(load_policy(source))
    loc = ArtifactLocation(tmp_path / "out", name, version)
    with ArtifactWriter(loc) as writer:
        staging = writer.staging
        (staging / "policy.yaml").write_bytes(source.read_bytes())
        (staging / "plan.json").write_text(plan_json(plan))
        (staging / "weights").mkdir()
        (staging / "weights" / "cross_attention_delta.safetensors").write_bytes(b"\x00\x01" * 100)
        (staging / "weights" / "edit.json").write_text(json.dumps(
            {"format_version": 1, "method": plan.method, "plan_hash": plan.plan_hash,
             "delta_file": "cross_attention_delta.safetensors", "lora_dir": None}))
        write_manifest(staging, {
            "kind": "policykit-artifact", "status": "passed",
            "policy": {"name": name, "version": version, "sha256": plan.inputs.policy_sha256,
                       "file_sha256": sha256_hex((staging / "policy.yaml").read_bytes())},
            "plan": {"hash": plan.plan_hash, "file_sha256": sha256_hex((staging / "plan.json").read_bytes()),
                     "method": plan.method}})
        writer.commit(signature=sign_directory(writer.staging, key) if key else None)
    return loc


@pytest.fixture()
def keys(tmp_path, capsys):
    assert main(["keygen", "--out", str(tmp_path / "keys"), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_keygen_then_verify(tmp_path, capsys, keys):
    assert keys["fingerprint"].startswith("sha256:")
    loc = _publish(tmp_path, keys["private_key"])

    assert main(["verify", str(loc.path), "--public-key", keys["public_key"]]) == 0
    assert "signature, place and all file hashes match" in capsys.readouterr().out

    delta = loc.path / "weights" / "cross_attention_delta.safetensors"
    delta.write_bytes(b"\x00\x01" * 99 + b"\x00\x02")
    assert main(["verify", str(loc.path), "--public-key", keys["public_key"], "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and "weights/cross_attention_delta.safetensors: changed" in report["problems"]


def test_verify_without_key_checks_integrity_and_unsigned_fails_with_key(tmp_path, capsys):
    loc = _publish(tmp_path)
    assert main(["verify", str(loc.path)]) == 0
    assert "integrity only" in capsys.readouterr().out
    assert main(["keygen", "--out", str(tmp_path / "k")]) == 0
    capsys.readouterr()
    assert main(["verify", str(loc.path), "--public-key", str(tmp_path / "k" / "policykit-signing.pub")]) == 1
    assert "unsigned" in capsys.readouterr().out


def test_verify_missing_directory(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nope")]) == 1
    assert "no such artifact" in capsys.readouterr().out


@pytest.mark.parametrize("name, version", [("kids-safe", "1.0.0"), ("demo", "1.0.1"), ("demo", "9.9.9")])
def test_a_signed_artifact_copied_to_another_name_or_version_fails_verify(tmp_path, capsys, keys, name, version):
    loc = _publish(tmp_path, keys["private_key"])
    other = ArtifactLocation(loc.output_dir, name, version)
    other.policy_dir.mkdir(exist_ok=True)
    shutil.copytree(loc.path, other.path)
    shutil.copy(loc.signature, other.signature)
    assert main(["verify", str(loc.path), "--public-key", keys["public_key"]]) == 0  # the original is fine
    capsys.readouterr()
    assert main(["verify", str(other.path), "--public-key", keys["public_key"]]) == 1
    out = capsys.readouterr().out
    assert "place: the manifest is for 'demo' version '1.0.0'" in out and f"{name}/{version}" in out


def test_a_symlink_to_a_signed_artifact_is_at_the_place_it_is_named(tmp_path, capsys, keys):
    loc = _publish(tmp_path, keys["private_key"])
    other = ArtifactLocation(loc.output_dir, "kids-safe", "1.0.0")
    other.policy_dir.mkdir()
    other.path.symlink_to(loc.path, target_is_directory=True)
    shutil.copy(loc.signature, other.signature)
    assert main(["verify", str(other.path), "--public-key", keys["public_key"]]) == 1
    assert "place: the manifest is for 'demo' version '1.0.0', but the artifact sits at kids-safe/1.0.0" in \
        capsys.readouterr().out


def test_verify_without_a_key_says_the_manifest_is_unauthenticated(tmp_path, capsys, keys):
    loc = _publish(tmp_path, keys["private_key"])
    manifest = json.loads((loc.path / "manifest.json").read_text())
    manifest["status"] = "failed"  # a statement of the manifest itself: no file hash covers it
    (loc.path / "manifest.json").write_text(json.dumps(manifest))
    assert main(["verify", str(loc.path)]) == 0
    out = capsys.readouterr().out
    assert "UNAUTHENTICATED" in out and "rewrite both" in out and "--public-key" in out
    assert main(["verify", str(loc.path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["authenticated"] is False and "unauthenticated" in report["note"]
    assert main(["verify", str(loc.path), "--public-key", keys["public_key"]]) == 1  # the key catches it


def test_plan_and_policy_must_agree_with_the_manifest(tmp_path, capsys):
    from policykit.artifact.manifest import hash_files, content_id

    loc = _publish(tmp_path)
    (tmp_path / "o").mkdir()
    other = _publish(tmp_path / "o", version="2.0.0")
    # another valid plan, with the file list rehashed (what anyone can do without the key)
    shutil.copy(other.path / "plan.json", loc.path / "plan.json")
    manifest = json.loads((loc.path / "manifest.json").read_text())
    manifest["files"] = hash_files(loc.path)
    manifest["content_id"] = content_id(manifest["files"])
    (loc.path / "manifest.json").write_text(json.dumps(manifest))
    assert main(["verify", str(loc.path)]) == 1
    out = capsys.readouterr().out
    assert "plan.json: its sha256 is not the one the manifest states" in out
    assert "compiled from demo 2.0.0" in out
