"""The compiled plan: exactly what ``apply`` will run, with a stable hash.

``compile_plan`` turns a loaded policy into a :class:`Plan`: every erase
entry with all its defaults filled in (so a reviewer sees the values that
will be used, not the ones that were written), the preserves and probes, the
method preset expanded into an ordered list of stages with their settings,
and the inputs (policy and source-file hashes, base model, toolkit version)
``apply`` checks before it runs a stored plan.

The plan is deterministic: the same inputs give byte-identical
:func:`plan_json` wherever the policy lives on disk (source paths are stored
relative to the top-level policy's directory; there are no timestamps).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict

import policykit
from policykit.hashing import canonical_json, sha256_hex
from policykit.policy.categories import resolve_anchor, resolve_templates
from policykit.policy.schema import normalize_concept
from policykit.realera.presets import METHOD_STAGES, preset_defaults
# Stage names (in the order they run) and their settings live with the method, torch-free.
from policykit.realera.settings import (AUDIT, BEYOND_CONCEPT_REGULARIZATION, CLOSED_FORM_REFINEMENT,
                                        ESD_FINETUNE, MACE_LORA, MINE_NEIGHBORS, NOISE_ALIGNMENT, AuditSettings,
                                        ClosedFormSettings, EsdSettings, MaceLoraSettings, MiningSettings,
                                        NoiseAlignmentSettings, ShellSettings, Stage)

#: Version of the plan document; bump on breaking change.
PLAN_FORMAT_VERSION = 1

# Neighbor defaults, used when neither the erase entry nor ``defaults`` sets a
# field. The one place they are defined (docs/policy-reference.md cites them).
DEFAULT_RADIUS = 0.2
#: beyond_radius = BEYOND_RADIUS_FACTOR x radius when unset.
BEYOND_RADIUS_FACTOR = 2.0
DEFAULT_SAMPLES = 16
#: beyond_samples defaults to the (resolved) samples.
DEFAULT_MIN_COSINE = 0.5
#: Mining space when a policy does not say: chosen by benchmarks/quality.py at engine version 3 (text space
#: had the higher H_o on 4 of 7 tasks and on the mean, 81.5% against 64.4%; docs/method.md records it). Chosen
#: on the tasks that report it: to be decided again on dev tasks (issue 13).
DEFAULT_SPACE = "text"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceFile(_Frozen):
    """One policy file that went into the plan (the top-level one and every one it extends)."""

    path: str  #: relative to the top-level policy's directory, '/'-separated
    sha256: str


class BaseModelInput(_Frozen):
    """The base model as the policy names it (the pin is checked by apply)."""

    id: str
    revision: str | None = None
    sha256: str | None = None


class PlanInputs(_Frozen):
    """What the plan was compiled from; apply refuses a plan whose inputs changed."""

    policy_name: str
    policy_version: str
    policy_sha256: str  #: sha256 of the canonical JSON of the merged, validated policy
    sources: tuple[SourceFile, ...]
    base_model: BaseModelInput
    toolkit_version: str


class ResolvedNeighbors(_Frozen):
    """Neighbor mining settings with every field resolved."""

    radius: float
    beyond_radius: float
    samples: int
    beyond_samples: int
    min_cosine: float
    space: str


class ResolvedConcept(_Frozen):
    """An erase entry with all defaults merged in."""

    concept: str
    category: str
    anchor: str
    synonyms: tuple[str, ...]
    associated: tuple[str, ...]
    strength: float
    templates: tuple[str, ...]
    neighbors: ResolvedNeighbors


class PlannedPreserve(_Frozen):
    """A concept to keep, with its weight."""

    concept: str
    weight: float


class PlannedCatalog(_Frozen):
    """A policy's catalog, resolved: its names are preserves of the plan (weight ``weight`` each); the
    audit checks the ``audited`` ones only."""

    names: tuple[str, ...]
    builtin: str | None = None
    mass: float
    weight: float
    #: Names of the catalog left out because the policy already says what to do with them.
    left_out: tuple[str, ...] = ()
    audited: tuple[str, ...] = ()


class PlannedProbe(_Frozen):
    """An audit probe, with the concept the classifier looks for resolved."""

    prompt: str
    expect: str
    concept: str


class OutputSettings(_Frozen):
    """Where apply writes the artifact (as written in the policy)."""

    dir: str
    signing_key: str | None = None


class Plan(_Frozen):
    """Everything apply runs, frozen; ``plan_hash`` identifies it."""

    format_version: int = PLAN_FORMAT_VERSION
    inputs: PlanInputs
    method: str
    seed: int
    erase: tuple[ResolvedConcept, ...]
    preserve: tuple[PlannedPreserve, ...]
    probes: tuple[PlannedProbe, ...]
    stages: tuple[Stage, ...]
    output: OutputSettings
    #: The policy's catalog (its names are among ``preserve``); None: the policy has none.
    catalog: PlannedCatalog | None = None
    plan_hash: str = ""

    def stage(self, name: str) -> Stage | None:
        """The stage called ``name``, or None when the plan does not run it."""
        return next((s for s in self.stages if s.name == name), None)

    @property
    def stage_names(self) -> list[str]:
        """Names of the stages, in run order."""
        return [s.name for s in self.stages]

    def body(self) -> dict[str, Any]:
        """The plan as plain JSON data, without ``plan_hash`` (what is hashed)."""
        data = self.model_dump(mode="json")
        data.pop("plan_hash")
        if data.get("catalog") is None:  # a plan without a catalog hashes as it did before catalogs existed
            data.pop("catalog", None)
        return data

    def audited_preserves(self) -> tuple[PlannedPreserve, ...]:
        """The preserves the audit checks: all but the catalog's names it does not sample."""
        if self.catalog is None:
            return self.preserve
        skipped = set(self.catalog.names) - set(self.catalog.audited)
        return tuple(p for p in self.preserve if p.concept not in skipped)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Plan":
        """Read a plan written by :func:`plan_json`; raises ValueError when the
        format is unknown or the stored hash does not match the content."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format_version") != PLAN_FORMAT_VERSION:
            version = data.get("format_version") if isinstance(data, dict) else None
            raise ValueError(f"unsupported plan format_version {version!r} (this toolkit reads {PLAN_FORMAT_VERSION})")
        plan = cls.model_validate(data)
        expected = compute_plan_hash(plan.body())
        if plan.plan_hash != expected:
            raise ValueError("plan_hash does not match the plan's content (the file was edited or damaged)")
        return plan


def compute_plan_hash(body: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a plan body (everything but the hash)."""
    return sha256_hex(canonical_json(body).encode("ascii"))


def plan_json(plan: Plan) -> str:
    """The plan as a JSON document: deterministic, byte-identical for equal plans."""
    data = {**plan.body(), "plan_hash": plan.plan_hash}  # body(): without a catalog, as before catalogs existed
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=True) + "\n"


def policy_sha256(policy) -> str:
    """sha256 of the canonical JSON of a validated policy (comments and key order do not count)."""
    data = policy.model_dump(mode="json", by_alias=True)
    if data.get("catalog") is None:  # as before catalogs existed
        data.pop("catalog", None)
    return sha256_hex(canonical_json(data).encode("ascii"))


def resolve_neighbors(entry, defaults) -> ResolvedNeighbors:
    """Merge an entry's neighbor settings over ``defaults`` over the built-in defaults."""
    own, inherited = entry.neighbors, defaults.neighbors

    def pick(field: str, fallback: Any) -> Any:
        for source in (own, inherited):
            value = getattr(source, field)
            if value is not None:
                return value
        return fallback

    radius = pick("radius", DEFAULT_RADIUS)
    samples = pick("samples", DEFAULT_SAMPLES)
    space = pick("space", DEFAULT_SPACE)
    return ResolvedNeighbors(
        radius=radius,
        beyond_radius=pick("beyond_radius", round(BEYOND_RADIUS_FACTOR * radius, 12)),
        samples=samples,
        beyond_samples=pick("beyond_samples", samples),
        min_cosine=pick("min_cosine", DEFAULT_MIN_COSINE),
        space=getattr(space, "value", space),
    )


def resolve_concept(entry, defaults, index: int) -> ResolvedConcept:
    """An erase entry with anchor, templates, strength and neighbors resolved."""
    anchor, _ = resolve_anchor(entry, defaults, index)
    return ResolvedConcept(
        concept=entry.concept,
        category=entry.category.value,
        anchor=anchor,
        synonyms=tuple(entry.synonyms),
        associated=tuple(entry.associated),
        strength=entry.strength if entry.strength is not None else defaults.strength,
        templates=resolve_templates(entry, defaults),
        neighbors=resolve_neighbors(entry, defaults),
    )


def plan_stages(policy) -> tuple[Stage, ...]:
    """The method preset's stages with their typed settings, disabled stages left out.

    Each stage's settings are the preset's defaults (:mod:`policykit.realera.presets`) under the
    policy's: a setting the policy writes explicitly wins, one it leaves out takes the preset's.
    """
    training = policy.training
    method = training.method.value
    names = list(METHOD_STAGES[method])
    if not training.closed_form.enabled and CLOSED_FORM_REFINEMENT in names:
        names.remove(CLOSED_FORM_REFINEMENT)
    if not training.lora.enabled:
        names = [n for n in names if n not in (NOISE_ALIGNMENT, MACE_LORA)]
    if not policy.audit.enabled:
        names.remove(AUDIT)
    if not ({CLOSED_FORM_REFINEMENT, NOISE_ALIGNMENT} & set(names)):
        # Mining only feeds the edit stages: with none left it would be wasted work.
        names = [n for n in names if n not in (MINE_NEIGHBORS, BEYOND_CONCEPT_REGULARIZATION)]
    mined = MINE_NEIGHBORS in names
    beyond = BEYOND_CONCEPT_REGULARIZATION in names
    lora, closed_form, esd = training.lora, training.closed_form, training.esd
    categories = [e.category.value for e in policy.erase]

    def section(part, fields, stage):
        return _section(part, fields, preset_defaults(method, stage, categories))

    built = {
        MINE_NEIGHBORS: lambda: MiningSettings(seed=training.seed),
        BEYOND_CONCEPT_REGULARIZATION: lambda: ShellSettings(seed=training.seed),
        CLOSED_FORM_REFINEMENT: lambda: ClosedFormSettings.model_validate({
            **section(closed_form, ("lambda_", "targets", "vocabulary_prompts", "vocabulary_weight"),
                      CLOSED_FORM_REFINEMENT),
            "use_mined_neighbors": mined, "use_beyond_concept": beyond, "seed": training.seed}),
        NOISE_ALIGNMENT: lambda: NoiseAlignmentSettings.model_validate({
            **section(lora, ("rank", "steps", "learning_rate", "batch_size", "resolution", "preserve_weight",
                             "attention_weight"), NOISE_ALIGNMENT),
            "seed": training.seed, "use_mined_neighbors": mined, "use_beyond_concept": beyond}),
        ESD_FINETUNE: lambda: EsdSettings.model_validate({
            **section(esd, ("iterations", "learning_rate", "negative_guidance"), ESD_FINETUNE),
            "resolution": lora.resolution, "seed": training.seed}),
        MACE_LORA: lambda: MaceLoraSettings.model_validate({
            **section(lora, ("rank", "steps", "learning_rate", "batch_size", "resolution"), MACE_LORA),
            "seed": training.seed}),
        AUDIT: lambda: AuditSettings(
            samples_per_prompt=policy.audit.samples_per_prompt, classifier=policy.audit.classifier,
            thresholds=policy.audit.thresholds.model_dump(mode="json"), seed=training.seed,
            # The sampler the audit draws with: the model's steps, at every guidance scale the policy lists.
            guidance_scales=tuple(policy.audit.guidance_scales), steps=audit_steps(policy.base_model.id)),
    }
    return tuple(Stage(name=name, settings=built[name]()) for name in names)


def _section(section, fields: tuple[str, ...], defaults: dict[str, Any]) -> dict[str, Any]:
    """A policy section's ``fields`` (by their JSON names) over a preset's ``defaults`` for one stage:
    the policy's value where it wrote one, else the preset's, else the schema's default."""
    aliases = {name: (info.alias or name) for name, info in type(section).model_fields.items()}
    merged = {aliases[f]: getattr(section, f) for f in fields}
    for key, value in defaults.items():
        field = next((f for f, a in aliases.items() if a == key), None)
        if field is None or field not in section.model_fields_set:
            merged[key] = value
    return merged


def audit_steps(model_id: str) -> int:
    """Sampling steps of the audit for a base model (the model's own setting, :mod:`policykit.audit.run`)."""
    from policykit.audit.run import sampling_for

    return int(sampling_for(model_id)["steps"])


FileReader = Callable[[Path], bytes]


def compile_plan(loaded_or_policy, *, read_file: FileReader | None = None) -> Plan:
    """Compile a policy into its :class:`Plan`.

    Takes a ``LoadedPolicy`` (then every source file's bytes are hashed, read
    with ``read_file`` - the loader's reader, e.g. a git reader for ``diff
    --against``) or a bare validated ``Policy`` (then ``sources`` is empty).
    """
    if hasattr(loaded_or_policy, "diagnostics"):
        loaded = loaded_or_policy
        if loaded.policy is None:
            raise ValueError("compile_plan needs a policy that loaded without errors")
        policy, sources = loaded.policy, _source_files(loaded, read_file or (lambda p: Path(p).read_bytes()))
    else:
        policy, sources = loaded_or_policy, ()
    inputs = PlanInputs(
        policy_name=policy.metadata.name,
        policy_version=policy.metadata.version,
        policy_sha256=policy_sha256(policy),
        sources=sources,
        base_model=BaseModelInput(**policy.base_model.model_dump(mode="json")),
        toolkit_version=policykit.__version__,
    )
    erase = tuple(resolve_concept(e, policy.defaults, i) for i, e in enumerate(policy.erase))
    probes = tuple(PlannedProbe(prompt=p.prompt, expect=p.expect.value, concept=p.concept or p.prompt)
                   for p in policy.audit.probes)
    preserve = tuple(PlannedPreserve(concept=p.concept, weight=p.weight) for p in policy.preserve)
    catalog = resolve_catalog(policy.catalog, erase, preserve, probes, policy.training.seed)
    if catalog is not None:
        preserve += tuple(PlannedPreserve(concept=n, weight=catalog.weight) for n in catalog.names)
    plan = Plan(
        inputs=inputs,
        method=policy.training.method.value,
        seed=policy.training.seed,
        erase=erase,
        preserve=preserve,
        probes=probes,
        stages=plan_stages(policy),
        output=OutputSettings(dir=policy.output.dir, signing_key=policy.output.signing_key),
        catalog=catalog,
    )
    return plan.model_copy(update={"plan_hash": compute_plan_hash(plan.body())})


def catalog_weight(mass: float, erase_entries: int, names: int) -> float:
    """Preserve weight of each catalog name: ``mass`` times the erase entries, shared among the names."""
    return round(mass * erase_entries / max(names, 1), 6)


def resolve_catalog(catalog, erase, preserve, probes, seed: int) -> PlannedCatalog | None:
    """A policy's catalog as the plan keeps it: its names (a builtin world's entities after the listed ones,
    each once) less those the policy already places, erased, preserved or probed (a held-out probe must
    stay held out, or it no longer measures what the edit was not told), the weight of each, and the
    ``audited`` names the audit samples (seeded)."""
    if catalog is None:
        return None
    names = list(catalog.names)
    if catalog.builtin == "builtin:emblems":
        from policykit.emblems.world import load_world

        names += [e.name for e in load_world().entities]
    placed = {normalize_concept(p) for c in erase for p in (c.concept, *c.synonyms, *c.associated)}
    placed |= {normalize_concept(p.concept) for p in preserve} | {normalize_concept(p.concept) for p in probes}
    kept, left_out, seen = [], [], set()
    for name in names:
        key = normalize_concept(name)
        if key in seen:
            continue
        seen.add(key)
        (left_out if key in placed else kept).append(name)
    audited = set(random.Random(seed).sample(kept, min(catalog.audited, len(kept))))
    return PlannedCatalog(names=tuple(kept), builtin=catalog.builtin, mass=catalog.mass,
                          weight=catalog_weight(catalog.mass, len(erase), len(kept)), left_out=tuple(left_out),
                          audited=tuple(n for n in kept if n in audited))


def _source_files(loaded, read_file: FileReader) -> tuple[SourceFile, ...]:
    top_dir = Path(os.path.abspath(loaded.path)).parent
    files = []
    for source in loaded.sources or [loaded.path]:
        relative = os.path.relpath(os.path.abspath(source), top_dir)
        files.append(SourceFile(path=Path(relative).as_posix(), sha256=sha256_hex(read_file(Path(source)))))
    return tuple(files)


def changed_inputs(stored: Plan, current: Plan) -> list[str]:
    """What changed between the inputs of a stored plan and the current ones,
    one line per change (empty when the stored plan is still current)."""
    old, new = stored.inputs, current.inputs
    changes = []
    if old.policy_sha256 != new.policy_sha256:
        changes.append(f"policy content changed ({old.policy_name} {old.policy_version} -> "
                       f"{new.policy_name} {new.policy_version})")
    old_sources = {s.path: s.sha256 for s in old.sources}
    new_sources = {s.path: s.sha256 for s in new.sources}
    for path in sorted(old_sources.keys() | new_sources.keys()):
        if path not in new_sources:
            changes.append(f"source {path} is no longer used")
        elif path not in old_sources:
            changes.append(f"source {path} is new")
        elif old_sources[path] != new_sources[path]:
            changes.append(f"source {path} changed")
    if old.base_model != new.base_model:
        changes.append(f"base model changed ({_model_text(old.base_model)} -> {_model_text(new.base_model)})")
    if old.toolkit_version != new.toolkit_version:
        changes.append(f"toolkit version changed ({old.toolkit_version} -> {new.toolkit_version})")
    if stored.body() != current.body() and not changes:
        changes.append("compiled settings changed")
    return changes


# ----------------------------------------------------------------- the artifact identity

#: Version of what :func:`artifact_inputs` covers; bump when it covers something else.
IDENTITY_VERSION = 1


def artifact_inputs(plan: Plan, model_sha256: str | None = None, engine: dict[str, Any] | None = None) -> dict:
    """What determines an artifact's content, as JSON data: the one definition ``plan``, ``diff`` and
    ``apply`` share (see :func:`artifact_identity`).

    Covered: the resolved plan (every concept, preserve, probe, stage setting, the seed, the base model
    as named and pinned, the policy's name and version), the base model's bytes (``model_sha256``) and
    the engine (``engine``: its version and options). Left out, because they do not change what is
    built: the policy's bytes and source files (comments, key order, a default spelled out), the
    output settings (where it is written and with which key it is signed), the toolkit's version (an
    engine change that alters results bumps ``ENGINE_VERSION``) and the plan's format number. The
    policy's bytes stay in the artifact as provenance.
    """
    body = plan.body()
    body.pop("format_version", None)
    body.pop("output", None)
    inputs = dict(body.pop("inputs"))
    for provenance in ("sources", "policy_sha256", "toolkit_version"):
        inputs.pop(provenance, None)
    return {"identity_version": IDENTITY_VERSION, "plan": {**body, "inputs": inputs},
            "base_model_sha256": None if model_sha256 is None else model_sha256.lower(), "engine": engine}


def artifact_identity(plan: Plan, model_sha256: str | None = None, engine: dict[str, Any] | None = None) -> str:
    """The artifact identity (stored as the manifest's ``inputs_id``): sha256 of the canonical JSON of
    :func:`artifact_inputs`. Equal identities mean ``apply`` would build the same artifact; ``plan`` and
    ``apply`` pass the model's sha256 and the engine, ``diff`` compares two plans under the same model
    and engine (None for both)."""
    return sha256_hex(canonical_json(artifact_inputs(plan, model_sha256, engine)).encode("ascii"))


def _model_text(model: BaseModelInput) -> str:
    text = model.id
    if model.revision:
        text += f"@{model.revision}"
    if model.sha256:
        text += f" (sha256 {model.sha256[:12]})"
    return text
