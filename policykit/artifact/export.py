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


def export_diffusers(artifact: str | Path, out: str | Path, *, public_key=None, allow_unsigned: bool = False,
                     allow_failed_audit: bool = False) -> Path:
    """Write the edited model as a diffusers pipeline directory at ``out`` (which must not exist)."""
    from policykit.artifact.load import load_pipeline
    from policykit.artifact.manifest import read_manifest

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new directory")
    pipe = load_pipeline(artifact, public_key=public_key, allow_unsigned=allow_unsigned,
                         allow_failed_audit=allow_failed_audit)
    if getattr(pipe.unet, "peft_config", None):
        pipe.unet.fuse_lora()
        pipe.unet.unload_lora()
    manifest = read_manifest(Path(artifact))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        staging = Path(tmp) / "export"
        pipe.save_pretrained(staging, safe_serialization=True)
        note = {"format_version": 1, "artifact": str(Path(artifact).resolve()),
                "policy": manifest["policy"]["name"], "version": manifest["policy"]["version"],
                "content_id": manifest["content_id"], "base_model": manifest["base_model"],
                "audit_status": manifest.get("status")}
        (staging / EXPORT_NOTE).write_text(json.dumps(note, indent=2, sort_keys=True) + "\n")
        shutil.move(str(staging), out)
    return out
