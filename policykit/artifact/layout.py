"""Where an artifact's files live, in one place."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
POLICY = "policy.yaml"
PLAN = "plan.json"
WEIGHTS_DIR = "weights"
#: The LoRA's weight file inside the edit's LoRA folder (the diffusers LoRA format's own name).
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
AUDIT_DIR = "audit"
SIGNATURE_SUFFIX = ".sig"
LOCK_NAME = ".lock"
STAGING_PREFIX = ".staging-"



@dataclass(frozen=True)
class ArtifactLocation:
    """The paths of one artifact version under an output directory."""

    output_dir: Path
    name: str
    version: str

    @property
    def policy_dir(self) -> Path:
        """``<output>/<name>``: every version of one policy, plus the lock."""
        return self.output_dir / self.name

    @property
    def path(self) -> Path:
        """``<output>/<name>/<version>``: the artifact directory."""
        return self.policy_dir / self.version

    @property
    def signature(self) -> Path:
        """``<output>/<name>/<version>.sig``: kept beside, not inside, the signed folder."""
        return self.policy_dir / (self.version + SIGNATURE_SUFFIX)

    @property
    def lock(self) -> Path:
        """Lock file that serializes writers of this policy's versions."""
        return self.policy_dir / LOCK_NAME

    @classmethod
    def from_path(cls, artifact_dir: str | Path) -> "ArtifactLocation":
        """The location of an artifact directory ``.../<name>/<version>``, as the caller named it.

        The path is made absolute without resolving symbolic links: a link
        ``kids-safe/1.0.0 -> ../demo/1.0.0`` is at the place ``kids-safe/1.0.0``,
        so the place check (docs/artifact.md) refuses it like a copy.
        """
        path = Path(os.path.abspath(artifact_dir))
        return cls(path.parent.parent, path.parent.name, path.name)


def signature_path_for(artifact_dir: str | Path) -> Path:
    """The signature file that belongs to an artifact directory."""
    return ArtifactLocation.from_path(artifact_dir).signature


def is_version_name(name: str) -> bool:
    """True when ``name`` is a semantic version (ASCII digits), the only names a version directory has."""
    from policykit.policy.schema import SEMVER_PATTERN

    return re.fullmatch(SEMVER_PATTERN, name, flags=re.ASCII) is not None


def iter_versions(policy_dir: Path) -> list[Path]:
    """Published version directories of one policy.

    Only directories named by a semantic version count: staging folders,
    ``<version>.audit`` report folders and anything else beside them are not
    versions.
    """
    if not policy_dir.is_dir():
        return []
    return sorted(p for p in policy_dir.iterdir()
                  if not p.name.startswith(".") and is_version_name(p.name) and p.is_dir())


def edit_references(doc: object) -> dict[str, str | None]:
    """The files an ``edit.json`` names, as paths relative to ``weights/``: ``{"delta": ..., "lora": ...}``.

    ``delta_file`` and ``lora_dir`` must be relative paths that stay inside
    ``weights/`` (no absolute path, no ``..``; see
    :func:`~policykit.artifact.snapshot.member_path`), whether or not the
    artifact is signed; ValueError otherwise. ``lora`` is the LoRA's weight
    file, or None when the edit has no LoRA.
    """
    from policykit.artifact.snapshot import member_path

    if not isinstance(doc, dict):
        raise ValueError("edit.json is not a JSON object")
    delta = member_path(doc.get("delta_file"), what="edit.json delta_file")
    lora_dir = doc.get("lora_dir")
    lora = None if lora_dir is None else f"{member_path(lora_dir, what='edit.json lora_dir')}/{LORA_WEIGHT_NAME}"
    return {"delta": delta, "lora": lora}
