"""Loading an artifact as a ready-to-use diffusers pipeline, verified first.

The rule (docs/artifact.md): an artifact loads only when every file matches
its manifest, the manifest's statements match its place and its files, its
signature verifies against the caller's public key, and its audit passed.
Two checks can be waived, but only explicitly and by name:
``allow_unsigned=True`` (no key given), ``allow_failed_audit=True``.
Tampered, relabelled or special files are never loaded.

What is loaded is exactly what was verified: :func:`open_artifact` reads
every file once and keeps the bytes; the edit is deserialized from them
(``safetensors.torch.load``, the LoRA as a state dict), never by opening the
files again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping


class ArtifactRefused(RuntimeError):
    """The artifact failed a check the caller did not waive; the message says which.

    ``str(exc)`` names the Python keyword arguments (``public_key=...``);
    :attr:`cli_message` says the same with the command-line flags
    (``--public-key``), for the commands to print.
    """

    def __init__(self, message: str, cli_message: str | None = None):
        super().__init__(message)
        self.cli_message = cli_message or message


@dataclass(frozen=True)
class VerifiedArtifact:
    """An artifact that passed the loading rule, with the exact bytes that were checked."""

    path: Path
    manifest: dict
    files: Mapping[str, bytes] = field(repr=False)

    def weights(self) -> dict[str, bytes]:
        """The files of ``weights/``, keyed by their path inside it (what :func:`load_edit` reads)."""
        from policykit.artifact.layout import WEIGHTS_DIR

        prefix = WEIGHTS_DIR + "/"
        return {rel[len(prefix):]: data for rel, data in self.files.items() if rel.startswith(prefix)}


def open_artifact(artifact: str | Path, *, public_key: str | Path | None = None, allow_unsigned: bool = False,
                  allow_failed_audit: bool = False) -> VerifiedArtifact:
    """Apply the loading rule's checks; returns the verified artifact, or raises ArtifactRefused."""
    from policykit.artifact import verify

    artifact = Path(artifact)
    if public_key is None and not allow_unsigned:
        raise ArtifactRefused(
            f"{artifact}: no public key given to check the signature; pass public_key=... "
            "(or allow_unsigned=True to load an artifact whose origin is not checked)",
            f"{artifact}: no public key given to check the signature; pass --public-key KEY "
            "(or --allow-unsigned to load an artifact whose origin is not checked)")
    report = verify.verify_artifact(artifact, public_key)
    if not report.ok:
        raise ArtifactRefused(f"{artifact} failed verification: " + "; ".join(report.problems))
    manifest = report.manifest or {}
    if manifest.get("status") != "passed" and not allow_failed_audit:
        what = "FAILED its audit" if manifest.get("status") == "failed" else \
            f"has audit status {manifest.get('status')!r}, not 'passed'"
        raise ArtifactRefused(f"{artifact} {what} (see audit/report.html); pass allow_failed_audit=True "
                              "to load it anyway",
                              f"{artifact} {what} (see audit/report.html); pass --allow-failed-audit "
                              "to load it anyway")
    return VerifiedArtifact(artifact, manifest, report.files or {})


def check_loadable(artifact: str | Path, *, public_key: str | Path | None = None, allow_unsigned: bool = False,
                   allow_failed_audit: bool = False) -> dict:
    """Run the loading rule's checks; returns the manifest, or raises ArtifactRefused."""
    return open_artifact(artifact, public_key=public_key, allow_unsigned=allow_unsigned,
                         allow_failed_audit=allow_failed_audit).manifest


def base_pipeline_for(verified: VerifiedArtifact, *, model_dir: str | Path | None = None):
    """The base model the artifact was built on, resolved offline and checked against its sha256.

    Returned as the pipeline class the model's ``model_index.json`` names
    (``StableDiffusionPipeline`` for SD 1.x / 2.x, ``StableDiffusionXLPipeline``
    for SDXL), which must be the class the manifest recorded, where it did.
    """
    from policykit.models import load_pipeline as load_base
    from policykit.models import resolve_model

    base = verified.manifest["base_model"]
    model = resolve_model(str(model_dir) if model_dir else base["id"], base.get("revision"))
    actual = model.sha256()
    if actual != base["sha256"]:
        raise ArtifactRefused(f"base model {model.ref} at {model.path} has sha256 {actual}, but {verified.path} "
                              f"was built on {base['sha256']}: the edit only applies to the exact model it was "
                              "made for")
    pipe = load_base(model)
    architecture = base.get("architecture")
    recorded = architecture.get("pipeline_class") if isinstance(architecture, dict) else None
    if recorded and recorded != type(pipe).__name__:
        raise ArtifactRefused(f"base model {model.ref} at {model.path} is a {type(pipe).__name__}, but {verified.path} "
                              f"was built on a {recorded}")
    return pipe


def build_pipeline(verified: VerifiedArtifact, *, device: str | None = None, model_dir: str | Path | None = None,
                   keep_adapter: bool = False):
    """The edited pipeline, of the base model's class, of an artifact that passed :func:`open_artifact`
    (see :func:`load_pipeline`)."""
    from policykit.realera.edit import apply_edit, fuse_adapter, load_edit

    pipe = base_pipeline_for(verified, model_dir=model_dir)
    try:
        edit = load_edit(verified.weights())
    except (ValueError, KeyError) as exc:
        raise ArtifactRefused(f"{verified.path}: cannot read its edit: {exc}") from None
    apply_edit(pipe, edit)
    if not keep_adapter:
        fuse_adapter(pipe)
    if device is not None:
        pipe.to(device)
    return pipe


def load_pipeline(artifact: str | Path, *, public_key: str | Path | None = None, allow_unsigned: bool = False,
                  allow_failed_audit: bool = False, device: str | None = None, model_dir: str | Path | None = None,
                  keep_adapter: bool = False):
    """A diffusers pipeline of the base model's class with the artifact's edit applied.

    The class is the base model's own: ``StableDiffusionPipeline`` (SD 1.x,
    2.x and the built-in worlds) or ``StableDiffusionXLPipeline`` (SDXL).

    The loading rule is applied first (see the module docstring). The base
    model is resolved offline from the manifest (``model_dir`` overrides where
    to find it) and must have the exact sha256 the artifact was built on.

    By default the LoRA is fused into the U-Net's weights and its peft layers
    removed, so the pipeline saves and reloads like any diffusers pipeline
    (``pipe.save_pretrained(d)``; ``type(pipe).from_pretrained(d)``, e.g.
    ``StableDiffusionXLPipeline.from_pretrained(d)`` for SDXL, draws the same
    images). ``keep_adapter=True`` keeps the LoRA as a separate, active peft
    adapter named ``realera`` (to inspect or disable it); such a pipeline's
    ``save_pretrained`` writes peft keys that plain diffusers does not read as
    the edited model.
    """
    verified = open_artifact(artifact, public_key=public_key, allow_unsigned=allow_unsigned,
                             allow_failed_audit=allow_failed_audit)
    return build_pipeline(verified, device=device, model_dir=model_dir, keep_adapter=keep_adapter)
