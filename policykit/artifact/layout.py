"""Where an artifact's files live, in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
POLICY = "policy.yaml"
PLAN = "plan.json"
WEIGHTS_DIR = "weights"
AUDIT_DIR = "audit"
SIGNATURE_SUFFIX = ".sig"
LOCK_NAME = ".lock"
STAGING_PREFIX = ".staging-"

_VERSION_DIR = re.compile(r"^[0-9][0-9A-Za-z.+-]*$")


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
        """The location of an existing artifact directory ``.../<name>/<version>``."""
        path = Path(artifact_dir).resolve()
        return cls(path.parent.parent, path.parent.name, path.name)


def signature_path_for(artifact_dir: str | Path) -> Path:
    """The signature file that belongs to an artifact directory."""
    return ArtifactLocation.from_path(artifact_dir).signature


def iter_versions(policy_dir: Path) -> list[Path]:
    """Published version directories of one policy (staging folders excluded)."""
    if not policy_dir.is_dir():
        return []
    return sorted(p for p in policy_dir.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and _VERSION_DIR.match(p.name))
