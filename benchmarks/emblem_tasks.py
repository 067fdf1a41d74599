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


@lru_cache(maxsize=1)
def emblem_tasks() -> tuple:
    """Every emblems task: dev and test at 1, 10 and 50 entities, and the 100-entity test task."""
    out = []
    for split, pool in pools().items():
        for size, draws in SIZES.items():
            out += [_task(split, size, d, pool) for d in range(draws)]
    out.append(_task("test", 100, 0, pools()["dev"] + pools()["test"]))
    return tuple(out)
