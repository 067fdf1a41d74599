"""Exporting an artifact as a full model for tools that know nothing of policykit.

``diffusers``: a complete pipeline directory of the base model's pipeline
class (``StableDiffusionPipeline`` for SD 1.x / 2.x, ``StableDiffusionXLPipeline``
for SDXL; its ``model_index.json`` names it) with the edit baked in
(cross-attention deltas added, LoRA fused and removed), loadable with that
class's ``from_pretrained(DIR)`` (or ``DiffusionPipeline.from_pretrained(DIR)``).
The export carries an ``policykit-export.json`` naming the artifact it came
from and its content id.

Exports are written beside their target and renamed into place, and get the
modes of any file the user creates (``0666 & ~umask``: 0644 under the usual
umask), not a temporary file's private 0600.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

EXPORT_NOTE = "policykit-export.json"


def load_baked_pipeline(artifact: str | Path, *, public_key=None, allow_unsigned: bool = False,
                        allow_failed_audit: bool = False):
    """The artifact's edited pipeline (loading rule applied), of the base model's pipeline class, with
    the LoRA fused into the weights and removed, so the model is plain diffusers components any tool can
    save or convert.

    Returns ``(pipeline, note)``: ``note`` (:func:`export_note`) comes from the
    verified manifest, not from a second read of the artifact.
    """
    from policykit.artifact.load import build_pipeline, open_artifact

    verified = open_artifact(artifact, public_key=public_key, allow_unsigned=allow_unsigned,
                             allow_failed_audit=allow_failed_audit)
    return build_pipeline(verified), export_note(artifact, verified.manifest)


def export_note(artifact: str | Path, manifest: dict | None = None) -> dict:
    """Where an export came from: the artifact, its policy, content id, base model and audit status.

    ``manifest``: the verified manifest (read from ``artifact`` when not given).
    """
    if manifest is None:
        from policykit.artifact.manifest import read_manifest

        manifest = read_manifest(Path(artifact))
    return {"format_version": 1, "artifact": str(Path(artifact).resolve()), "policy": manifest["policy"]["name"],
            "version": manifest["policy"]["version"], "content_id": manifest["content_id"],
            "base_model": manifest["base_model"], "audit_status": manifest.get("status")}


def partial_path(out: Path, suffix: str = ".partial") -> Path:
    """A fresh hidden name beside ``out`` for writing it before the final rename."""
    return out.with_name(f".{out.name}.{secrets.token_hex(4)}{suffix}")


def _modes_of_user_files(root: Path, *, file_mode: int, dir_mode: int) -> None:
    """Give every file and folder below ``root`` the modes of ones the user creates.

    safetensors writes through a private temporary file, so its weights would
    otherwise stay 0600 while the configs beside them are 0644.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            os.chmod(Path(dirpath) / name, dir_mode)
        for name in filenames:
            os.chmod(Path(dirpath) / name, file_mode)


def export_diffusers(artifact: str | Path, out: str | Path, *, public_key=None, allow_unsigned: bool = False,
                     allow_failed_audit: bool = False) -> Path:
    """Write the edited model as a diffusers pipeline directory at ``out`` (which must not exist), of the
    base model's pipeline class: ``StableDiffusionXLPipeline.from_pretrained(out)`` loads an SDXL artifact's
    export, ``StableDiffusionPipeline.from_pretrained(out)`` an SD 1.x / 2.x one."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new directory")
    pipe, note = load_baked_pipeline(artifact, public_key=public_key, allow_unsigned=allow_unsigned,
                                     allow_failed_audit=allow_failed_audit)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = partial_path(out)
    os.mkdir(staging)  # default mode: the umask applies, as for any directory the user makes
    try:
        pipe.save_pretrained(staging, safe_serialization=True)
        (staging / EXPORT_NOTE).write_text(json.dumps(note, indent=2, sort_keys=True) + "\n")
        _modes_of_user_files(staging, file_mode=(staging / EXPORT_NOTE).stat().st_mode & 0o777,
                             dir_mode=staging.stat().st_mode & 0o777)
        os.rename(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out
