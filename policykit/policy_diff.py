"""Semantic diff of two policies, computed on their compiled plans.

Comparing plans rather than YAML means a change that arrives through
``defaults`` or ``extends`` shows up on the concept it affects, and a change
that alters nothing (comments, key order, spelling a default out) shows up
as nothing. Each difference is a :class:`Change` with a stable ``kind``
(``concept-added``, ``radius-widened``...); renderers turn the list into
text, a Markdown pull-request comment, JSON or GitHub annotations.

Some consequences need the model, e.g. "preserve X now falls inside the
erase radius of Y": pass such checks to :func:`diff_plans` as ``checks``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

from policykit.plan import Plan
from policykit.policy.schema import normalize_concept

#: Version of the ``diff --json`` document; bump on breaking change.
DIFF_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Change:
    """One semantic difference between two plans.

    ``kind`` is stable for tools; ``subject`` names what changed (a concept,
    a stage, ``base_model``); ``field`` the setting, when there is one.
    """

    kind: str
    subject: str
    message: str
    field: str | None = None
    old: Any = None
    new: Any = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


#: A check that needs more than the two plans (e.g. the model's embeddings)
#: and contributes its own changes; see :func:`diff_plans`.
DiffCheck = Callable[[Plan, Plan], Iterable[Change]]


@dataclass(frozen=True)
class PolicyDiff:
    """The changes from an old plan to a new one, plus warnings for reviewers."""

    old_name: str
    old_version: str
    new_name: str
    new_version: str
    old_plan_hash: str
    new_plan_hash: str
    changes: tuple[Change, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def changed(self) -> bool:
        """True when there is any semantic change."""
        return bool(self.changes)

    def counts(self) -> dict[str, int]:
        """How many changes of each kind, in first-seen order."""
        counts: dict[str, int] = {}
        for change in self.changes:
            counts[change.kind] = counts.get(change.kind, 0) + 1
        return counts

    @property
    def title(self) -> str:
        """``demo 1.0.0 → 1.1.0`` (names shown twice only when they differ)."""
        if self.old_name == self.new_name:
            return f"{self.new_name} {self.old_version} \u2192 {self.new_version}"
        return f"{self.old_name} {self.old_version} \u2192 {self.new_name} {self.new_version}"

    def summary(self) -> str:
        """One line: ``1 concept added, 1 radius widened, 2 preserves removed``."""
        if not self.changes:
            return "no semantic change"
        # the version bump is already in the title
        phrases = [_count_phrase(kind, n) for kind, n in self.counts().items() if kind != "version-bumped"]
        return ", ".join(phrases) if phrases else "version bump only"


# kind -> (singular, plural) for the summary line; kinds not listed read "N <kind>".
_PHRASES: dict[str, tuple[str, str]] = {
    "concept-added": ("concept added", "concepts added"),
    "concept-removed": ("concept removed", "concepts removed"),
    "anchor-changed": ("anchor changed", "anchors changed"),
    "category-changed": ("category changed", "categories changed"),
    "synonym-added": ("synonym added", "synonyms added"),
    "synonym-removed": ("synonym removed", "synonyms removed"),
    "associated-added": ("associated concept added", "associated concepts added"),
    "associated-removed": ("associated concept removed", "associated concepts removed"),
    "radius-widened": ("radius widened", "radii widened"),
    "radius-narrowed": ("radius narrowed", "radii narrowed"),
    "beyond-radius-widened": ("beyond radius widened", "beyond radii widened"),
    "beyond-radius-narrowed": ("beyond radius narrowed", "beyond radii narrowed"),
    "neighbors-changed": ("neighbor setting changed", "neighbor settings changed"),
    "strength-raised": ("strength raised", "strengths raised"),
    "strength-lowered": ("strength lowered", "strengths lowered"),
    "templates-changed": ("template list changed", "template lists changed"),
    "preserve-added": ("preserve added", "preserves added"),
    "preserve-removed": ("preserve removed", "preserves removed"),
    "preserve-weight-changed": ("preserve weight changed", "preserve weights changed"),
    "catalog-added": ("catalog name added", "catalog names added"),
    "catalog-removed": ("catalog name removed", "catalog names removed"),
    "catalog-weight-changed": ("catalog weight changed", "catalog weight changed"),
    "probe-added": ("probe added", "probes added"),
    "probe-removed": ("probe removed", "probes removed"),
    "threshold-changed": ("audit threshold changed", "audit thresholds changed"),
    "method-changed": ("method changed", "method changed"),
    "stage-added": ("stage added", "stages added"),
    "stage-removed": ("stage removed", "stages removed"),
    "stage-setting-changed": ("stage setting changed", "stage settings changed"),
    "seed-changed": ("seed changed", "seed changed"),
    "base-model-changed": ("base model changed", "base model changed"),
    "base-model-revision-changed": ("base model revision changed", "base model revision changed"),
    "base-model-pin-changed": ("base model pin changed", "base model pin changed"),
    "output-changed": ("output setting changed", "output settings changed"),
    "plan-changed": ("other plan change", "other plan changes"),
    "name-changed": ("name changed", "name changed"),
}

#: Where each kind of change is listed in the Markdown and text renderings.
SECTIONS: dict[str, tuple[str, ...]] = {
    "Erase concepts": ("concept-added", "concept-removed", "anchor-changed", "category-changed",
                       "synonym-added", "synonym-removed", "associated-added", "associated-removed",
                       "radius-widened", "radius-narrowed", "beyond-radius-widened", "beyond-radius-narrowed",
                       "neighbors-changed", "strength-raised", "strength-lowered", "templates-changed"),
    "Preserves": ("preserve-added", "preserve-removed", "preserve-weight-changed", "catalog-added",
                  "catalog-removed", "catalog-weight-changed"),
    "Audit": ("probe-added", "probe-removed", "threshold-changed"),
    "Training and stages": ("method-changed", "stage-added", "stage-removed", "stage-setting-changed",
                            "seed-changed", "output-changed", "plan-changed"),
    "Base model": ("base-model-changed", "base-model-revision-changed", "base-model-pin-changed"),
    "Metadata": ("name-changed", "version-bumped"),
}


def _count_phrase(kind: str, n: int) -> str:
    singular, plural = _PHRASES.get(kind, (kind, kind))
    return f"{n} {singular if n == 1 else plural}"


def section_of(kind: str) -> str:
    """The section heading a kind of change is listed under."""
    return next((title for title, kinds in SECTIONS.items() if kind in kinds), "Other")


# ----------------------------------------------------------------- comparing


def diff_plans(old: Plan, new: Plan, *, checks: Iterable[DiffCheck] = ()) -> PolicyDiff:
    """Compare two compiled plans.

    ``checks`` add changes that need more than the plans - the hook for
    model-based notes such as a preserve that now falls inside an erase
    radius (it needs the text encoder, so ``policykit diff`` alone cannot
    decide it).
    """
    changes: list[Change] = []
    changes += _diff_concepts(old, new)
    changes += _diff_preserves(old, new)
    changes += _diff_probes(old, new)
    changes += _diff_training(old, new)
    changes += _diff_base_model(old, new)
    for check in checks:
        changes += list(check(old, new))
    # The artifact identity (policykit.plan.artifact_inputs) is what plan and apply compare; a change in it
    # that no rule above names (entries reordered, a concept's spelling) must still count here.
    if all(c.kind == "output-changed" for c in changes) and _content(old) != _content(new):
        changes.append(Change("plan-changed", "plan", "the compiled plan changed (order or spelling of entries): "
                              "apply would build a different artifact"))
    old_in, new_in = old.inputs, new.inputs
    warnings: list[str] = []
    if old_in.policy_name != new_in.policy_name:
        changes.append(Change("name-changed", "metadata", f"name {old_in.policy_name} \u2192 {new_in.policy_name}",
                              "name", old_in.policy_name, new_in.policy_name))
    if old_in.policy_version != new_in.policy_version:
        changes.append(Change("version-bumped", "metadata",
                              f"version {old_in.policy_version} \u2192 {new_in.policy_version}",
                              "version", old_in.policy_version, new_in.policy_version))
    elif changes:
        warnings.append(f"the policy changed but metadata.version is still {new_in.policy_version}: "
                        "bump it, or apply will refuse to publish different content under the same version")
    return PolicyDiff(old_in.policy_name, old_in.policy_version, new_in.policy_name, new_in.policy_version,
                      old.plan_hash, new.plan_hash, tuple(changes), tuple(warnings))


def _content(plan: Plan) -> dict[str, Any]:
    """The plan's part of the artifact identity, without the name and version (reported on their own)."""
    from policykit.plan import artifact_inputs

    data = artifact_inputs(plan)
    for key in ("policy_name", "policy_version"):
        data["plan"]["inputs"].pop(key, None)
    return data


def _by_concept(items) -> dict[str, Any]:
    return {normalize_concept(item.concept): item for item in items}


def _diff_concepts(old: Plan, new: Plan) -> list[Change]:
    changes: list[Change] = []
    before, after = _by_concept(old.erase), _by_concept(new.erase)
    for key, concept in after.items():
        if key not in before:
            changes.append(Change("concept-added", concept.concept,
                                  f"erase {concept.concept!r} ({concept.category}, anchor {concept.anchor!r}, "
                                  f"radius {concept.neighbors.radius:g})", "anchor", None, concept.anchor))
    for key, concept in before.items():
        if key not in after:
            changes.append(Change("concept-removed", concept.concept, f"no longer erase {concept.concept!r}",
                                  "anchor", concept.anchor, None))
    for key in (k for k in after if k in before):
        a, b = before[key], after[key]
        name = b.concept
        if a.anchor != b.anchor:
            changes.append(Change("anchor-changed", name, f"{name!r}: anchor {a.anchor!r} \u2192 {b.anchor!r}",
                                  "anchor", a.anchor, b.anchor))
        if a.category != b.category:
            changes.append(Change("category-changed", name, f"{name!r}: category {a.category} \u2192 {b.category}",
                                  "category", a.category, b.category))
        for field_name, label in (("synonyms", "synonym"), ("associated", "associated")):
            old_words = {normalize_concept(w): w for w in getattr(a, field_name)}
            new_words = {normalize_concept(w): w for w in getattr(b, field_name)}
            for word in (w for k, w in new_words.items() if k not in old_words):
                changes.append(Change(f"{label}-added", name, f"{name!r}: {label} {word!r} added", field_name, None, word))
            for word in (w for k, w in old_words.items() if k not in new_words):
                changes.append(Change(f"{label}-removed", name, f"{name!r}: {label} {word!r} removed", field_name, word, None))
        changes += _diff_neighbors(name, a.neighbors, b.neighbors)
        if a.strength != b.strength:
            kind = "strength-raised" if b.strength > a.strength else "strength-lowered"
            changes.append(Change(kind, name, f"{name!r}: strength {a.strength:g} \u2192 {b.strength:g}",
                                  "strength", a.strength, b.strength))
        if a.templates != b.templates:
            changes.append(Change("templates-changed", name,
                                  f"{name!r}: templates {len(a.templates)} \u2192 {len(b.templates)} "
                                  f"(+{len(set(b.templates) - set(a.templates))} "
                                  f"-{len(set(a.templates) - set(b.templates))})",
                                  "templates", list(a.templates), list(b.templates)))
    return changes


def _diff_neighbors(name: str, a, b) -> list[Change]:
    changes = []
    for field_name, kind in (("radius", "radius"), ("beyond_radius", "beyond-radius")):
        old_value, new_value = getattr(a, field_name), getattr(b, field_name)
        if old_value != new_value:
            direction = "widened" if new_value > old_value else "narrowed"
            changes.append(Change(f"{kind}-{direction}", name,
                                  f"{name!r}: {field_name} {old_value:g} \u2192 {new_value:g}",
                                  f"neighbors.{field_name}", old_value, new_value))
    for field_name in ("samples", "beyond_samples", "min_cosine", "space"):
        old_value, new_value = getattr(a, field_name), getattr(b, field_name)
        if old_value != new_value:
            changes.append(Change("neighbors-changed", name, f"{name!r}: {field_name} {old_value} \u2192 {new_value}",
                                  f"neighbors.{field_name}", old_value, new_value))
    return changes


def _catalog_names(plan: Plan) -> set[str]:
    return set() if plan.catalog is None else set(plan.catalog.names)


def _diff_preserves(old: Plan, new: Plan) -> list[Change]:
    """Preserves the policy lists, one change each; a catalog's names as names added or removed and one
    weight change (its weight moves with every erase entry added, which is no news per name)."""
    changes = []
    old_catalog, new_catalog = _catalog_names(old), _catalog_names(new)
    before = _by_concept([p for p in old.preserve if p.concept not in old_catalog])
    after = _by_concept([p for p in new.preserve if p.concept not in new_catalog])
    for name in sorted(new_catalog - old_catalog):
        changes.append(Change("catalog-added", name, f"catalog keeps {name!r}", "catalog", None, name))
    for name in sorted(old_catalog - new_catalog):
        changes.append(Change("catalog-removed", name, f"catalog no longer keeps {name!r}", "catalog", name, None))
    if old_catalog and new_catalog and old.catalog.weight != new.catalog.weight:
        changes.append(Change("catalog-weight-changed", "catalog",
                              f"catalog weight per name {old.catalog.weight:g} \u2192 {new.catalog.weight:g} "
                              f"(mass {old.catalog.mass:g} \u2192 {new.catalog.mass:g}, {len(new_catalog)} names)",
                              "weight", old.catalog.weight, new.catalog.weight))
    for key, item in after.items():
        if key not in before:
            changes.append(Change("preserve-added", item.concept, f"preserve {item.concept!r} (weight {item.weight:g})",
                                  "weight", None, item.weight))
        elif before[key].weight != item.weight:
            changes.append(Change("preserve-weight-changed", item.concept,
                                  f"{item.concept!r}: weight {before[key].weight:g} \u2192 {item.weight:g}",
                                  "weight", before[key].weight, item.weight))
    for key, item in before.items():
        if key not in after:
            changes.append(Change("preserve-removed", item.concept, f"no longer preserve {item.concept!r}",
                                  "weight", item.weight, None))
    return changes


def _diff_probes(old: Plan, new: Plan) -> list[Change]:
    def key(probe) -> tuple[str, str, str]:
        return normalize_concept(probe.prompt), probe.expect, normalize_concept(probe.concept)

    before, after = {key(p): p for p in old.probes}, {key(p): p for p in new.probes}
    changes = [Change("probe-added", p.prompt, f"probe {p.prompt!r} expects {p.concept!r} {p.expect}")
               for k, p in after.items() if k not in before]
    changes += [Change("probe-removed", p.prompt, f"probe {p.prompt!r} ({p.expect}) removed")
                for k, p in before.items() if k not in after]
    return changes


def _diff_training(old: Plan, new: Plan) -> list[Change]:
    changes = []
    if old.method != new.method:
        changes.append(Change("method-changed", "training", f"method {old.method} \u2192 {new.method}",
                              "method", old.method, new.method))
    if old.seed != new.seed:
        changes.append(Change("seed-changed", "training", f"seed {old.seed} \u2192 {new.seed}", "seed", old.seed, new.seed))
    before = {s.name: s for s in old.stages}
    after = {s.name: s for s in new.stages}
    for name in after:
        if name not in before:
            changes.append(Change("stage-added", name, f"stage {name} now runs"))
    for name in before:
        if name not in after:
            changes.append(Change("stage-removed", name, f"stage {name} no longer runs"))
    for name in (n for n in after if n in before):
        a, b = before[name].settings.to_json(), after[name].settings.to_json()
        for setting in sorted(a.keys() | b.keys()):
            if setting == "seed":
                continue  # reported once above, not once per stage
            if setting == "thresholds":
                for bound in sorted((a.get(setting) or {}).keys() | (b.get(setting) or {}).keys()):
                    old_value, new_value = (a.get(setting) or {}).get(bound), (b.get(setting) or {}).get(bound)
                    if old_value != new_value:
                        changes.append(Change("threshold-changed", "audit", f"audit {bound} {old_value} \u2192 {new_value}",
                                              f"thresholds.{bound}", old_value, new_value))
            elif a.get(setting) != b.get(setting):
                changes.append(Change("stage-setting-changed", name,
                                      f"{name}.{setting} {a.get(setting)} \u2192 {b.get(setting)}",
                                      setting, a.get(setting), b.get(setting)))
    if old.output != new.output:
        for setting in ("dir", "signing_key"):
            old_value, new_value = getattr(old.output, setting), getattr(new.output, setting)
            if old_value != new_value:
                changes.append(Change("output-changed", "output", f"output.{setting} {old_value} \u2192 {new_value}",
                                      setting, old_value, new_value))
    return changes


def _diff_base_model(old: Plan, new: Plan) -> list[Change]:
    a, b = old.inputs.base_model, new.inputs.base_model
    changes = []
    for setting, kind in (("id", "base-model-changed"), ("revision", "base-model-revision-changed"),
                          ("sha256", "base-model-pin-changed")):
        old_value, new_value = getattr(a, setting), getattr(b, setting)
        if old_value != new_value:
            changes.append(Change(kind, "base_model", f"base_model.{setting} {old_value} \u2192 {new_value}",
                                  setting, old_value, new_value))
    return changes


# ----------------------------------------------------------------- rendering


def _cell(value: Any) -> str:
    if value is None:
        return "\u2014"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def render_markdown(diff: PolicyDiff) -> str:
    """A pull-request comment: a one-line summary, warnings, then one table per section."""
    lines = [f"**{diff.title}**: {diff.summary()}", ""]
    for warning in diff.warnings:
        lines += [f"> **Warning:** {warning}", ""]
    for title, kinds in (*SECTIONS.items(), ("Other", ())):
        rows = [c for c in diff.changes if section_of(c.kind) == title]
        if not rows:
            continue
        lines += [f"### {title}", "", "| Change | Subject | Setting | Before | After |", "|---|---|---|---|---|"]
        for c in rows:
            cells = [c.kind, c.subject, c.field or "", _cell(c.old), _cell(c.new)]
            lines.append("| " + " | ".join(_md_escape(x) for x in cells) + " |")
        lines.append("")
    lines.append(f"<sub>plan {diff.old_plan_hash[:12]} \u2192 {diff.new_plan_hash[:12]}</sub>")
    return "\n".join(lines) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_json(diff: PolicyDiff) -> str:
    """The ``--json`` document (stable, with ``format_version``)."""
    doc = {
        "format_version": DIFF_FORMAT_VERSION,
        "old": {"name": diff.old_name, "version": diff.old_version, "plan_hash": diff.old_plan_hash},
        "new": {"name": diff.new_name, "version": diff.new_version, "plan_hash": diff.new_plan_hash},
        "changed": diff.changed,
        "summary": diff.summary(),
        "counts": diff.counts(),
        "changes": [c.to_dict() for c in diff.changes],
        "warnings": list(diff.warnings),
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def render_github(diff: PolicyDiff, file: str | None = None) -> str:
    """GitHub Actions annotations: one ``::notice`` per change, ``::warning`` per warning."""
    where = f"file={_gh_prop(file)}," if file else ""
    lines = [f"::notice {where}title={_gh_prop(c.kind)}::{_gh_data(c.message)}" for c in diff.changes]
    lines += [f"::warning {where}title=version-not-bumped::{_gh_data(w)}" for w in diff.warnings]
    if not diff.changes:
        lines.append(f"::notice {where}title=no-change::{_gh_data(diff.title + ': ' + diff.summary())}")
    return "\n".join(lines) + "\n"


def _gh_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_prop(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


def render_text(diff: PolicyDiff, console) -> None:
    """Print the diff to a ``rich`` console: title and summary, warnings, one table per section."""
    from rich.table import Table

    console.print(f"[bold]{diff.title}[/bold]: {diff.summary()}", highlight=False)
    for warning in diff.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    for title, _ in (*SECTIONS.items(), ("Other", ())):
        rows = [c for c in diff.changes if section_of(c.kind) == title]
        if not rows:
            continue
        table = Table(title=title, title_justify="left", show_lines=False)
        for column in ("change", "subject", "setting", "before", "after"):
            table.add_column(column, overflow="fold")
        for c in rows:
            style = "green" if c.kind.endswith("-added") else "red" if c.kind.endswith("-removed") else None
            table.add_row(c.kind, c.subject, c.field or "", _cell(c.old), _cell(c.new), style=style)
        console.print(table)
