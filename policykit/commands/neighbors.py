"""``policykit neighbors "CONCEPT" --model M``: what an erase radius covers.

Prints the vocabulary tokens one substitution away from the concept inside
the radius (token space), the distance of each given phrase (``--phrase``,
or a policy's synonyms, associated words, preserves and probes with
``--policy``) and whether it is inside, and how the ``--samples`` neighbors
the engine would mine decode (token space: each sample's nearest vocabulary
tokens; the same seeded stream as the engine's mining at that template).

With ``--policy`` and a concept the policy erases, unset ``--radius``,
``--space``, ``--min-cosine``, ``--samples`` and ``--template`` come from
that entry; otherwise from the built-in defaults (docs/policy-reference.md).
Exit codes: 0 shown, 1 error (model missing, bad policy, concept not locatable).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from policykit.diagnostics import FORMAT_VERSION, Diagnostic

EXIT_OK, EXIT_ERROR = 0, 1


def run(args) -> int:
    """Run ``policykit neighbors``; returns the exit code."""
    from policykit import plan as plan_defaults
    from policykit.models import ModelNotAvailable, resolve_model

    phrases = [(p, "phrase") for p in args.phrase or []]
    entry = None
    if args.policy:
        from policykit.commands.plan import print_diagnostics
        from policykit.plan import compile_plan
        from policykit.policy.loader import load_policy

        loaded = load_policy(args.policy)
        if not loaded.ok:
            print_diagnostics(loaded.diagnostics, "text", getattr(loaded, "texts", None))
            return EXIT_ERROR
        compiled = compile_plan(loaded)
        phrases += _policy_phrases(compiled, args.concept)
        entry = next((e for e in compiled.erase if e.concept == args.concept), None)
    pick = lambda value, field, default: value if value is not None else (  # noqa: E731
        getattr(entry.neighbors, field) if entry is not None else default)
    radius = pick(args.radius, "radius", plan_defaults.DEFAULT_RADIUS)
    space = pick(args.space, "space", plan_defaults.DEFAULT_SPACE)
    min_cosine = pick(args.min_cosine, "min_cosine", plan_defaults.DEFAULT_MIN_COSINE)
    samples = pick(args.samples, "samples", plan_defaults.DEFAULT_SAMPLES)
    template = args.template or (entry.templates[0] if entry is not None else "{}")
    if template.count("{}") != 1:
        return _fail(Diagnostic("bad-template", f"template {template!r} needs exactly one '{{}}'", "<command line>"),
                     args.format)
    if not radius > 0:
        return _fail(Diagnostic("out-of-range", f"--radius must be > 0, got {radius}", "<command line>"), args.format)

    try:
        model = resolve_model(args.model, base_dir=Path.cwd())
    except ModelNotAvailable as missing:
        return _fail(missing.to_diagnostic("<command line>"), args.format)

    from policykit.realera.conflicts import load_text_model, radius_coverage
    from policykit.realera.prompts import PromptError

    text = load_text_model(model.path)
    try:
        coverage = radius_coverage(text, args.concept, radius=radius, space=space,
                                   template=template, phrases=phrases, min_cosine=min_cosine, token_limit=args.limit)
        mined = _decode_samples(text, args.concept, template, radius, min_cosine, samples,
                                space, args.seed)
    except PromptError as exc:
        return _fail(Diagnostic("concept-not-located", str(exc), "<command line>"), args.format)

    doc = {"format_version": FORMAT_VERSION, "model": model.ref, **coverage.to_dict(), "samples": mined}
    if args.format == "json":
        print(json.dumps(doc, indent=2))
    else:
        _print_text(doc)
    return EXIT_OK


def _policy_phrases(compiled, concept: str) -> list[tuple[str, str]]:
    out = []
    for e in compiled.erase:
        if e.concept != concept:
            out.append((e.concept, "erase"))
        out += [(s, "synonym") for s in e.synonyms] + [(a, "associated") for a in e.associated]
    out += [(p.concept, "preserve") for p in compiled.preserve]
    out += [(p.concept, "probe") for p in compiled.probes]
    return out


def _decode_samples(text, concept: str, template: str, radius: float, min_cosine: float,
                    count: int, space: str, seed: int) -> dict:
    """Draw the ``count`` neighbors mining would draw (token space: decode each to its nearest tokens)."""
    import torch

    from policykit.realera.mining import sample_perturbations, stream_generator
    from policykit.realera.prompts import locate_concept

    tokenizer = text.tokenizer
    located = locate_concept(tokenizer, template, concept)
    table = text.token_table()
    ids = [located.input_ids[i] for i in located.span]
    t = table[ids]
    generator = stream_generator(seed, "neighbors", "token", concept, template)
    drawn = sample_perturbations(t, count, 0.0, radius, generator, min_cosine)
    result = {"requested": count, "accepted": int(drawn.eta.shape[0]), "drawn": drawn.drawn,
              "acceptance_rate": round(drawn.eta.shape[0] / drawn.drawn, 4) if drawn.drawn else 1.0,
              "space": "token", "decoded": []}
    if space != "token":
        # Text-space samples are encoder outputs, not token sequences: only the token-space view decodes.
        result["note"] = "text-space neighbors are encoder outputs; decoded here are token-space draws of the same radius"
    if drawn.eta.shape[0]:
        moved = (t.reshape(-1) + drawn.eta).reshape(-1, *t.shape)
        nearest = torch.cdist(moved.reshape(-1, t.shape[1]), table).argmin(dim=1).reshape(moved.shape[0], -1)
        words = Counter(tokenizer.decode(row.tolist()).strip() for row in nearest)
        result["decoded"] = [{"phrase": w, "count": n} for w, n in sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))]
    return result


def _fail(diagnostic: Diagnostic, fmt: str) -> int:
    if fmt == "json":
        print(json.dumps({"format_version": FORMAT_VERSION, "status": "error", "diagnostics": [diagnostic.to_dict()]},
                         indent=2))
    else:
        print(diagnostic.format_text(), file=sys.stderr)
    return EXIT_ERROR


def _print_text(doc: dict) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    cos = f", min cosine {doc['min_cosine']:g}" if doc["min_cosine"] is not None else ""
    console.print(f"[bold]{doc['concept']}[/bold] on {doc['model']}: radius {doc['radius']:g} in {doc['space']} "
                  f"space{cos}, template {doc['template']!r}")
    if doc["space"] == "token":
        tokens = Table(title="Vocabulary tokens inside the radius (one substitution)", title_justify="left",
                       box=box.SIMPLE_HEAD)
        for column in ("replaces token #", "token", "distance"):
            tokens.add_column(column, justify="right" if column != "token" else "left")
        for t in doc["tokens"]:
            tokens.add_row(str(t["span_index"]), t["token"], f"{t['distance']:.3f}")
        if not doc["tokens"]:
            tokens.add_row("", "[dim](none)[/dim]", "")
        console.print(tokens)
    if doc["phrases"]:
        phrases = Table(title="Phrases", title_justify="left", box=box.SIMPLE_HEAD)
        for column in ("phrase", "role", "distance", "inside"):
            phrases.add_column(column, justify="right" if column == "distance" else "left")
        for p in doc["phrases"]:
            phrases.add_row(p["phrase"], p["role"], f"{p['distance']:.3f}",
                            "[red]yes[/red]" if p["inside"] else "no")
        console.print(phrases)
    s = doc["samples"]
    decoded = ", ".join(f"{d['phrase']!r} x{d['count']}" for d in s["decoded"][:12]) or "-"
    console.print(f"{s['accepted']} of {s['requested']} neighbors accepted ({s['drawn']} drawn, "
                  f"rate {s['acceptance_rate']:.2f}); nearest tokens: {decoded}")
    if s.get("note"):
        console.print(f"[dim]{s['note']}[/dim]")
