"""`policykit keygen` and `policykit verify` on a stored artifact."""

import json

from policykit.artifact.layout import ArtifactLocation
from policykit.artifact.manifest import write_manifest
from policykit.artifact.publish import ArtifactWriter
from policykit.artifact.signing import sign_directory
from policykit.cli import main


def _publish(tmp_path, key=None):
    loc = ArtifactLocation(tmp_path / "out", "demo", "1.0.0")
    with ArtifactWriter(loc) as writer:
        (writer.staging / "weights").mkdir()
        (writer.staging / "weights" / "delta.bin").write_bytes(b"\x00\x01" * 100)
        write_manifest(writer.staging, {"status": "passed"})
        writer.commit(signature=sign_directory(writer.staging, key) if key else None)
    return loc


def test_keygen_then_verify(tmp_path, capsys):
    assert main(["keygen", "--out", str(tmp_path / "keys"), "--json"]) == 0
    keys = json.loads(capsys.readouterr().out)
    assert keys["fingerprint"].startswith("sha256:")
    loc = _publish(tmp_path, keys["private_key"])

    assert main(["verify", str(loc.path), "--public-key", keys["public_key"]]) == 0
    assert "signature and all file hashes match" in capsys.readouterr().out

    (loc.path / "weights" / "delta.bin").write_bytes(b"\x00\x01" * 99 + b"\x00\x02")
    assert main(["verify", str(loc.path), "--public-key", keys["public_key"], "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and "weights/delta.bin: changed" in report["problems"]


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
