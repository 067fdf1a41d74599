"""Loading an artifact as a ready-to-use diffusers pipeline, verified first.

The rule (docs/artifact.md): an artifact loads only when every file matches
its manifest, its signature verifies against the caller's public key, and its
audit passed. Each check can be waived, but only explicitly and by name:
``allow_unsigned=True`` (no key given), ``allow_failed_audit=True``.
Tampered files are never loaded.
"""

from __future__ import annotations

from pathlib import Path


class ArtifactRefused(RuntimeError):
    """The artifact failed a check the caller did not waive; the message says which."""


def check_loadable(artifact: str | Path, *, public_key: str | Path | None = None, allow_unsigned: bool = False,
                   allow_failed_audit: bool = False) -> dict:
    """Run the loading rule's checks; returns the manifest, or raises ArtifactRefused."""
    from policykit.artifact.verify import verify_artifact

    if public_key is None and not allow_unsigned:
        raise ArtifactRefused(f"{artifact}: no public key given to check the signature; pass public_key=... "
                              "(or allow_unsigned=True to load an artifact whose origin is not checked)")
    report = verify_artifact(artifact, public_key)
    if not report.ok:
        raise ArtifactRefused(f"{artifact} failed verification: " + "; ".join(report.problems))
    manifest = report.manifest or {}
    if manifest.get("kind") != "policykit-artifact":
        raise ArtifactRefused(f"{artifact} is not a policykit artifact")
    if manifest.get("status") == "failed" and not allow_failed_audit:
        raise ArtifactRefused(f"{artifact} FAILED its audit (see audit/report.html); pass allow_failed_audit=True "
                              "to load it anyway")
    return manifest


def load_pipeline(artifact: str | Path, *, public_key: str | Path | None = None, allow_unsigned: bool = False,
                  allow_failed_audit: bool = False, device: str | None = None, model_dir: str | Path | None = None):
    """A diffusers ``StableDiffusionPipeline`` with the artifact's edit applied.

    The base model is resolved offline from the manifest (``model_dir``
    overrides where to find it) and must have the exact sha256 the artifact
    was built on.
    """
    from policykit.models import resolve_model
    from policykit.models import load_pipeline as load_base
    from policykit.realera.engine import apply_edit

    artifact = Path(artifact)
    manifest = check_loadable(artifact, public_key=public_key, allow_unsigned=allow_unsigned,
                              allow_failed_audit=allow_failed_audit)
    base = manifest["base_model"]
    model = resolve_model(str(model_dir) if model_dir else base["id"], base.get("revision"))
    actual = model.sha256()
    if actual != base["sha256"]:
        raise ArtifactRefused(f"base model {model.ref} at {model.path} has sha256 {actual}, but {artifact} was "
                              f"built on {base['sha256']}: the edit only applies to the exact model it was made for")
    pipe = load_base(model)
    apply_edit(pipe, artifact / "weights")
    if device is not None:
        pipe.to(device)
    return pipe
