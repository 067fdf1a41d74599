"""Exporting an artifact as a full model for tools that know nothing of policykit.

``diffusers``: a complete ``StableDiffusionPipeline`` directory with the edit
baked in (cross-attention deltas added, LoRA fused and removed), loadable with
``StableDiffusionPipeline.from_pretrained(DIR)``. The export carries an
``policykit-export.json`` naming the artifact it came from and its content id.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

EXPORT_NOTE = "policykit-export.json"


def load_baked_pipeline(artifact: str | Path, *, public_key=None, allow_unsigned: bool = False,
                        allow_failed_audit: bool = False):
    """The artifact's edited pipeline (loading rule applied) with the LoRA fused into the weights
    and removed, so the model is plain diffusers components any tool can save or convert."""
    from policykit.artifact.load import load_pipeline

    pipe = load_pipeline(artifact, public_key=public_key, allow_unsigned=allow_unsigned,
                         allow_failed_audit=allow_failed_audit)
    if getattr(pipe.unet, "peft_config", None):
        pipe.unet.fuse_lora()
        pipe.unet.unload_lora()
    return pipe


def export_note(artifact: str | Path) -> dict:
    """Where an export came from: the artifact, its policy, content id, base model and audit status."""
    from policykit.artifact.manifest import read_manifest

    manifest = read_manifest(Path(artifact))
    return {"format_version": 1, "artifact": str(Path(artifact).resolve()), "policy": manifest["policy"]["name"],
            "version": manifest["policy"]["version"], "content_id": manifest["content_id"],
            "base_model": manifest["base_model"], "audit_status": manifest.get("status")}


def export_diffusers(artifact: str | Path, out: str | Path, *, public_key=None, allow_unsigned: bool = False,
                     allow_failed_audit: bool = False) -> Path:
    """Write the edited model as a diffusers pipeline directory at ``out`` (which must not exist)."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new directory")
    pipe = load_baked_pipeline(artifact, public_key=public_key, allow_unsigned=allow_unsigned,
                               allow_failed_audit=allow_failed_audit)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        staging = Path(tmp) / "export"
        pipe.save_pretrained(staging, safe_serialization=True)
        note = export_note(artifact)
        (staging / EXPORT_NOTE).write_text(json.dumps(note, indent=2, sort_keys=True) + "\n")
        shutil.move(str(staging), out)
    return out
