"""Checking an artifact before anyone trusts it: hashes, statements, signature.

:func:`verify_artifact` reads the artifact once (regular files only: a FIFO,
socket, device or link is refused unread) and checks those bytes:

1. integrity: every file matches ``manifest.json`` (changed, missing and
   unexpected files fail);
2. statements: the manifest says it is a policykit artifact named and
   versioned like the directory it sits in (``<name>/<version>``), and its
   policy, plan and edit agree with each other (file hashes, plan hash, name,
   version), and every path ``weights/edit.json`` names is inside the
   artifact and covered by the manifest;
3. authenticity, with a key: the signature verifies over the same bytes.

Without a key, 1 and 2 are checked against a manifest that is itself
unauthenticated: anyone who can write the artifact can rewrite the files and
the manifest together. Only the signature makes the statements trustworthy.
The report keeps the bytes it checked (``files``), so a loader uses exactly
those (see :mod:`policykit.artifact.load`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from policykit.artifact import layout
from policykit.artifact.layout import ArtifactLocation
from policykit.artifact.manifest import check_snapshot, parse_manifest
from policykit.artifact.snapshot import read_regular_file, read_tree
from policykit.hashing import sha256_hex

ARTIFACT_KIND = "policykit-artifact"
EDIT_JSON = f"{layout.WEIGHTS_DIR}/edit.json"
UNAUTHENTICATED_NOTE = ("no key given: file hashes were checked against manifest.json, which is itself "
                        "unauthenticated (anyone who can write the artifact can rewrite both); pass "
                        "--public-key to check who made it")


@dataclass
class VerifyReport:
    """What ``verify`` found; ``ok`` only when every requested check passed.

    ``files`` holds the bytes that were checked (None when they could not be
    read): loaders deserialize these, never the files on disk again.
    """

    path: Path
    manifest: dict | None = None
    problems: list[str] = field(default_factory=list)
    signature_checked: bool = False
    signer_fingerprint: str | None = None
    files: dict[str, bytes] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """True when the files match the manifest (and the signature, if checked)."""
        return not self.problems

    @property
    def status(self) -> str | None:
        """The audit status recorded at apply time: ``passed`` or ``failed``."""
        return None if self.manifest is None else self.manifest.get("status")

    @property
    def authenticated(self) -> bool:
        """True when a signature was checked and everything passed: only then is the manifest trustworthy."""
        return self.ok and self.signature_checked

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {"path": str(self.path), "ok": self.ok, "problems": self.problems,
                "signature_checked": self.signature_checked, "authenticated": self.authenticated,
                "signer_fingerprint": self.signer_fingerprint, "status": self.status,
                "content_id": None if self.manifest is None else self.manifest.get("content_id"),
                **({} if self.signature_checked else {"note": UNAUTHENTICATED_NOTE})}


def verify_artifact(artifact_dir: str | Path, public_key: str | Path | None = None) -> VerifyReport:
    """Check every file against the manifest, the manifest's statements and, with a key, the signature.

    Without a key only integrity and consistency are checked (anyone could
    have rewritten the manifest too); with a key, authenticity as well.
    Never opens anything in the artifact that is not a regular file.
    """
    path = Path(artifact_dir)
    report = VerifyReport(path)
    if not path.is_dir():
        report.problems.append(f"{path}: no such artifact directory")
        return report
    try:
        files = read_tree(path)
    except (ValueError, OSError) as exc:  # a FIFO, socket, device or link: nothing else is read
        report.problems.append(f"{path}: {exc}")
        return report
    report.files = files
    if layout.MANIFEST not in files:
        report.problems.append(f"{path}: no {layout.MANIFEST}: not an artifact")
        return report
    try:
        report.manifest = parse_manifest(files[layout.MANIFEST], path / layout.MANIFEST)
    except ValueError as exc:
        report.problems.append(str(exc))
        return report
    report.problems += [str(p) for p in check_snapshot(files, report.manifest)]
    report.problems += statement_problems(path, report.manifest, files)
    if public_key is not None:
        report.signature_checked = True
        report.problems += _signature_problems(path, files, Path(public_key), report)
    return report


def statement_problems(path: Path, manifest: dict, files: dict[str, bytes]) -> list[str]:
    """Where the manifest's statements disagree with the artifact's place or with its other files."""
    if manifest.get("kind") != ARTIFACT_KIND:
        return [f"{layout.MANIFEST}: kind is {manifest.get('kind')!r}, not {ARTIFACT_KIND!r}: not a policykit artifact"]
    problems = []
    place = ArtifactLocation.from_path(path)
    policy, plan = manifest.get("policy") or {}, manifest.get("plan") or {}
    name, version = policy.get("name"), policy.get("version")
    if (name, version) != (place.name, place.version):
        problems.append(f"place: the manifest is for {name!r} version {version!r}, but the artifact sits at "
                        f"{place.name}/{place.version}: a renamed or copied artifact is refused")
    for rel, stated in ((layout.POLICY, policy.get("file_sha256")), (layout.PLAN, plan.get("file_sha256"))):
        if rel not in files:
            problems.append(f"{rel}: missing (every artifact holds its policy and plan)")
        elif stated != sha256_hex(files[rel]):
            problems.append(f"{rel}: its sha256 is not the one the manifest states")
    if layout.PLAN in files:
        problems += _plan_problems(files[layout.PLAN], manifest)
    if EDIT_JSON not in files:
        problems.append(f"{EDIT_JSON}: missing")
    else:
        problems += _edit_problems(files, manifest)
    return problems


def _plan_problems(data: bytes, manifest: dict) -> list[str]:
    from policykit.plan import Plan

    try:
        plan = Plan.from_json(data)
    except (ValueError, TypeError, RecursionError) as exc:
        return [f"{layout.PLAN}: not a valid plan: {_first_line(exc)}"]
    policy, stated = manifest.get("policy") or {}, manifest.get("plan") or {}
    problems = []
    if plan.plan_hash != stated.get("hash"):
        problems.append(f"{layout.PLAN}: plan hash {plan.plan_hash[:12]} is not the manifest's "
                        f"{str(stated.get('hash'))[:12]}")
    if (plan.inputs.policy_name, plan.inputs.policy_version) != (policy.get("name"), policy.get("version")):
        problems.append(f"{layout.PLAN}: compiled from {plan.inputs.policy_name} {plan.inputs.policy_version}, "
                        f"but the manifest says {policy.get('name')} {policy.get('version')}")
    if plan.inputs.policy_sha256 != policy.get("sha256"):
        problems.append(f"{layout.PLAN}: compiled from another policy than the manifest's policy sha256")
    return problems


def _edit_problems(files: dict[str, bytes], manifest: dict) -> list[str]:
    try:
        doc = json.loads(files[EDIT_JSON])
        refs = [f"{layout.WEIGHTS_DIR}/{ref}" for ref in layout.edit_references(doc).values() if ref]
    except RecursionError:
        return [f"{EDIT_JSON}: nested too deeply"]
    except (ValueError, UnicodeDecodeError) as exc:
        return [f"{EDIT_JSON}: {_first_line(exc)}"]
    problems = [f"{EDIT_JSON}: names {ref}, which is not a file of the artifact's manifest"
                for ref in refs if ref not in manifest["files"]]
    if doc.get("plan_hash") != (manifest.get("plan") or {}).get("hash"):
        problems.append(f"{EDIT_JSON}: made for another plan than the manifest's")
    return problems


def _signature_problems(path: Path, files: dict[str, bytes], public_key: Path, report: VerifyReport) -> list[str]:
    """Check the signature over exactly ``files`` (a private copy), not over whatever is on disk now."""
    from policykit.artifact.signing import SignatureError, public_key_fingerprint, verify_directory

    place = ArtifactLocation.from_path(path)
    try:
        if not public_key.is_file():
            raise SignatureError(f"public key {public_key} is not a regular file")
        report.signer_fingerprint = public_key_fingerprint(public_key)
        try:
            bundle = read_regular_file(place.signature)
        except FileNotFoundError:
            raise SignatureError(f"no signature at {place.signature}: the artifact is unsigned") from None
        with tempfile.TemporaryDirectory(prefix="policykit-verify-") as tmp:  # 0700: only we can write it
            copy = Path(tmp) / place.version
            for rel, data in files.items():
                target = copy / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            copy.mkdir(exist_ok=True)  # an empty artifact still has its directory
            signature = Path(tmp) / (place.version + layout.SIGNATURE_SUFFIX)
            signature.write_bytes(bundle)
            verify_directory(copy, signature, public_key)
    except (SignatureError, OSError, ValueError) as exc:  # SpecialFile is a ValueError: a FIFO as the .sig
        return [str(exc)]
    return []


def _first_line(exc: Exception) -> str:
    text = (str(exc) or type(exc).__name__).strip().splitlines()[0]
    return text if len(text) < 300 else text[:300] + "..."


