"""``apply``: compile a policy, run the edit, audit it, publish a signed artifact.

The recipe reads top to bottom (:func:`apply_policy`): load and check the
policy, resolve and pin the base model, take the version's lock, run the
RealEra stages, audit base against edited model, write the artifact in a
staging directory, sign it, and rename it into place. Anything that goes
wrong before the rename leaves nothing a reader could load.
"""

from __future__ import annotations

import json
import os
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
    message: str = ""  #: for "unchanged": why nothing was done

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


# ----------------------------------------------------------------- paths a policy names

PATH_OUTSIDE = "path-outside-workspace"


def confined_path(value: str, setting: str, position: tuple[str, int, int], base: Path | None = None) -> Path:
    """A path a *policy* names (``output.dir``, ``output.signing_key``), refused unless it stays inside
    ``base`` (default: the current directory, the tree apply runs in).

    A policy may come from a pull request: it must not make apply write to ``/`` or read
    ``/etc/shadow``. Absolute paths are refused, and so is any path that leaves ``base`` once
    ``..`` and symbolic links are resolved. The operator's own ``--output`` / ``--sign-key`` are
    not checked: the command line is trusted, the policy is not. Raises :class:`ApplyError` with a
    ``path-outside-workspace`` diagnostic at the setting's file:line:col.
    """
    root = Path.cwd() if base is None else Path(base)
    problem = None
    if "\0" in value:
        problem = "contains a NUL byte"
    elif os.path.isabs(value):
        problem = "is an absolute path"
    else:
        try:
            real_root = root.resolve()
            resolved = (real_root / value).resolve()  # follows `..` and symbolic links: an escape by either shows
        except (OSError, RuntimeError) as exc:  # a symlink loop
            problem = f"cannot be resolved ({exc})"
        else:
            if resolved != real_root and real_root not in resolved.parents:
                problem = f"leads outside the directory apply runs in (it resolves to {resolved})"
    if problem is None:
        return Path(value)
    flag = "--output" if setting == "output.dir" else "--sign-key"
    message = (f"{setting} {value!r} {problem}: a policy may only name paths inside the directory apply runs "
               f"in ({root}); to use another place, pass {flag} on the command line")
    raise ApplyError(message, [Diagnostic(PATH_OUTSIDE, message, *position)])


# ----------------------------------------------------------------- what apply would do

def engine_options(plan):
    """The :class:`~policykit.realera.engine.EngineOptions` apply runs ``plan`` with (the model's sampler
    generates the training latents)."""
    from policykit.audit.run import sampling_for
    from policykit.realera.engine import EngineOptions

    sampling = sampling_for(plan.inputs.base_model.id)
    return EngineOptions(latent_steps=int(sampling["steps"]), latent_guidance=float(sampling["guidance"]))


def engine_settings(plan) -> dict[str, Any]:
    """The engine part of the artifact identity: ``ENGINE_VERSION`` and every engine option."""
    from dataclasses import asdict

    from policykit.realera import engine

    return {"engine_version": engine.ENGINE_VERSION, **asdict(engine_options(plan))}


@dataclass(frozen=True)
class ApplyDecision:
    """What ``apply`` does for a policy, decided before any expensive work.

    ``action``: ``create`` (nothing is published at ``location``), ``nothing`` (an artifact with
    this identity is there, signed as asked) or ``refuse`` (something else is there, or it is
    unsigned while a key was given); ``message`` says which and what to do. ``plan`` exits 0
    exactly when the action is ``nothing``.
    """

    action: str
    message: str
    location: Any
    key: Path | None
    identity: str | None = None
    model_sha256: str | None = None
    model: Any = None
    existing: dict | None = None
    signed: bool = False


def decide(loaded, plan, *, output_dir: str | Path | None = None, sign_key: str | Path | None = None,
           model=None) -> ApplyDecision:
    """What apply would do for ``plan`` (compiled from ``loaded``): the one function behind
    ``policykit plan``'s exit code and ``apply``'s choice.

    ``output_dir`` / ``sign_key`` are the operator's overrides; without them the policy's
    ``output`` is used, confined to the current directory (:func:`confined_path`). ``model``: the
    base model, when the caller has resolved it already. The model is only resolved when an artifact already sits at the
    place and the policy does not pin the model's sha256 (then its files are hashed); a pinned
    model is compared by its pin, so an up-to-date artifact needs no model on this machine.
    Raises :class:`ApplyError` where apply would fail (a path outside the tree, a missing key, an
    unpinned model that is not available).
    """
    from policykit.artifact.layout import ArtifactLocation

    policy = loaded.policy
    key_position: tuple[str, int, int] | None = None
    if sign_key:
        key = Path(sign_key)
    elif policy.output.signing_key:
        key_position = loaded.position(("output", "signing_key"))
        key = confined_path(policy.output.signing_key, "output.signing_key", key_position)
    else:
        key = None
    if key is not None and not key.is_file():
        message = f"signing key {key} does not exist or is not a regular file (create one with `policykit keygen`)"
        raise ApplyError(message, [Diagnostic("signing-key-missing", message, *(key_position or ("<input>", 0, 0)))])
    if output_dir:
        location = ArtifactLocation(Path(output_dir), plan.inputs.policy_name, plan.inputs.policy_version)
    else:
        position = loaded.position(("output", "dir"))
        out = confined_path(policy.output.dir, "output.dir", position)
        location = ArtifactLocation(out, plan.inputs.policy_name, plan.inputs.policy_version)
        # a directory below output.dir may itself be a link out of the tree
        confined_path(str(location.path), "output.dir", position)
    if not os.path.lexists(location.path):
        return ApplyDecision("create", f"no artifact at {location.path}: apply would create it", location, key,
                             model=model)

    pin = plan.inputs.base_model.sha256
    if pin is not None:
        model_sha = pin.lower()
    else:
        model = model or resolve_base_model(loaded, plan)
        model_sha = model.sha256()
    engine = engine_settings(plan)
    identity = _identity(plan, model_sha, engine)
    try:
        from policykit.artifact.manifest import read_manifest

        existing = read_manifest(location.path)
    except (ValueError, OSError) as exc:
        return ApplyDecision("refuse", f"{location.path} exists but is not a readable artifact ({exc}); apply never "
                             "overwrites it: bump metadata.version, or move it away", location, key, identity,
                             model_sha, model)
    signed = location.signature.is_file()
    found = dict(location=location, key=key, identity=identity, model_sha256=model_sha, model=model,
                 existing=existing, signed=signed)
    if existing.get("inputs_id") != identity:
        why = "; ".join(explain_difference(location, existing, plan, model_sha, engine))
        return ApplyDecision("refuse", f"{location.path} already exists, built from different inputs ({why}); "
                             "artifacts are never overwritten: bump metadata.version", **found)
    state = "signed" if signed else "unsigned"
    if key is None:
        return ApplyDecision("nothing", f"{location.path} was built from these exact inputs ({state}): nothing "
                             "to do", **found)
    sign_hint = f"policykit sign {location.path} --key {key}"
    if not signed:
        return ApplyDecision("refuse", f"{location.path} is already published from these exact inputs, but "
                             f"unsigned, and apply never changes a published artifact; to sign it, run "
                             f"`{sign_hint}` (it checks every file against the manifest first)", **found)
    problem = signature_problem(location.path, key)
    if problem is not None:
        return ApplyDecision("refuse", f"{location.path} is already published from these exact inputs, but its "
                             f"signature does not verify with {key} ({problem}); to sign it with this key "
                             f"instead, run `{sign_hint} --force`", **found)
    return ApplyDecision("nothing", f"{location.path} was built from these exact inputs and is signed with "
                         f"{key}: nothing to do", **found)


def _identity(plan, model_sha256: str, engine: dict) -> str:
    from policykit.plan import artifact_identity

    return artifact_identity(plan, model_sha256, engine)


def signature_problem(artifact: Path, private_key: Path) -> str | None:
    """None when ``artifact``'s signature verifies with the public half of ``private_key``, else why not."""
    from policykit.artifact.verify import verify_artifact
    from policykit.commands.sign import public_key_of

    try:
        with public_key_of(private_key) as public:
            report = verify_artifact(artifact, public)
    except ValueError as exc:
        return str(exc)
    return None if report.ok else "; ".join(report.problems[:2])


def explain_difference(location, existing: dict, plan, model_sha256: str, engine: dict) -> list[str]:
    """Why an artifact's stored identity is not this plan's: the model's bytes, the engine, the plan."""
    from policykit.artifact.snapshot import read_regular_file
    from policykit.plan import Plan, artifact_inputs
    from policykit.policy_diff import diff_plans

    reasons = []
    stored_model = (existing.get("base_model") or {}).get("sha256")
    if stored_model != model_sha256:
        reasons.append(f"base model sha256 {str(stored_model)[:12]} -> {model_sha256[:12]}")
    stored_engine = existing.get("engine")
    if not isinstance(stored_engine, dict):
        reasons.append("built by a policykit that did not record its engine")
    elif stored_engine != engine:
        if stored_engine.get("engine_version") != engine["engine_version"]:
            reasons.append(f"engine version {stored_engine.get('engine_version')} -> {engine['engine_version']}")
        changed = sorted(k for k in engine.keys() | stored_engine.keys()
                         if k != "engine_version" and stored_engine.get(k) != engine.get(k))
        if changed:
            reasons.append("engine options changed: " + ", ".join(
                f"{k} {stored_engine.get(k)} -> {engine.get(k)}" for k in changed))
    try:
        stored = Plan.from_json(read_regular_file(location.path / "plan.json"))
    except (OSError, ValueError) as exc:
        reasons.append(f"its plan.json is unreadable ({exc})")
    else:
        if artifact_inputs(stored) != artifact_inputs(plan):
            reasons.append(f"plan: {diff_plans(stored, plan).summary()}")
    return reasons or ["its identity was computed differently"]


def resolve_base_model(loaded, plan):
    """The policy's base model on this machine; :class:`ApplyError` at ``base_model.id`` if it is not here."""
    from policykit.models import ModelNotAvailable, resolve_model

    policy = loaded.policy
    try:
        return resolve_model(policy.base_model.id, policy.base_model.revision, base_dir=Path(loaded.path).parent)
    except ModelNotAvailable as exc:
        raise ApplyError(str(exc), [exc.to_diagnostic(*loaded.position(("base_model", "id")))]) from None


# ----------------------------------------------------------------- the recipe

def _load_and_compile(policy_path: Path, plan_path: Path | None):
    from policykit.diagnostics import has_errors
    from policykit.graph import build_graph
    from policykit.plan import Plan, artifact_inputs, changed_inputs, compile_plan
    from policykit.policy.loader import load_policy

    loaded = load_policy(policy_path)
    if not loaded.ok:
        raise ApplyError(f"{policy_path} is not a valid policy", loaded.diagnostics)
    graph = build_graph(loaded)
    if has_errors(graph.diagnostics):
        raise ApplyError(f"{policy_path}: the concept graph has errors", graph.diagnostics)
    from policykit.policy.vocabulary import vocabulary_diagnostics

    vocabulary = vocabulary_diagnostics(loaded)  # what the audit would refuse after training, refused first
    if has_errors(vocabulary):
        raise ApplyError(f"{policy_path}: names what {loaded.policy.base_model.id} cannot mean", vocabulary)
    plan = compile_plan(loaded)
    if plan_path is not None:
        try:
            stored = Plan.from_json(Path(plan_path).read_bytes())
        except (OSError, ValueError) as exc:
            raise ApplyError(f"cannot read plan {plan_path}: {exc}") from None
        # Stale means it would build something else: a comment or a toolkit upgrade does not make it so.
        if artifact_inputs(stored) != artifact_inputs(plan):
            changes = changed_inputs(stored, plan) or ["compiled settings changed"]
            raise ApplyError(f"plan {plan_path} is stale: " + "; ".join(changes) + ". Run `policykit plan` again.")
    return loaded, graph, plan


def apply_policy(policy_path: str | Path, *, plan_path: str | Path | None = None, output_dir: str | Path | None = None,
                 sign_key: str | Path | None = None, cache_dir: str | Path | None = None, device: str | None = None,
                 classifier=None, emit: Emit = lambda event, **fields: None) -> ApplyOutcome:
    """Run the whole apply recipe; raises :class:`ApplyError` (nothing published) on failure.

    ``output_dir`` and ``sign_key`` override the policy's ``output`` (which must name paths inside
    the current directory); ``classifier`` (a spec string or a classifier object) overrides
    ``audit.classifier``. ``emit(event, **fields)`` receives progress events (``stage``,
    ``progress``, ``log``, ``audit_scale``, ``audit``...). What it does at an existing artifact is
    :func:`decide`'s answer, the same one ``policykit plan`` reports.
    """
    from policykit.artifact.publish import ArtifactLocked, ArtifactWriter
    from policykit.distributed import processes
    from policykit.models import check_pin

    procs = processes(device)  # one, or several under accelerate launch (docs/scale-out.md)
    procs.work.clear()
    policy_path = Path(policy_path)
    loaded, graph, plan = _load_and_compile(policy_path, Path(plan_path) if plan_path else None)
    policy = loaded.policy

    emit("stage", name="resolve_model", message=f"resolving {plan.inputs.base_model.id}")
    decision = decide(loaded, plan, output_dir=output_dir, sign_key=sign_key)
    # the main process decides (the others may not see where artifacts are published)
    action, message = procs.broadcast((decision.action, decision.message))
    if action != decision.action:
        decision = ApplyDecision(action, message, decision.location, decision.key)
    if decision.action == "nothing":
        return ApplyOutcome("unchanged", decision.location.path, decision.existing, decision.signed,
                            message=decision.message)
    if decision.action == "refuse":
        raise ApplyError(decision.message)

    # -- the base model, resolved offline and checked against its pin
    model = decision.model or resolve_base_model(loaded, plan)
    architecture = model.architecture()
    if not architecture.supported:
        message = (f"{model.ref} is {architecture.family} ({architecture.pipeline_class}), which policykit cannot "
                   f"edit: {'; '.join(architecture.problems)}")
        raise ApplyError(message, [Diagnostic("model-unsupported", message, *loaded.position(("base_model", "id")))])
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

    key, location = decision.key, decision.location
    engine = engine_settings(plan)
    identity = _identity(plan, model_sha, engine)
    if not procs.main:  # a helper process: its share of the edit and the audit, and it writes nothing
        if not procs.broadcast(None):
            return ApplyOutcome("unchanged", location.path, {}, False, message="the main process built nothing")
        _build(None, policy_path, loaded, graph, plan, model, model_sha, identity, engine, key, cache_dir, device,
               classifier, emit)
        procs.barrier()
        return ApplyOutcome("helper", location.path, {}, False, message=f"process {procs.rank} of {procs.count}")
    try:
        with ArtifactWriter(location) as writer:
            if os.path.lexists(location.path):  # published by another apply while this one resolved the model
                procs.broadcast(False)
                again = decide(loaded, plan, output_dir=output_dir, sign_key=sign_key, model=model)
                if again.action == "nothing":
                    return ApplyOutcome("unchanged", location.path, again.existing, again.signed,
                                        message=again.message)
                raise ApplyError(again.message)
            procs.broadcast(True)
            manifest, seconds = _build(writer.staging, policy_path, loaded, graph, plan, model, model_sha, identity,
                                       engine, key, cache_dir, device, classifier, emit)
            # every process has done its share: a failure anywhere stops the run before this point, and
            # the launcher ends the others, so nothing is published
            procs.barrier()
            signature = None
            if key is not None:
                from policykit.artifact.signing import sign_directory

                emit("stage", name="sign", message=f"signing with {key}")
                signature = sign_directory(writer.staging, key)
            writer.commit(signature=signature)
            return ApplyOutcome("created", location.path, manifest, signature is not None, seconds)
    except ArtifactLocked as exc:  # raised on entry only: nothing was written
        raise ApplyError(str(exc)) from None


def runtime_record(device=None) -> dict[str, Any]:
    """Where the edit ran: what the weights' bytes depend on beyond the identity (see
    docs/plan-and-diff.md, "Determinism"): torch's CPU thread count, the device and dtype."""
    import torch

    from policykit.realera.engine import pick_device

    dev, dtype = pick_device(device)
    record: dict[str, Any] = {"threads": torch.get_num_threads(), "device": dev.type,
                              "dtype": str(dtype).removeprefix("torch."),
                              "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                              # the model runs in ``dtype``; the closed form solves in float64 and the LoRA
                              # trains float32 master weights whatever the model's dtype (engine.pick_device)
                              "precision": {"model": str(dtype).removeprefix("torch."), "closed_form": "float64",
                                            "lora_weights": "float32"}}
    if dev.type == "cuda":
        record["accelerator"] = torch.cuda.get_device_name(dev)
    return record


def _build(staging: Path | None, policy_path: Path, loaded, graph, plan, model, model_sha: str, identity: str,
           engine: dict, key: Path | None, cache_dir, device, classifier_spec,
           emit: Emit) -> tuple[dict, dict[str, float]]:
    """Fill ``staging`` with everything but the signature; returns (manifest, stage seconds).

    ``staging`` None: a helper process (policykit.distributed) computes its share and writes nothing.
    """
    from policykit.artifact import layout
    from policykit.artifact.manifest import write_manifest
    from policykit.artifact.canonical import canonicalize_tree
    from policykit.hashing import file_sha256
    from policykit.audit.run import audit_edit, audit_sampler, check_dict, coverage_words, write_reports
    from policykit.models import load_pipeline
    from policykit.plan import plan_json
    from policykit.realera.edit import save_edit
    from policykit.realera.engine import run_plan

    from policykit.distributed import current

    procs = current()
    seconds: dict[str, float] = {}
    if staging is None:
        pipe = load_pipeline(model)
        edit = run_plan(plan, pipe, cache_dir=cache_dir, device=device, inputs_key=model_sha,
                        options=engine_options(plan), log=lambda line: None, progress=False)
        if plan.stage("audit") is not None:
            audit_edit(plan, pipe, edit, classifier=classifier_spec, provenance={},
                       coverage=coverage_words(edit.coverage), graph_svg="", emit=lambda event, **fields: None)
        procs.gather(dict(procs.work))
        return {}, seconds

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
    runtime = runtime_record(device)
    edit_stages = [s.name for s in plan.stages if s.name != "audit"]
    emit("stage", name="edit", message="editing: " + (" -> ".join(edit_stages) or "no edit stage"))
    edit = run_plan(plan, pipe, cache_dir=cache_dir, device=device, inputs_key=model_sha, options=engine_options(plan),
                    log=lambda line: emit("log", message=line))
    for record in edit.records:
        seconds[record.name] = record.seconds
    save_edit(edit, staging, pipeline_class=type(pipe))  # the LoRA in the format of the model's own class
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

    if procs.distributed:  # what each process drew: the work was shared
        runtime["processes"] = {"count": procs.count, "work": procs.gather(dict(procs.work))}
    audit = None
    if result is not None:
        scales, steps = audit_sampler(plan)
        audit = {"guidance_scales": scales, "steps": steps, "judged_on": "worst guidance scale of each metric",
                 "checks": [check_dict(c) for c in result.thresholds]}
    fields = {
        "kind": "policykit-artifact",
        "status": "passed" if result is None or result.passed else "failed",
        "inputs_id": identity,
        "policy": {"name": plan.inputs.policy_name, "version": plan.inputs.policy_version,
                   "sha256": plan.inputs.policy_sha256, "file_sha256": file_sha256(staging / layout.POLICY),
                   "sources": [s.model_dump() for s in plan.inputs.sources]},
        "plan": {"hash": plan.plan_hash, "file_sha256": file_sha256(staging / layout.PLAN), "method": plan.method},
        "base_model": {"id": model.ref, "revision": model.revision, "source": model.source, "sha256": model_sha,
                       "architecture": model.architecture().to_dict()},
        "engine": engine,
        "runtime": runtime,
        "toolkit": _library_versions(),
        "seeds": {"training": plan.seed, "audit": plan.seed},
        "stages": [{"name": s.name, "settings": s.settings.to_json(), "seconds": round(seconds.get(s.name, 0.0), 3)}
                   for s in plan.stages],
        "audit": audit,
        "metrics": None if result is None else {
            "before": result.metrics_before.to_dict(), "after": result.metrics_after.to_dict(),
            "by_guidance": [{"guidance": s.guidance, "before": s.metrics_before.to_dict(),
                             "after": s.metrics_after.to_dict()} for s in result.scales]},
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
