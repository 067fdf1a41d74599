"""``policykit plan FILE``: compile a policy and show what apply would do.

Exit codes (as Terraform's ``-detailed-exitcode``); 0 exactly when ``apply``
would do nothing, because both ask :func:`policykit.apply.decide`:

- 1: the policy has errors (load errors, concept-graph conflicts, a path
  outside the current directory), or apply would fail before it starts (a
  missing signing key; an artifact to compare with an unpinned model that is
  not on this machine);
- 0: nothing to do: ``<output.dir>/<name>/<version>`` (``output.dir`` relative
  to the current directory) holds an artifact with this plan's identity
  (:func:`policykit.plan.artifact_identity`: the resolved plan, the model's
  bytes, the engine), signed with the key the policy names, if it names one;
- 2: apply would act: create the artifact, or refuse (the one there has
  another identity: bump ``metadata.version``; or it is unsigned, or signed
  with another key, while a key is set: ``policykit sign``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterable

from policykit.diagnostics import FORMAT_VERSION, Diagnostic, has_errors, sort_diagnostics

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


def print_diagnostics(diagnostics: Iterable[Diagnostic], fmt: str, texts: dict[str, str] | None = None,
                      stream=None) -> None:
    """Print diagnostics as ``validate`` does - ``file:line:col: ...`` with the
    source line and a caret (``texts``: file name -> source text, as the loader
    keeps them), or ``::error`` annotations for ``github`` - on standard error,
    so that standard output stays the report (JSON documents embed them instead)."""
    from policykit.commands.validate import snippet

    stream = stream or sys.stderr
    for diagnostic in sort_diagnostics(diagnostics):
        if fmt == "github":
            print(diagnostic.format_github(), file=stream)
            continue
        print(f"{diagnostic.location}: {diagnostic.severity}: {diagnostic.code}: {diagnostic.message}", file=stream)
        for line in snippet(diagnostic, texts or {}):
            print(line, file=stream)


#: plan's status for each action of :class:`policykit.apply.ApplyDecision`.
STATUS = {"nothing": "up-to-date", "create": "create", "refuse": "conflict"}


def artifact_status(loaded, plan, *, output_dir=None, sign_key=None):
    """``(status, explanation, artifact path, diagnostics)``: what apply would do, in plan's words
    (``up-to-date``, ``create``, ``conflict``, or ``error`` when apply would fail)."""
    from policykit.apply import ApplyError, decide

    try:
        decision = decide(loaded, plan, output_dir=output_dir, sign_key=sign_key)
    except ApplyError as exc:
        return "error", str(exc), None, exc.diagnostics
    return STATUS[decision.action], decision.message, decision.location.path, []


def run(args) -> int:
    """Run ``policykit plan``; returns the exit code."""
    from policykit.graph import build_graph
    from policykit.plan import compile_plan, plan_json
    from policykit.policy.loader import load_policy

    fmt = args.format
    loaded = load_policy(args.file)
    diagnostics = list(loaded.diagnostics)
    graph = None
    if loaded.ok:
        from policykit.policy.vocabulary import vocabulary_diagnostics

        graph = build_graph(loaded)
        diagnostics += graph.diagnostics
        diagnostics += vocabulary_diagnostics(loaded)
        if not has_errors(diagnostics):
            diagnostics += model_check(loaded, graph, skip=getattr(args, "no_model", False))
        if args.graph:
            try:
                graph.write(args.graph)
            except (OSError, ValueError) as exc:
                diagnostics.append(Diagnostic("write-error", f"cannot write the graph: {exc}", args.graph))
    texts = getattr(loaded, "texts", None)  # source text for snippets, when the loader keeps it
    if not loaded.ok or has_errors(diagnostics):
        _report_failure(diagnostics, fmt, texts)
        return EXIT_ERROR

    plan = compile_plan(loaded)
    status, explanation, artifact, problems = artifact_status(
        loaded, plan, output_dir=getattr(args, "output", None), sign_key=getattr(args, "sign_key", None))
    if status == "error":
        _report_failure([*diagnostics, *problems], fmt, texts)
        return EXIT_ERROR
    if not {"closed_form_refinement", "noise_alignment", "mace_lora", "esd_finetune"} & set(plan.stage_names):
        file, line, col = loaded.position(("training",))
        diagnostics.append(Diagnostic("no-edit-stage", "every edit stage is disabled: apply would publish the "
                                      "base model unchanged", str(file), line, col, "warning"))
    if args.out:
        try:
            Path(args.out).write_text(plan_json(plan), encoding="utf-8")
        except OSError as exc:
            _report_failure([*diagnostics, Diagnostic("write-error", f"cannot write the plan: {exc}", args.out)],
                            fmt, texts)
            return EXIT_ERROR
    if fmt == "json":
        doc = {"format_version": FORMAT_VERSION, "status": status, "message": explanation,
               "artifact": (artifact / "plan.json").as_posix(),  # as before: the artifact's copy of its plan
               "plan": json.loads(plan_json(plan)),
               "diagnostics": [d.to_dict() for d in sort_diagnostics(diagnostics)]}
        print(json.dumps(doc, indent=2))
    else:
        print_diagnostics(diagnostics, fmt, texts)
        _print_summary(plan, status, explanation, None if getattr(args, "full", False) else MAX_ROWS)
    return EXIT_OK if status == "up-to-date" else EXIT_CHANGES


MODEL_CHECK_SKIPPED = "model-check-skipped"
MODEL_UNSUPPORTED = "model-unsupported"


def model_check(loaded, graph, *, skip: bool = False) -> list[Diagnostic]:
    """What only the base model can show: an architecture policykit cannot edit (an error,
    ``model-unsupported``), and a preserve inside an erase radius
    (:mod:`policykit.realera.conflicts`), added to ``graph`` as warnings.

    Loads only the tokenizer and text encoder, and only when the model is on
    this machine; otherwise returns one ``model-check-skipped`` note. ``skip``
    (``--no-model``) returns nothing and never imports torch.
    """
    if skip:
        return []
    from policykit.models import ModelNotAvailable, resolve_model

    policy = loaded.policy
    file, line, col = loaded.position(("base_model", "id"))
    try:
        model = resolve_model(policy.base_model.id, policy.base_model.revision, base_dir=Path(loaded.path).parent)
    except ModelNotAvailable as missing:
        return [Diagnostic(MODEL_CHECK_SKIPPED, f"model check skipped: {missing.reason} (preserves inside an erase "
                           "radius are not checked; --no-model silences this)", str(file), line, col, "note")]
    architecture = model.architecture()
    if not architecture.supported:
        return [Diagnostic(MODEL_UNSUPPORTED, f"{model.ref} is {architecture.family} ({architecture.pipeline_class}), "
                           f"which policykit cannot edit: {'; '.join(architecture.problems)}", str(file), line, col)]
    try:
        from policykit.plan import compile_plan
        from policykit.realera.conflicts import find_conflicts, load_text_model

        return find_conflicts(loaded, graph, compile_plan(loaded), load_text_model(model.path))
    except ImportError as exc:  # torch/transformers not installed: plan still works without the check
        return [Diagnostic(MODEL_CHECK_SKIPPED, f"model check skipped: {exc}", str(file), line, col, "note")]
    except (OSError, ValueError) as exc:  # unreadable text encoder, a concept the tokenizer cannot place
        return [Diagnostic(MODEL_CHECK_SKIPPED, f"model check skipped: cannot measure radii on {model.ref}: {exc}",
                           str(file), line, col, "note")]


def _report_failure(diagnostics: list[Diagnostic], fmt: str, texts: dict[str, str] | None) -> None:
    if fmt == "json":
        doc = {"format_version": FORMAT_VERSION, "status": "error",
               "diagnostics": [d.to_dict() for d in sort_diagnostics(diagnostics)]}
        print(json.dumps(doc, indent=2))
    else:
        print_diagnostics(diagnostics, fmt, texts)


#: Rows shown per table unless --full: a 1,000-concept plan is for --out/--json,
#: not for a terminal (and rich takes seconds to lay out that many rows).
MAX_ROWS = 40


def _shown(items, limit: int | None):
    """The first ``limit`` items and how many were left out."""
    items = list(items)
    if limit is None or len(items) <= limit:
        return items, 0
    return items[:limit], len(items) - limit


def _add_more_row(table, hidden: int) -> None:
    if hidden:
        table.add_row(f"[dim]... {hidden} more (--full shows all; --out writes every one)[/dim]",
                      *([""] * (len(table.columns) - 1)))


def _print_summary(plan, status: str, explanation: str, limit: int | None = MAX_ROWS) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    inputs = plan.inputs
    model = inputs.base_model.id + (f"@{inputs.base_model.revision}" if inputs.base_model.revision else "")
    pin = f", pinned sha256 {inputs.base_model.sha256[:12]}" if inputs.base_model.sha256 else ", not pinned"
    console.print(f"[bold]{inputs.policy_name} {inputs.policy_version}[/bold]  base model {model}{pin}  "
                  f"method {plan.method}  seed {plan.seed}")

    # Compact (no vertical rules, paired numbers) so it reads on an 80-column terminal.
    concepts = Table(title="Erase", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                     caption="syn/assoc: synonyms/associated; radius: radius/beyond_radius; str.: strength; "
                             "samples: samples/beyond_samples", caption_justify="left")
    for column, width in (("concept", 10), ("category", 8), ("anchor", 8)):
        concepts.add_column(column, overflow="fold", min_width=width)
    for column in ("syn/assoc", "radius", "samples", "str."):
        concepts.add_column(column, justify="right")
    shown, hidden = _shown(plan.erase, limit)
    for c in shown:
        n = c.neighbors
        concepts.add_row(c.concept, c.category, repr(c.anchor) if c.anchor == "" else c.anchor,
                         f"{len(c.synonyms)}/{len(c.associated)}", f"{n.radius:g}/{n.beyond_radius:g}",
                         f"{n.samples}/{n.beyond_samples}", f"{c.strength:g}")
    _add_more_row(concepts, hidden)
    console.print(concepts)

    catalog = plan.catalog
    catalogued = set() if catalog is None else set(catalog.names)
    listed = tuple(p for p in plan.preserve if p.concept not in catalogued)
    if listed:
        preserves = Table(title="Preserve", title_justify="left")
        preserves.add_column("concept")
        preserves.add_column("weight", justify="right")
        shown, hidden = _shown(listed, limit)
        for p in shown:
            preserves.add_row(p.concept, f"{p.weight:g}")
        _add_more_row(preserves, hidden)
        console.print(preserves)
    if catalog is not None:
        console.print(f"Catalog: {len(catalog.names)} names preserved at weight {catalog.weight:g} each "
                      f"(mass {catalog.mass:g} x {len(plan.erase)} erase entries), {len(catalog.audited)} of them "
                      f"audited" + (f"; {len(catalog.left_out)} left out, the policy already places them: "
                                    f"{', '.join(catalog.left_out[:5])}{', ...' if len(catalog.left_out) > 5 else ''}"
                                    if catalog.left_out else ""))
    if plan.probes:
        probes = Table(title="Audit probes", title_justify="left")
        for column in ("prompt", "concept", "expect"):
            probes.add_column(column, overflow="fold")
        shown, hidden = _shown(plan.probes, limit)
        for p in shown:
            probes.add_row(p.prompt, p.concept, p.expect)
        _add_more_row(probes, hidden)
        console.print(probes)

    stages = Table(title="Stages", title_justify="left")
    stages.add_column("#", justify="right")
    stages.add_column("stage")
    stages.add_column("settings", overflow="fold")
    for i, stage in enumerate(plan.stages, 1):
        stages.add_row(str(i), stage.name, _settings_text(stage.settings.to_json()))
    console.print(stages)
    colour = {"up-to-date": "green", "create": "cyan", "conflict": "yellow"}[status]
    console.print(f"plan hash [bold]{plan.plan_hash}[/bold]")
    console.print(f"[{colour}]{explanation}[/{colour}]")


def _settings_text(settings: dict) -> str:
    parts = []
    for key, value in settings.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
            parts.append(f"{key}: ({value})")
        elif isinstance(value, list):
            parts.append(f"{key}={'+'.join(map(str, value))}")
        else:
            parts.append(f"{key}={value}")
    return "  ".join(parts)
