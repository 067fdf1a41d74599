"""Checking an artifact before anyone trusts it: hashes, signature, status."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from policykit.artifact.layout import ArtifactLocation
from policykit.artifact.manifest import check_files, read_manifest


@dataclass
class VerifyReport:
    """What ``verify`` found; ``ok`` only when every requested check passed."""

    path: Path
    manifest: dict | None = None
    problems: list[str] = field(default_factory=list)
    signature_checked: bool = False
    signer_fingerprint: str | None = None

    @property
    def ok(self) -> bool:
        """True when the files match the manifest (and the signature, if checked)."""
        return not self.problems

    @property
    def status(self) -> str | None:
        """The audit status recorded at apply time: ``passed`` or ``failed``."""
        return None if self.manifest is None else self.manifest.get("status")

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {"path": str(self.path), "ok": self.ok, "problems": self.problems,
                "signature_checked": self.signature_checked, "signer_fingerprint": self.signer_fingerprint,
                "status": self.status,
                "content_id": None if self.manifest is None else self.manifest.get("content_id")}


def verify_artifact(artifact_dir: str | Path, public_key: str | Path | None = None) -> VerifyReport:
    """Check every file against the manifest and, with a key, the signature.

    Without a key only integrity is checked (anyone could have rewritten the
    manifest too); with a key, authenticity as well.
    """
    path = Path(artifact_dir)
    report = VerifyReport(path)
    if not path.is_dir():
        report.problems.append(f"{path}: no such artifact directory")
        return report
    try:
        report.manifest = read_manifest(path)
    except ValueError as exc:
        report.problems.append(str(exc))
        return report
    report.problems += [str(p) for p in check_files(path, report.manifest)]
    if public_key is not None:
        from policykit.artifact.signing import SignatureError, public_key_fingerprint, verify_directory

        report.signature_checked = True
        try:
            report.signer_fingerprint = public_key_fingerprint(public_key)
            verify_directory(path, ArtifactLocation.from_path(path).signature, public_key)
        except (SignatureError, OSError) as exc:
            report.problems.append(str(exc))
    return report
