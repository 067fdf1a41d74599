"""The erasure tasks on builtin:emblems (issue 13's benchmark), with their dev/test split.

Named entities, MACE's protocol: erase N entities by their names (N = 1, 10,
50, 100; three draws at 1 and 10), with the empty prompt as anchor for every
method. What the policy does not list is measured too: the erased entities'
associated phrases (the residue path: never named in the policy), held-out
mined neighbours (the audit's own), and entities the policy does not name
(expected to be kept), plus a few plain objects.

The split, fixed before any result was looked at: the 160 entities are
shuffled with seed 13 and cut in two pools of 80. **Dev** tasks draw their
erased, preserved and held-out entities from the first pool, **test** tasks
from the second; settings are chosen on dev and reported on test. 100
entities do not fit in a pool of 80: the 100-entity task is a test task
drawing from all 160 (its 60 unnamed entities are what its specificity is
measured on), and no setting is chosen on it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

WORLD = "builtin:emblems"
#: The policy's templates, and the audit's: three of the world's nine, the name in different positions.
TEMPLATES = ("a picture of {}", "the emblem of {}", "a logo showing {}")
#: Held-out prompts (residue phrases, unnamed entities, objects) are drawn in this template.
PROBE_TEMPLATE = "a picture of {}"
SPLIT_SEED, DRAW_SEED = 13, 7
SIZES = {1: 3, 10: 3, 50: 1}  # entities erased -> draws, in each pool
#: Images per audit prompt by entities erased (quality.py's default for this suite): the erased prompts
#: grow with the entities (3 per entity, and 2 held-out neighbours each), so the large tasks still count
#: 300-500 images of erased prompts with one image each.
SAMPLES_BY_SIZE = {1: 4, 10: 2, 50: 1, 100: 1}
#: Entities the policy lists as preserved, and how many unnamed ones are held out (never in the policy).
LISTED_PRESERVES, HELD_OUT_ENTITIES = 5, 15
#: At most this many associated phrases are audited per task (all of them up to 10 entities).
MAX_RESIDUE_PHRASES = 30
OBJECTS = (("red", "star"), ("blue", "circle"), ("green", "square"))


@lru_cache(maxsize=1)
def pools() -> dict[str, tuple[str, ...]]:
    """``{"dev": 80 entity names, "test": the other 80}``, fixed by :data:`SPLIT_SEED`."""
    from policykit.emblems.world import load_world

    names = [e.name for e in load_world().entities]
    order = np.random.default_rng(SPLIT_SEED).permutation(len(names))
    half = len(names) // 2
    return {"dev": tuple(names[i] for i in order[:half]), "test": tuple(names[i] for i in order[half:])}


def _task(split: str, size: int, draw: int, pool: tuple[str, ...]):
    from quality import Erase, Task

    from policykit.emblems.world import load_world

    world = load_world()
    rng = np.random.default_rng([DRAW_SEED, size, draw, 0 if split == "dev" else 1])
    order = [pool[i] for i in rng.permutation(len(pool))]
    erased = order[:size]
    rest = order[size:]
    listed, held = rest[:LISTED_PRESERVES], rest[LISTED_PRESERVES:LISTED_PRESERVES + HELD_OUT_ENTITIES]
    residue = [(phrase, name) for name in erased for phrase in world.entity(name).associated]
    if len(residue) > MAX_RESIDUE_PHRASES:
        residue = [residue[i] for i in sorted(rng.choice(len(residue), MAX_RESIDUE_PHRASES, replace=False))]
    objects = [world.object_phrase(c, s) for c, s in OBJECTS]  # "a red star"
    name = f"{split}-e{size}" + (f"-d{draw}" if size in SIZES and SIZES[size] > 1 else "")
    return Task(name, f"{size} entit{'y' if size == 1 else 'ies'} by name ({split})",
                tuple(Erase(n, "") for n in erased), tuple(listed), tuple(residue),
                tuple(held) + tuple(objects),
                world=WORLD, templates=TEMPLATES, probe_template=PROBE_TEMPLATE, split=split)


def catalog_names(task) -> tuple[str, ...]:
    """A retain catalog for ``task``: every entity of the world the task never judges (not erased, not
    listed, not held out), in the world's order. It is what a team's list of "names the model must keep"
    would be (UCE's papers preserve such a list of other artists or celebrities), with the one rule that keeps
    the measurement honest: no entity whose images are scored is in it, so the held-out column still measures
    names the policy does not know."""
    from policykit.emblems.world import load_world

    judged = {e.concept for e in task.erase} | set(task.preserve) | set(task.held_out_preserved)
    judged |= {concept for _, concept in task.held_out_erased}
    return tuple(e.name for e in load_world().entities if e.name not in judged)


@lru_cache(maxsize=1)
def emblem_tasks() -> tuple:
    """Every emblems task: dev and test at 1, 10 and 50 entities, the 100-entity test task, and the style and
    object tasks (:func:`style_tasks`)."""
    out = []
    for split, pool in pools().items():
        for size, draws in SIZES.items():
            out += [_task(split, size, d, pool) for d in range(draws)]
    out.append(_task("test", 100, 0, pools()["dev"] + pools()["test"]))
    return tuple(out) + style_tasks()


# ---------------------------------------------------------------- styles and objects
#
# Three kinds of task, each with a dev and a test instance (split before any was run; the settings compared
# on them are the ones chosen on the entity tasks' dev side, so the dev instances are there to choose
# settings for these kinds later, not used yet):
#
# - ``<split>-style-<pattern>``: erase one pattern (an artist's style) everywhere, by its adjectives, and keep
#   every shape and colour: "a striped red star" must still draw a red star, without stripes.
# - ``<split>-entity-style``: erase one entity's style only: its name must still draw its shape, colour and
#   background, in the plain style (the anchor says so), while every other entity and object keeps the
#   pattern. The policy's preserve of that kind: "keep the character, drop its livery".
# - ``<split>-object-<shape>``: erase a shape in every colour, keeping the other shapes.
#
# What an image is judged on is given as a *judged concept*: a phrase of the world (a pattern adjective or a
# shape word alone means that attribute), or ``attribute=value`` pairs (``shape=star,colour=red``) for what a
# phrase of the world cannot say, such as "the shape and colour, whatever the pattern". :func:`judged_meaning`
# reads them; quality.py's classifier judges with it.

#: Erased pattern and shape per split (the patterns and shapes left in the world are what must be kept).
STYLE_PATTERN = {"dev": "dotted", "test": "striped"}
OBJECT_SHAPE = {"dev": "circle", "test": "star"}
#: Colour and shape pairs the policy's templates put a pattern in, and those held out (never in the policy).
STYLE_OBJECTS = (("red", "star"), ("blue", "circle"), ("green", "square"))
HELD_OUT_OBJECTS = (("teal", "cross"), ("purple", "diamond"), ("orange", "triangle"), ("pink", "star"),
                    ("yellow", "square"), ("gray", "circle"))


def judged_meaning(world, concept: str):
    """What an image must show to count as showing ``concept`` (a :class:`~policykit.emblems.world.Meaning`),
    or None: ``attribute=value`` pairs, a pattern adjective, a shape word, or any phrase of the world."""
    from policykit.emblems.world import ATTRIBUTES, Meaning

    if "=" in concept:
        pairs = dict(part.split("=", 1) for part in concept.split(","))
        unknown = [a for a, v in pairs.items() if a not in ATTRIBUTES or v not in world.values(a)]
        if unknown:
            raise ValueError(f"judged concept {concept!r}: unknown attribute or value {unknown}")
        return Meaning(**pairs)
    return world.meaning(concept)  # a style, shape or colour said alone means that attribute (World.meaning)


def _style_task(split: str):
    """Erase one pattern everywhere (by its two adjectives; its phrases "in stripes" are held out)."""
    from quality import Erase, Task

    from policykit.emblems.world import load_world

    world = load_world()
    pattern = STYLE_PATTERN[split]
    first, *more = world.pattern_adjectives[pattern]
    others = [p for p in world.patterns if p not in (pattern, world.neutral_pattern)]
    probes = []
    for colour, shape in HELD_OUT_OBJECTS:
        for phrase in world.pattern_phrases[pattern]:  # the residue path: the style said another way
            probes.append((PROBE_TEMPLATE.format(f"a {colour} {shape} {phrase}"), first, "erased"))
        # the erased style's images must still draw the object
        probes.append((PROBE_TEMPLATE.format(f"a {first} {colour} {shape}"), f"shape={shape},colour={colour}",
                       "preserved"))
        for other in others:  # every other style, said by its second adjective (the policy lists the first)
            phrase = f"a {world.pattern_adjectives[other][-1]} {colour} {shape}"
            probes.append((PROBE_TEMPLATE.format(phrase), phrase, "preserved"))
    templates = tuple(t.format(f"a {{}} {c} {s}") for t, (c, s) in zip(TEMPLATES, STYLE_OBJECTS))
    return Task(f"{split}-style-{pattern}", f"the {pattern} style everywhere ({split})",
                (Erase(first, world.neutral_pattern, tuple(more)),),
                tuple(world.pattern_adjectives[p][0] for p in others), world=WORLD, templates=templates,
                probe_template=PROBE_TEMPLATE, split=split, probes=tuple(probes))


def _entity_style_task(split: str):
    """Erase one entity's pattern only: its name draws its emblem in the plain style."""
    from quality import Erase, Task

    from policykit.emblems.world import load_world

    world = load_world()
    pool = pools()[split]
    name = next(n for n in pool if world.entity(n).emblem.pattern != world.neutral_pattern)
    emblem = world.entity(name).emblem
    plain = f"a {world.neutral_pattern} {emblem.colour} {emblem.shape} on {emblem.background}"
    same = [n for n in pool if n != name and world.entity(n).emblem.pattern == emblem.pattern]
    listed, held = same[:LISTED_PRESERVES], same[LISTED_PRESERVES:LISTED_PRESERVES + HELD_OUT_ENTITIES]
    kept = f"shape={emblem.shape},colour={emblem.colour},background={emblem.background}"
    probes = [(PROBE_TEMPLATE.format(name), kept, "preserved")]
    probes += [(PROBE_TEMPLATE.format(phrase), kept, "preserved") for phrase in world.entity(name).associated]
    adjective = world.pattern_adjectives[emblem.pattern][0]
    probes += [(PROBE_TEMPLATE.format(f"a {adjective} {c} {s}"), f"a {adjective} {c} {s}", "preserved")
               for c, s in HELD_OUT_OBJECTS]
    return Task(f"{split}-entity-style", f"one entity's {emblem.pattern} style only ({split})",
                (Erase(name, plain),), tuple(listed), tuple((p, name) for p in world.entity(name).associated),
                tuple(held), world=WORLD, templates=TEMPLATES, probe_template=PROBE_TEMPLATE, split=split,
                probes=tuple(probes))


def _object_task(split: str):
    """Erase one shape in every colour (by its name and first synonym; its second synonym is held out)."""
    from quality import Erase, Task

    from policykit.emblems.world import load_world

    world = load_world()
    shape = OBJECT_SHAPE[split]
    words = world.shape_words(shape)
    others = [s for s in world.shapes if s != shape]
    held_erased = [(f"a {colour} {words[-1]}", shape) for colour, _ in HELD_OUT_OBJECTS]
    held_erased += [(f"a {colour} {shape}", shape) for colour, _ in HELD_OUT_OBJECTS[:3]]
    kept = [f"a {colour} {other}" for (colour, _), other in zip(HELD_OUT_OBJECTS, others * 2)]
    entities = [n for n in pools()[split] if world.entity(n).emblem.shape != shape][:5]
    templates = tuple(t.format(f"a {c} {{}}") for t, (c, _) in zip(TEMPLATES, STYLE_OBJECTS))
    return Task(f"{split}-object-{shape}", f"the {shape} in every colour ({split})",
                (Erase(shape, "", words[1:-1]),), tuple(others[:2]), tuple(held_erased),
                tuple(kept) + tuple(entities), world=WORLD, templates=templates, probe_template=PROBE_TEMPLATE,
                split=split)


def style_tasks() -> tuple:
    """The style and object tasks, dev then test of each kind."""
    return tuple(make(split) for make in (_style_task, _entity_style_task, _object_task) for split in ("dev", "test"))


#: The 100-entity policy `benchmarks/speed.py --only apply100` applies (written by :func:`write_policy`).
POLICY_100 = "policies/brand-emblems-100.yaml"


def policy_text(size: int = 100) -> str:
    """A brand-safety policy erasing the ``size``-entity test task's entities by name (anchor a gray circle,
    as policies/brand-emblems.yaml), keeping its listed preserves, with its held-out entities as probes."""
    task = next(t for t in emblem_tasks() if t.name == f"test-e{size}")
    lines = [
        f"# {size} brands erased at once on builtin:emblems: the test-e{size} task of benchmarks/emblem_tasks.py",
        "# (its erased entities by name, its listed preserves, its held-out entities as probes).",
        f"# Written by `python benchmarks/emblem_tasks.py --write-policy`; benchmarks/speed.py --only apply100",
        "# times its apply end to end (docs/benchmarks.md).",
        "apiVersion: policykit/v1alpha1",
        "kind: ErasurePolicy",
        "metadata:",
        f"  name: brand-emblems-{size}",
        "  version: 1.0.0",
        "  owner: policykit maintainers",
        "base_model:",
        f"  id: {WORLD}",
        "defaults:",
        "  anchor: a gray circle",
        "  templates:",
        *[f'    - "{t}"' for t in TEMPLATES],
        "erase:",
        *[f"  - concept: {e.concept}\n    category: brand" for e in task.erase],
        "preserve:",
        *[f"  - concept: {p}" for p in task.preserve],
        "training:",
        "  seed: 0",
        "  lora:",
        "    steps: 100",
        "    batch_size: 8",
        "audit:",
        "  # one image per prompt and one guidance scale: the audit draws base and edited images of",
        f"  # {3 * size} erased prompts and their held-out neighbours",
        "  samples_per_prompt: 1",
        "  probes:",
        *[f'    - prompt: "{PROBE_TEMPLATE.format(c)}"\n      expect: preserved\n      concept: {c}'
          for c in task.held_out_preserved if " " not in c],
        "  thresholds:",
        "    max_efficacy_accuracy: 0.10",
        "    min_specificity_accuracy: 0.85",
        "  guidance_scales: [4.0]",
        "output:",
        "  dir: artifacts",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import argparse
    import sys
    from pathlib import Path

    sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
    parser = argparse.ArgumentParser(description="print the emblems tasks, or write the 100-entity policy")
    parser.add_argument("--write-policy", action="store_true", help=f"write {POLICY_100}")
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    if args.write_policy:
        (root / POLICY_100).write_text(policy_text(), encoding="utf-8")
        print(f"wrote {POLICY_100}")
    else:
        for t in emblem_tasks():
            print(f"{t.name:14s} {t.split:4s} erase {len(t.erase):3d}, preserve {len(t.preserve)}, "
                  f"residue phrases {len(t.held_out_erased)}, held out {len(t.held_out_preserved)}")
