"""The audit recipe: the same prompts and seeds through the base and the edited model.

Used by ``apply`` (before publishing) and by ``policykit audit`` (to re-run
it on a published artifact). Settings come from the plan's ``audit`` stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from policykit.audit.report import AuditResult, ScaleResult, render_html, render_json, render_markdown

if TYPE_CHECKING:
    from policykit.audit.sampling import AuditPrompt

#: Sampling settings by base model (audit images, training latents, ``generate``).
SHAPES_SAMPLING = {"steps": 25, "guidance": 4.0}
SD_SAMPLING = {"steps": 30, "guidance": 7.5}


#: policykit's own worlds, sampled at the settings they were trained and documented at.
BUILTIN_WORLDS = ("builtin:shapes", "builtin:emblems")


def sampling_for(model_id: str) -> dict[str, float]:
    """Steps and guidance scale to sample the base model ``model_id`` with."""
    return dict(SHAPES_SAMPLING if model_id in BUILTIN_WORLDS else SD_SAMPLING)


def limitations(model_id: str) -> list[str]:
    """What a reader of this audit should not conclude from it."""
    notes = []
    if model_id in BUILTIN_WORLDS:
        notes.append(f"{model_id} is a tiny synthetic world: its numbers show the method works, not how a "
                     "real model will behave.")
    else:
        notes.append("Real-model audits rely on CLIP zero-shot classification over the plan's own labels; a "
                     "concept CLIP does not recognise cannot be measured this way.")
    notes.append("Generality is measured on the policy's own synonyms, associated words and probes; paraphrases "
                 "nobody listed may still reach an erased concept.")
    return notes


def build_audit_classifier(plan, spec: str | None = None):
    """The classifier for a plan's audit: ``spec``, else the plan's ``audit.classifier``, else the
    model's default; labels for zero-shot CLIP are the plan's concepts, preserves, probes and anchors."""
    from policykit.audit.classifiers import build_classifier
    from policykit.audit.sampling import audit_prompts

    stage = plan.stage("audit")
    configured = None if stage is None else stage.settings.classifier
    labels = sorted({p.concept for p in audit_prompts(plan)} | {c.anchor for c in plan.erase if c.anchor})
    return build_classifier(spec or configured, plan.inputs.base_model.id, labels)


@dataclass(frozen=True)
class AuditPromptSet:
    """What the audit draws: the plan's prompts, then held-out mined neighbours of each erased concept.

    ``conditionings`` holds the neighbours' text-encoder outputs (None without
    neighbours); the edit leaves the text encoder alone, so one set serves the
    base and the edited model.
    """

    texts: list[AuditPrompt]
    neighbors: list[AuditPrompt]
    conditionings: object = None

    @property
    def prompts(self) -> list[AuditPrompt]:
        return self.texts + self.neighbors


def audit_prompt_set(plan, pipe) -> AuditPromptSet:
    """The plan's audit prompts and held-out neighbours (drawn with ``pipe``'s text encoder)."""
    from policykit.audit.sampling import audit_prompts, neighbor_conditionings

    neighbors, conditionings = neighbor_conditionings(plan, pipe, seed=_audit_seed(plan))
    return AuditPromptSet(audit_prompts(plan), neighbors, conditionings)


def _audit_seed(plan) -> int:
    stage = plan.stage("audit")
    return plan.seed if stage is None else stage.settings.seed


def audit_sampler(plan) -> tuple[list[float], int]:
    """``(guidance scales, steps)`` the plan's audit samples with.

    From the plan's ``audit`` stage; a plan compiled before it listed them (an older artifact's) is
    audited as it was then: at the model's one sampling setting, so a re-audit reproduces its numbers.
    """
    stage = plan.stage("audit")
    sampling = sampling_for(plan.inputs.base_model.id)
    scales = [float(g) for g in (stage.settings.guidance_scales if stage else ()) or [sampling["guidance"]]]
    return scales, int((stage.settings.steps if stage else None) or sampling["steps"])


def draw_prompt_set(plan, pipe, prompt_set: AuditPromptSet, *, per_prompt: int | None = None,
                    guidance: float | None = None, steps: int | None = None,
                    on_batch: Callable[[int], None] | None = None):
    """Images of every prompt of ``prompt_set`` with ``pipe``, ``(prompts, per_prompt, H, W, 3)`` uint8:
    the plan's audit seed, samples per prompt (unless ``per_prompt``), and ``guidance`` / ``steps``
    (default: the model's sampling settings)."""
    import numpy as np

    from policykit.audit.sampling import generate

    stage = plan.stage("audit")
    if per_prompt is None:
        per_prompt = 4 if stage is None else stage.settings.samples_per_prompt
    sampling = sampling_for(plan.inputs.base_model.id)
    kwargs = dict(per_prompt=per_prompt, seed=_audit_seed(plan), steps=steps or sampling["steps"],
                  guidance=sampling["guidance"] if guidance is None else guidance, on_batch=on_batch)
    images = generate(pipe, [p.prompt for p in prompt_set.texts], **kwargs)
    if prompt_set.neighbors:
        names = [p.prompt for p in prompt_set.neighbors]
        images = np.concatenate([images, generate(pipe, names, conditionings=prompt_set.conditionings, **kwargs)])
    return images


def audit_edit(plan, pipe, edit, *, classifier=None, provenance: dict[str, str] | None = None,
               coverage: dict | None = None, graph_svg: str | None = None,
               emit: Callable[..., None] = lambda event, **fields: None) -> AuditResult:
    """Generate every audit prompt with ``pipe`` (the base model), apply ``edit`` to it,
    generate again, classify both, and check the plan's thresholds - at every guidance scale of
    the plan's audit, each threshold judged on the worst scale.

    ``pipe`` holds the edit afterwards. ``classifier``: a classifier object or
    a spec string; default: the plan's ``audit.classifier``, else the model's default.
    Emits a ``stage`` event (with ``total`` images), ``progress`` events, one ``audit_scale``
    event per scale and an ``audit`` event with the verdict.
    """
    from policykit.audit.metrics import compute_metrics, judge_scales
    from policykit.audit.sampling import classify_outcomes
    from policykit.realera.edit import apply_edit

    stage = plan.stage("audit")
    if stage is None:
        raise ValueError("the plan has no audit stage (audit.enabled is false)")
    settings = stage.settings
    model_id = plan.inputs.base_model.id
    if classifier is None or isinstance(classifier, str):
        classifier = build_audit_classifier(plan, classifier)
    per_prompt = settings.samples_per_prompt
    scales, steps = audit_sampler(plan)
    prompt_set = audit_prompt_set(plan, pipe)
    prompts = prompt_set.prompts
    total = 2 * len(prompts) * per_prompt * len(scales)
    emit("stage", name="audit", message=f"auditing {len(prompts)} prompts ({len(prompt_set.texts)} from the plan, "
         f"{len(prompt_set.neighbors)} held-out neighbours) x {per_prompt} images x {len(scales)} guidance "
         f"scale{'s' if len(scales) != 1 else ''} ({', '.join(f'{g:g}' for g in scales)}; {steps} steps) with the "
         f"base and the edited model ({total} images)", total=total)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        emit("progress", name="audit", completed=done[0], total=total)

    before = {g: draw_prompt_set(plan, pipe, prompt_set, guidance=g, steps=steps, on_batch=tick) for g in scales}
    apply_edit(pipe, edit)
    results = []
    for g in scales:
        after = draw_prompt_set(plan, pipe, prompt_set, guidance=g, steps=steps, on_batch=tick)
        outcomes = classify_outcomes(prompts, before[g], after, classifier,
                                     grid_scale={"builtin:shapes": 4, "builtin:emblems": 3}.get(model_id, 1))
        scale = ScaleResult(g, compute_metrics(o.before for o in outcomes), compute_metrics(o.after for o in outcomes),
                            outcomes)
        results.append(scale)
        emit("audit_scale", guidance=g, before=scale.metrics_before.to_dict(), after=scale.metrics_after.to_dict())
    checks = judge_scales({s.guidance: s.metrics_after for s in results}, **settings.thresholds)
    provenance = {**(provenance or {}), "classifier": classifier.name,
                  "sampler": f"{steps} steps at guidance {', '.join(f'{g:g}' for g in scales)}"}
    result = AuditResult(plan.inputs.policy_name, plan.inputs.policy_version, results, checks,
                         provenance=provenance, coverage=coverage or {}, graph_svg=graph_svg,
                         limitations=limitations(model_id) + [
                             f"Sampled with the model's scheduler at {steps} steps and guidance "
                             f"{', '.join(f'{g:g}' for g in scales)}; other schedulers, step counts and guidance "
                             "scales were not measured."], steps=steps)
    emit("audit", verdict=result.verdict, checks=[check_dict(c) for c in checks])
    return result


def check_dict(check) -> dict:
    """A threshold check as JSON data (events, manifest)."""
    return {"name": check.name, "setting": check.setting, "kind": check.kind, "bound": check.bound,
            "measured": check.measured, "guidance": check.guidance, "passed": check.passed}


def write_reports(result: AuditResult, directory: str | Path) -> Path:
    """``report.html``, ``report.md`` and ``report.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.html").write_text(render_html(result), encoding="utf-8")
    (directory / "report.md").write_text(render_markdown(result), encoding="utf-8")
    (directory / "report.json").write_text(render_json(result), encoding="utf-8")
    return directory


def coverage_words(coverage: list[dict]) -> dict[str, list[tuple[str, float]]]:
    """Per erased concept, the vocabulary tokens and policy phrases inside its radius (nearest first)."""
    nearest: dict[str, dict[str, float]] = {}
    for entry in coverage:  # one entry per concept and template: keep each word's nearest distance
        found = nearest.setdefault(entry["concept"], {})
        pairs = [(t["token"], t["distance"]) for t in entry.get("tokens", [])]
        pairs += [(p["phrase"], p["distance"]) for p in entry.get("phrases", []) if p.get("inside")]
        for word, distance in pairs:
            found[word] = min(float(distance), found.get(word, float("inf")))
    return {concept: sorted(found.items(), key=lambda item: item[1]) for concept, found in nearest.items()}
