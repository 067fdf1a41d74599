"""A key given to apply is never ignored: an artifact already published unsigned is signed with
``policykit sign`` (apply refuses and says so), atomically, and only when it verifies."""

import os

import pytest

from policykit.apply import apply_policy
from policykit.artifact.signing import generate_key_pair
from policykit.artifact.verify import verify_artifact
from policykit.cli import main
from policykit.testing import HalfBright

POLICY = """\
apiVersion: policykit/v1alpha1
kind: ErasurePolicy
metadata:
  name: tiny
  version: 1.0.0
base_model:
  id: {model}
defaults:
  neighbors:
    samples: 2
  templates: ["a photo of {{}}"]
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
def unsigned(tmp_path, tiny_model, monkeypatch):
    """A policy and the artifact apply published for it without a key (the quick start's state)."""
    monkeypatch.chdir(tmp_path)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(model=tiny_model))
    outcome = apply_policy(policy, classifier=HalfBright())
    assert outcome.status == "created" and not outcome.signed
    return policy, outcome.path


def _err(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())  # rich wraps long lines


def test_apply_with_a_key_on_an_unsigned_artifact_refuses_and_says_how_to_sign_it(unsigned, tmp_path, capsys):
    policy, path = unsigned
    keys = generate_key_pair(tmp_path / "keys")
    signature = path.parent / "1.0.0.sig"

    assert main(["apply", str(policy), "--sign-key", str(keys.private_key)]) == 1
    err = _err(capsys)
    assert f"policykit sign {path} --key {keys.private_key}" in err and "unsigned" in err
    assert not signature.exists()
    assert main(["plan", str(policy), "--no-model", "--sign-key", str(keys.private_key)]) == 2  # plan agrees
    capsys.readouterr()

    assert main(["sign", str(path), "--key", str(keys.private_key)]) == 0
    assert signature.is_file() and not signature.with_name("1.0.0.sig.tmp").exists()
    assert verify_artifact(path, keys.public_key).ok
    capsys.readouterr()
    assert main(["apply", str(policy), "--sign-key", str(keys.private_key)]) == 0
    assert "up to date" in _err(capsys)
    assert main(["plan", str(policy), "--no-model", "--sign-key", str(keys.private_key)]) == 0

    other = generate_key_pair(tmp_path / "other")
    assert main(["sign", str(path), "--key", str(other.private_key)]) == 1
    assert "already signed" in _err(capsys) and verify_artifact(path, keys.public_key).ok
    assert main(["apply", str(policy), "--sign-key", str(other.private_key)]) == 1  # signed, but not by this key
    assert f"policykit sign {path} --key {other.private_key} --force" in _err(capsys)
    assert main(["sign", str(path), "--key", str(other.private_key), "--force", "--json"]) == 0
    assert '"replaced": true' in capsys.readouterr().out
    assert verify_artifact(path, other.public_key).ok and not verify_artifact(path, keys.public_key).ok


def test_sign_refuses_an_artifact_that_fails_verification(unsigned, tmp_path, capsys):
    _, path = unsigned
    keys = generate_key_pair(tmp_path / "keys")
    plan = path / "plan.json"
    plan.write_bytes(plan.read_bytes() + b" ")
    assert main(["sign", str(path), "--key", str(keys.private_key)]) == 1
    err = _err(capsys)
    assert "fails verification" in err and "plan.json" in err
    assert not (path.parent / "1.0.0.sig").exists()
    assert main(["sign", str(path), "--key", str(keys.public_key)]) == 1  # the public half cannot sign


def test_a_failed_signature_write_leaves_the_old_signature_whole(unsigned, tmp_path, monkeypatch):
    import policykit.commands.sign as sign

    _, path = unsigned
    first, second = generate_key_pair(tmp_path / "first"), generate_key_pair(tmp_path / "second")
    assert main(["sign", str(path), "--key", str(first.private_key)]) == 0
    signature = path.parent / "1.0.0.sig"
    before = signature.read_bytes()
    renames = []

    def failing_replace(src, dst):
        renames.append((os.path.basename(src), os.path.basename(dst)))
        raise OSError("disk full")

    monkeypatch.setattr(sign.os, "replace", failing_replace)
    assert main(["sign", str(path), "--key", str(second.private_key), "--force"]) == 1
    assert renames == [("1.0.0.sig.tmp", "1.0.0.sig")]  # written beside it, then renamed over it
    assert signature.read_bytes() == before and not signature.with_name("1.0.0.sig.tmp").exists()
    assert verify_artifact(path, first.public_key).ok
