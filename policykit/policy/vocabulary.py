"""What a policy for a built-in world may name: the world's vocabulary, checked without a model.

``builtin:shapes`` and ``builtin:emblems`` know their whole vocabulary as data
(policykit/shapes/world.toml, policykit/emblems/world.toml and entities.toml),
so what its audit would refuse after training can be found while validating.
The audit's pixel-truth classifier reads a colour and a shape from pixels and
judges a phrase only when the world gives it a meaning: :meth:`World.meaning`,
the very test ``PixelTruthClassifier.shows`` applies. It judges each erased
concept, each preserve and each probe's ``concept`` (the whole prompt when a
probe has none), so any of them that means nothing makes ``apply`` fail after
training. Here each is an error at its ``file:line:col``. With the audit off
nothing refuses such a phrase, and a warning says it names nothing this model
draws. A probe that expects a phrase preserved whose meaning the policy erases
("crimson disc" while "red circle" is erased) is an error as well.

Only ``import tomllib`` work happens here: no torch, no numpy.
"""

from __future__ import annotations

import re
from typing import Any

from policykit.diagnostics import Diagnostic, Severity
from policykit.policy.schema import normalize_concept

#: The base models whose vocabulary is known without loading them.
BUILTIN_SHAPES = "builtin:shapes"
BUILTIN_EMBLEMS = "builtin:emblems"
BUILTIN_WORLDS = (BUILTIN_SHAPES, BUILTIN_EMBLEMS)
#: The audit classifier that judges builtin:shapes by default: the same string as
#: ``policykit.audit.classifiers.PIXEL_TRUTH`` (not imported: that module loads numpy).
PIXEL_TRUTH = "builtin:pixel-truth"


def vocabulary_diagnostics(loaded: Any) -> list[Diagnostic]:
    """Problems of a loaded policy with the built-in world's vocabulary (none for other models).

    ``loaded`` is a :class:`~policykit.policy.loader.LoadedPolicy` that loaded
    without error; its ``position`` places each diagnostic.
    """
    policy = loaded.policy
    if policy is None or policy.base_model.id not in BUILTIN_WORLDS:
        return []
    audit = policy.audit
    judged = audit.enabled and audit.classifier in (None, PIXEL_TRUTH)
    if audit.enabled and not judged:
        return []  # another classifier (a CLIP directory) judges by its own labels
    model = policy.base_model.id
    world, knows = _world(model)
    found: list[Diagnostic] = []

    def report(code: str, message: str, path: tuple, severity: Severity = "error") -> None:
        file, line, col = loaded.position(path)
        found.append(Diagnostic(code, message, str(file), line, col, severity))

    why = ("so its audit (pixel truth) cannot judge it" if judged
           else "so nothing this model draws is called that (the audit is off and will not say so)")
    for section, entries in (("erase", policy.erase), ("preserve", policy.preserve)):
        for i, entry in enumerate(entries):
            if world.meaning(entry.concept) is None:
                report("unknown-concept", f"{entry.concept!r} means nothing in {model}, {why}; {knows}",
                       (section, i, "concept"), "error" if judged else "warning")
    for i, name in enumerate(policy.catalog.names if policy.catalog is not None else ()):
        if world.meaning(name) is None:  # a catalog name is audited only when sampled: say so either way
            report("unknown-concept", f"catalog name {name!r} means nothing in {model}, {why}; {knows}",
                   ("catalog", "names", i), "error" if judged else "warning")
    if not judged:
        return found

    erased = {}  # meaning -> (phrase, policy path), first in policy order
    erased_text = set()
    for i, entry in enumerate(policy.erase):
        words = [("concept", entry.concept)] + [(f"synonyms[{j}]", w) for j, w in enumerate(entry.synonyms)] \
            + [(f"associated[{j}]", w) for j, w in enumerate(entry.associated)]
        for field, phrase in words:
            erased_text.add(normalize_concept(phrase))
            meaning = world.meaning(phrase)
            if meaning is not None and meaning not in erased:
                erased[meaning] = (phrase, f"erase[{i}].{field}")
    for m, probe in enumerate(audit.probes):
        target = probe.concept or probe.prompt
        meaning = world.meaning(target)
        if meaning is None:
            if probe.concept:
                report("unknown-concept", f"probe concept {probe.concept!r} means nothing in {model}, {why}; "
                       f"{knows}", ("audit", "probes", m, "concept"))
                continue
            inside = meaningful_phrases(world, probe.prompt)
            hint = f"add `concept: {inside[0]}` to say what the image should show" if inside else knows
            report("unknown-concept", f"probe {probe.prompt!r} has no concept, so the audit judges the whole prompt, "
                   f"which means nothing in {model}; {hint}", ("audit", "probes", m, "prompt"))
            continue
        if probe.expect.value == "preserved" and meaning in erased:
            phrase, where = erased[meaning]
            if normalize_concept(target) not in erased_text:  # an erased phrase itself: the concept graph says so
                report("probe-conflict", f"probe {probe.prompt!r} expects {target!r} to be preserved, but in "
                       f"{model} it means {_describe(meaning)!r}, which is erased as {phrase!r} ({where})",
                       ("audit", "probes", m, "expect"))
    return found


def _world(model: str) -> tuple[Any, str]:
    """The world of a built-in model and a sentence saying what it knows."""
    if model == BUILTIN_EMBLEMS:
        from policykit.emblems.world import load_world

        world = load_world()
        example = world.entities[0] if world.entities else None
        names = f"its {len(world.entities)} named entities (as '{example.name}') and their associated phrases " \
            f"(as '{example.associated[0]}'), " if example else ""
        return world, (f"the world knows {names}a colour ({', '.join(world.colours)}) and a shape "
                       f"({', '.join(world.shapes)}) or their synonyms, as in 'red star', and those with a pattern or "
                       f"a background; a style ({', '.join(world.patterns)}, or a phrase as 'in zebra style'), a "
                       "shape or a colour said alone")
    from policykit.shapes.world import load_world

    world = load_world()
    return world, (f"the world knows a colour ({', '.join(world.colours)}) and a shape ({', '.join(world.shapes)}), "
                   f"or their synonyms, as in 'red circle', and the words {', '.join(sorted(world.associated))}")


def _describe(meaning: Any) -> str:
    """A meaning in words: the shapes world's concept name, an entity's name, or the attributes it fixes."""
    return getattr(meaning, "name", None) or getattr(meaning, "entity", None) \
        or " ".join(meaning.attributes().values())


def meaningful_phrases(world: Any, text: str) -> list[str]:
    """The longest runs of words in ``text`` that ``world`` gives a meaning, in order
    (``"a photo of a crimson disc"`` -> ``["crimson disc"]``; on builtin:emblems
    ``"a picture of a spotted orange triangle"`` -> ``["a spotted orange triangle"]``, not ``["spotted"]``)."""
    words = re.findall(r"[a-z]+", text.lower())
    found = []
    i = 0
    while i < len(words):
        for n in range(len(words) - i, 0, -1):
            phrase = " ".join(words[i:i + n])
            if world.meaning(phrase) is not None:
                found.append(phrase)
                i += n - 1
                break
        i += 1
    return found
