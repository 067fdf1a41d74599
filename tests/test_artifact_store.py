"""Artifact storage: manifest hashing, atomic locked publish, signing."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from policykit.artifact.layout import ArtifactLocation, iter_versions
from policykit.artifact.manifest import check_files, read_manifest, write_manifest
from policykit.artifact.publish import ArtifactLocked, ArtifactWriter
from policykit.artifact.signing import (
    SignatureError,
    generate_key_pair,
    public_key_fingerprint,
    sign_directory,
    verify_directory,
)


def _fill(root: Path) -> None:
    (root / "weights").mkdir()
    (root / "weights" / "delta.safetensors").write_bytes(bytes(range(256)) * 8)
    (root / "policy.yaml").write_text("kind: ErasurePolicy\n")
    (root / "audit").mkdir()
    (root / "audit" / "report.json").write_text("{}\n")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return generate_key_pair(tmp_path_factory.mktemp("keys"))


def test_manifest_detects_every_kind_of_change(tmp_path):
    _fill(tmp_path)
    manifest = write_manifest(tmp_path, {"status": "passed"})
    assert set(manifest["files"]) == {"weights/delta.safetensors", "policy.yaml", "audit/report.json"}
    assert check_files(tmp_path, read_manifest(tmp_path)) == []

    (tmp_path / "policy.yaml").write_text("kind: ErasurePolicY\n")
    assert [str(p) for p in check_files(tmp_path, manifest)] == ["policy.yaml: changed"]
    (tmp_path / "policy.yaml").write_text("kind: ErasurePolicy\n")
    (tmp_path / "extra.txt").write_text("x")
    assert [str(p) for p in check_files(tmp_path, manifest)] == ["extra.txt: unexpected"]
    (tmp_path / "extra.txt").unlink()
    (tmp_path / "audit" / "report.json").unlink()
    assert [str(p) for p in check_files(tmp_path, manifest)] == ["audit/report.json: missing"]


def test_manifest_refuses_symlinks(tmp_path):
    _fill(tmp_path)
    (tmp_path / "link").symlink_to("/etc/hostname")
    with pytest.raises(ValueError, match="symbolic link"):
        write_manifest(tmp_path, {})


def test_publish_is_atomic_and_cleans_up_on_failure(tmp_path):
    loc = ArtifactLocation(tmp_path, "demo", "1.0.0")
    with pytest.raises(RuntimeError):
        with ArtifactWriter(loc) as writer:
            _fill(writer.staging)
            raise RuntimeError("crash mid-build")
    assert not loc.path.exists()
    assert [p.name for p in loc.policy_dir.iterdir()] == [".lock"]

    with ArtifactWriter(loc) as writer:
        assert writer.existing is None
        _fill(writer.staging)
        write_manifest(writer.staging, {})
        writer.commit()
    assert loc.path.is_dir() and iter_versions(loc.policy_dir) == [loc.path]
    with ArtifactWriter(loc) as writer:
        assert writer.existing is not None


def test_second_writer_is_refused_while_first_holds_the_lock(tmp_path):
    loc = ArtifactLocation(tmp_path, "demo", "1.0.0")
    with ArtifactWriter(loc):
        with pytest.raises(ArtifactLocked, match="another policykit process"):
            with ArtifactWriter(loc):
                pass
    with ArtifactWriter(loc):  # released
        pass


def test_killed_writer_leaves_nothing_loadable_and_next_writer_cleans_up(tmp_path):
    script = textwrap.dedent(f"""
        import os, time
        from pathlib import Path
        from policykit.artifact.layout import ArtifactLocation
        from policykit.artifact.publish import ArtifactWriter
        loc = ArtifactLocation(Path({str(tmp_path)!r}), "demo", "1.0.0")
        with ArtifactWriter(loc) as w:
            (w.staging / "half-written.bin").write_bytes(b"x" * 1000)
            print("ready", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    loc = ArtifactLocation(tmp_path, "demo", "1.0.0")
    assert not loc.path.exists() and iter_versions(loc.policy_dir) == []
    with ArtifactWriter(loc) as writer:  # the kill released the lock
        leftovers = [p.name for p in loc.policy_dir.iterdir() if p.name.startswith(".staging-")]
        assert leftovers == [writer.staging.name]


def test_sign_and_verify_every_byte(tmp_path, keys):
    loc = ArtifactLocation(tmp_path, "demo", "1.0.0")
    with ArtifactWriter(loc) as writer:
        _fill(writer.staging)
        write_manifest(writer.staging, {})
        bundle = sign_directory(writer.staging, keys.private_key)
        writer.commit(signature=bundle)
    verify_directory(loc.path, loc.signature, keys.public_key)  # renamed after signing: still valid
    assert json.loads(loc.signature.read_text())["mediaType"].startswith("application/vnd.dev.sigstore.bundle")

    target = loc.path / "weights" / "delta.safetensors"
    original = target.read_bytes()
    for offset in (0, len(original) // 2, len(original) - 1):
        flipped = bytearray(original)
        flipped[offset] ^= 0x01
        target.write_bytes(bytes(flipped))
        with pytest.raises(SignatureError, match="signature check failed"):
            verify_directory(loc.path, loc.signature, keys.public_key)
    target.write_bytes(original)
    verify_directory(loc.path, loc.signature, keys.public_key)

    (loc.path / ".gitignore").write_text("*\n")  # even files git tools would skip count
    with pytest.raises(SignatureError):
        verify_directory(loc.path, loc.signature, keys.public_key)
    (loc.path / ".gitignore").unlink()
    (loc.path / "policy.yaml").unlink()
    with pytest.raises(SignatureError):
        verify_directory(loc.path, loc.signature, keys.public_key)


def test_wrong_key_and_missing_signature(tmp_path, keys):
    other = generate_key_pair(tmp_path / "other")
    (tmp_path / "a").mkdir()
    _fill(tmp_path / "a")
    sig = tmp_path / "a.sig"
    sig.write_bytes(sign_directory(tmp_path / "a", keys.private_key))
    with pytest.raises(SignatureError):
        verify_directory(tmp_path / "a", sig, other.public_key)
    with pytest.raises(SignatureError, match="unsigned"):
        verify_directory(tmp_path / "a", tmp_path / "nope.sig", keys.public_key)


def test_keygen_permissions_and_fingerprints(tmp_path):
    pair = generate_key_pair(tmp_path)
    assert os.stat(pair.private_key).st_mode & 0o777 == 0o600
    assert public_key_fingerprint(pair.private_key) == public_key_fingerprint(pair.public_key)
    with pytest.raises(FileExistsError):
        generate_key_pair(tmp_path)


def test_signature_verifies_with_model_signing_cli(tmp_path, keys):
    (tmp_path / "m").mkdir()
    _fill(tmp_path / "m")
    sig = tmp_path / "m.sig"
    sig.write_bytes(sign_directory(tmp_path / "m", keys.private_key))
    cmd = [sys.executable, "-m", "model_signing", "verify", "key", str(tmp_path / "m"),
           "--signature", str(sig), "--public_key", str(keys.public_key), "--no-ignore-git-paths"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    (tmp_path / "m" / "policy.yaml").write_text("tampered")
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=120).returncode != 0


# -- special files, malformed manifests, paths an artifact names, what counts as a version


class Blocked(BaseException):
    """Raised by the deadline; a BaseException, so no ``except OSError`` in the code under test swallows it."""


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fail instead of hanging: opening a FIFO blocks until a writer comes, SIGALRM interrupts it."""
    def expire(signum, frame):
        raise Blocked(f"still blocked after {seconds} s: the code opened the special file")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_fifo_in_an_artifact_is_refused_unopened(tmp_path):
    _fill(tmp_path)
    manifest = write_manifest(tmp_path, {"status": "passed"})
    os.mkfifo(tmp_path / "weights" / "pipe")
    with _deadline(10):
        with pytest.raises(ValueError, match=r"weights/pipe is a FIFO \(named pipe\)"):
            write_manifest(tmp_path, {})
        problems = [str(p) for p in check_files(tmp_path, manifest)]
    assert len(problems) == 1 and "FIFO" in problems[0] and "only regular files and directories" in problems[0]


def test_a_fifo_as_the_manifest_is_refused_unopened(tmp_path):
    os.mkfifo(tmp_path / "manifest.json")
    with _deadline(10):
        with pytest.raises(ValueError, match=r"manifest.json is a FIFO \(named pipe\), not a regular file"):
            read_manifest(tmp_path)


@pytest.mark.parametrize("text, message", [
    pytest.param("[" * 100_000 + "]" * 100_000, "nested too deeply", id="deep-nesting"),
    ('{"format_version": 1, "files": {"a": 1}}', r"files\['a'\] must be an object"),
    ('{"format_version": 1, "files": {}, "policy": "demo"}', "'policy' must be an object, not 'demo'"),
    ('{"format_version": 1, "files": {}, "plan": {"method": 3}}', "'plan.method' must be a string"),
    ('{"format_version": 1, "files": {}, "base_model": []}', "'base_model' must be an object"),
    ('{"format_version": 1, "files": []}', "'files' must be an object"),
])
def test_malformed_manifests_are_clear_errors(tmp_path, text, message):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_manifest(tmp_path)


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.safetensors", "lora/../../x", "a//b", "./a",
                                  "C:/x", "a\\..\\b", "", None, 3])
def test_paths_an_artifact_names_must_stay_inside_it(name):
    from policykit.artifact.layout import edit_references

    with pytest.raises(ValueError):
        edit_references({"delta_file": name})
    if name is not None:  # lora_dir None means "no LoRA"
        with pytest.raises(ValueError):
            edit_references({"delta_file": "d.safetensors", "lora_dir": name})
    assert edit_references({"delta_file": "d.safetensors", "lora_dir": "lora"}) == \
        {"delta": "d.safetensors", "lora": "lora/pytorch_lora_weights.safetensors"}


def test_only_semantic_versions_are_versions(tmp_path):
    for name in ("1.0.0", "1.0.0.audit", "2.0.0-rc.1", "1.2", ".staging-1.0.0-1-ab", "2.1\uff10.0"):
        (tmp_path / name).mkdir()
    assert [p.name for p in iter_versions(tmp_path)] == ["1.0.0", "2.0.0-rc.1"]
