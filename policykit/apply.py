"""``apply``: compile a policy, run the edit, audit it, publish a signed artifact.

The recipe reads top to bottom (:func:`apply_policy`): load and check the
policy, resolve and pin the base model, take the version's lock, run the
RealEra stages, audit base against edited model, write the artifact in a
staging directory, sign it, and rename it into place. Anything that goes
wrong before the rename leaves nothing a reader could load.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from policykit import __version__
from policykit.diagnostics import Diagnostic

Emit = Callable[..., None]


class ApplyError(Exception):
    """apply could not run; ``diagnostics`` say why (nothing was published)."""

    def __init__(self, message: str, diagnostics: list[Diagnostic] | None = None):
        super().__init__(message)
        self.diagnostics = diagnostics or [Diagnostic("apply-error", message)]


@dataclass
class ApplyOutcome:
    """What apply did: ``created`` or ``unchanged``, where, and how the audit went."""

    status: str  # "created" | "unchanged"
    path: Path
    manifest: dict[str, Any]
    signed: bool
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def audit_passed(self) -> bool:
        """False when the artifact was published but failed its audit thresholds."""
        return self.manifest.get("status") != "failed"


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"policykit": __version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "peft", "safetensors", "model-signing"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def inputs_id(plan_hash: str, model_sha256: str) -> str:
    """What identifies an artifact's inputs: the plan (policy, settings, toolkit) and the model's bytes."""
    import hashlib

    return hashlib.sha256(f"{plan_hash}\0{model_sha256}".encode()).hexdigest()


def _load_and_compile(policy_path: Path, plan_path: Path | None):
    from policykit.diagnostics import has_errors
    from policykit.graph import build_graph
    from policykit.plan import Plan, changed_inputs, compile_plan
    from policykit.policy.loader import load_policy

    loaded = load_policy(policy_path)
    if not loaded.ok:
        raise ApplyError(f"{policy_path} is not a valid policy", loaded.diagnostics)
    graph = build_graph(loaded)
    if has_errors(graph.diagnostics):
        raise ApplyError(f"{policy_path}: the concept graph has errors", graph.diagnostics)
    plan = compile_plan(loaded)
    if plan_path is not None:
        try:
            stored = Plan.from_json(Path(plan_path).read_bytes())
        except (OSError, ValueError) as exc:
            raise ApplyError(f"cannot read plan {plan_path}: {exc}") from None
        changes = changed_inputs(stored, plan)
        if changes:
            raise ApplyError(f"plan {plan_path} is stale: " + "; ".join(changes) + ". Run `policykit plan` again.")
    return loaded, graph, plan


def apply_policy(policy_path: str | Path, *, plan_path: str | Path | None = None, output_dir: str | Path | None = None,
                 sign_key: str | Path | None = None, cache_dir: str | Path | None = None, device: str | None = None,
                 classifier=None, emit: Emit = lambda event, **fields: None) -> ApplyOutcome:
    """Run the whole apply recipe; raises :class:`ApplyError` (nothing published) on failure.

    ``output_dir`` and ``sign_key`` override the policy's ``output``;
    ``classifier`` (a spec string or a classifier object) overrides
    ``audit.classifier``. ``emit(event, **fields)``
    receives progress events (``stage``, ``progress``, ``log``...).
    """
    from policykit.artifact.layout import ArtifactLocation
    from policykit.artifact.publish import ArtifactLocked, ArtifactWriter
    from policykit.models import ModelNotAvailable, check_pin, resolve_model

    policy_path = Path(policy_path)
    loaded, graph, plan = _load_and_compile(policy_path, Path(plan_path) if plan_path else None)
    policy = loaded.policy

    # -- the base model, resolved offline and checked against its pin
    emit("stage", name="resolve_model", message=f"resolving {plan.inputs.base_model.id}")
    try:
        model = resolve_model(policy.base_model.id, policy.base_model.revision, base_dir=policy_path.parent)
    except ModelNotAvailable as exc:
        raise ApplyError(str(exc), [exc.to_diagnostic(*loaded.position(("base_model", "id")))]) from None
    model_sha = model.sha256()
    pin_problem = check_pin(model, policy.base_model.sha256, *loaded.position(("base_model", "sha256")))
    if pin_problem is not None:
        raise ApplyError(pin_problem.message, [pin_problem])

    # -- the audit's classifier, before any expensive work: a bad one fails fast
    if plan.stage("audit") is not None and (classifier is None or isinstance(classifier, str)):
        from policykit.audit.classifiers import ClassifierError
        from policykit.audit.run import build_audit_classifier

        try:
            classifier = build_audit_classifier(plan, classifier)
        except ClassifierError as exc:
            raise ApplyError(str(exc), [Diagnostic("audit-classifier", str(exc),
                                                   *loaded.position(("audit", "classifier")))]) from None

    key = Path(sign_key) if sign_key else (Path(policy.output.signing_key) if policy.output.signing_key else None)
    if key is not None and not key.is_file():
        raise ApplyError(f"signing key {key} does not exist (create one with `policykit keygen`)")
    location = ArtifactLocation(Path(output_dir or policy.output.dir), plan.inputs.policy_name,
                                plan.inputs.policy_version)
    identity = inputs_id(plan.plan_hash, model_sha)

    try:
        with ArtifactWriter(location) as writer:
            existing = writer.existing
            if existing is not None:
                if existing.get("inputs_id") == identity:
                    emit("log", message=f"{location.path} already holds this exact policy, plan and model: nothing to do")
                    return ApplyOutcome("unchanged", location.path, existing, location.signature.exists())
                raise ApplyError(
                    f"{location.path} already exists with different content (plan "
                    f"{existing.get('plan', {}).get('hash', '?')[:12]} vs {plan.plan_hash[:12]}); artifacts are never "
                    "overwritten: bump metadata.version")
            manifest, seconds = _build(writer.staging, policy_path, loaded, graph, plan, model, model_sha, identity,
                                       key, cache_dir, device, classifier, emit)
            signature = None
            if key is not None:
                from policykit.artifact.signing import sign_directory

                emit("stage", name="sign", message=f"signing with {key}")
                signature = sign_directory(writer.staging, key)
            writer.commit(signature=signature)
            emit("log", message=f"published {location.path}" + (" (signed)" if signature else " (unsigned)"))
            return ApplyOutcome("created", location.path, manifest, signature is not None, seconds)
    except ArtifactLocked as exc:  # raised on entry only: nothing was written
        raise ApplyError(str(exc)) from None


def _build(staging: Path, policy_path: Path, loaded, graph, plan, model, model_sha: str, identity: str,
           key: Path | None, cache_dir, device, classifier_spec, emit: Emit) -> tuple[dict, dict[str, float]]:
    """Fill ``staging`` with everything but the signature; returns (manifest, stage seconds)."""
    from policykit.artifact import layout
    from policykit.artifact.canonical import canonicalize_tree
    from policykit.artifact.manifest import write_manifest
    from policykit.hashing import file_sha256
    from policykit.audit.run import audit_edit, coverage_words, sampling_for, write_reports
    from policykit.models import load_pipeline
    from policykit.plan import plan_json
    from policykit.realera.engine import EngineOptions, run_plan, save_edit

    seconds: dict[str, float] = {}
    sampling = sampling_for(plan.inputs.base_model.id)

    # -- the policy exactly as applied, and the plan
    (staging / layout.POLICY).write_bytes(policy_path.read_bytes())
    if len(loaded.sources) > 1:
        sources = staging / "sources"
        for source in loaded.sources[1:]:
            relative = Path(source).resolve().relative_to(policy_path.resolve().parent)
            (sources / relative).parent.mkdir(parents=True, exist_ok=True)
            (sources / relative).write_bytes(Path(source).read_bytes())
    (staging / layout.PLAN).write_text(plan_json(plan), encoding="utf-8")

    # -- the edit
    start = time.perf_counter()
    emit("stage", name="load_model", message=f"loading {model.ref}")
    pipe = load_pipeline(model)
    seconds["load_model"] = time.perf_counter() - start
    options = EngineOptions(latent_steps=sampling["steps"], latent_guidance=sampling["guidance"])
    edit = run_plan(plan, pipe, cache_dir=cache_dir, device=device, inputs_key=model_sha, options=options,
                    log=lambda line: emit("log", message=line))
    for record in edit.records:
        seconds[record.name] = record.seconds
    save_edit(edit, staging)
    canonicalize_tree(staging / layout.WEIGHTS_DIR)  # same edit, same bytes

    # -- the audit: the same prompts and seeds through the base and the edited model
    result = None
    if plan.stage("audit") is not None:
        start = time.perf_counter()
        provenance = {
            "policy": f"{plan.inputs.policy_name} {plan.inputs.policy_version}",
            "policy sha256": plan.inputs.policy_sha256,
            "plan hash": plan.plan_hash,
            "base model": model.ref + (f"@{model.revision}" if model.revision else ""),
            "base model sha256": model_sha,
            "artifact inputs id": identity,
            "method": plan.method,
            "training seed": str(plan.seed),
            "toolkit": f"policykit {__version__}",
            "signer key fingerprint": _fingerprint(key) or "unsigned",
        }
        result = audit_edit(plan, pipe, edit, classifier=classifier_spec, provenance=provenance,
                            coverage=coverage_words(edit.coverage), graph_svg=graph.to_svg(), emit=emit)
        write_reports(result, staging / layout.AUDIT_DIR)
        seconds["audit"] = time.perf_counter() - start

    fields = {
        "kind": "policykit-artifact",
        "status": "passed" if result is None or result.passed else "failed",
        "inputs_id": identity,
        "policy": {"name": plan.inputs.policy_name, "version": plan.inputs.policy_version,
                   "sha256": plan.inputs.policy_sha256, "file_sha256": file_sha256(staging / layout.POLICY),
                   "sources": [s.model_dump() for s in plan.inputs.sources]},
        "plan": {"hash": plan.plan_hash, "file_sha256": file_sha256(staging / layout.PLAN), "method": plan.method},
        "base_model": {"id": model.ref, "revision": model.revision, "source": model.source, "sha256": model_sha},
        "toolkit": _library_versions(),
        "seeds": {"training": plan.seed, "audit": plan.seed},
        "stages": [{"name": s.name, "settings": s.settings, "seconds": round(seconds.get(s.name, 0.0), 3)}
                   for s in plan.stages],
        "metrics": None if result is None else {"before": result.metrics_before.to_dict(),
                                                "after": result.metrics_after.to_dict()},
        "signer": _fingerprint(key),
    }
    return write_manifest(staging, fields), seconds


def _fingerprint(key: Path | None) -> str | None:
    if key is None:
        return None
    from policykit.artifact.signing import public_key_fingerprint

    return public_key_fingerprint(key)


def event_json(event: str, **fields) -> str:
    """One ``--json`` event line for CI logs."""
    return json.dumps({"event": event, **fields}, default=str, sort_keys=True)
