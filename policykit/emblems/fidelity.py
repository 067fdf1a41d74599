"""Name-only erasure on builtin:emblems: what it removes, what it keeps, what it leaves.

``python -m policykit.emblems.fidelity`` erases entities one at a time, by
their NAME only, with a preset of the engine (default ``uce``: UCE as its
authors wrote it, docs/method.md "Presets": the name's last token, EOS and
every padding position mapped to the empty prompt's, the empty prompt
preserved, lambda 0.5). ``--preserve`` adds what the policy preserves:
``none`` (the preset alone), ``objects`` (the world's 54 object phrases,
``a red star``) or ``names`` (every other entity's name, as a brand list
would keep its other brands). It then samples, per erased entity, with the
same prompts and seeds before and after the edit,

- images of the erased name: how often the entity is drawn (erasure);
- images of its associated phrases: how often it is drawn (the residue a
  name-only erasure leaves, which a neighbourhood-aware method must find);
- images of other entities' names: how often they are right (fidelity).

The world is useful for erasure benchmarks when fidelity is high (>= 90%)
and residue exists (>= 30%), as with real brands and characters.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from policykit.emblems.world import World, load_world

PRESERVES = ("none", "objects", "names")


def preserved_phrases(world: World, name: str, preserve: str) -> list[str]:
    """What a name-only policy preserves under ``preserve`` (see the module docstring)."""
    if preserve == "objects":
        return [world.object_phrase(c, s) for c in world.colours for s in world.shapes]
    if preserve == "names":
        return [e.name for e in world.entities if e.name != name]
    return []


def name_plan(world: World, name: str, method: str = "uce", preserve: str = "none"):
    """The compiled plan erasing ``name`` alone (anchor: the empty prompt) with ``method``."""
    from policykit.plan import compile_plan
    from policykit.policy.schema import Policy

    if preserve not in PRESERVES:
        raise ValueError(f"preserve must be one of {PRESERVES}, got {preserve!r}")
    policy = {
        "apiVersion": "policykit/v1alpha1", "kind": "ErasurePolicy",
        "metadata": {"name": "emblems-fidelity", "version": "1.0.0"},
        "base_model": {"id": "builtin:emblems"},
        "defaults": {"templates": list(world.templates)},
        "erase": [{"concept": name, "anchor": ""}],
        "preserve": [{"concept": p} for p in preserved_phrases(world, name, preserve)],
        "training": {"method": method, "seed": 0},
    }
    return compile_plan(Policy.model_validate(policy))


def erase_name(pipe, world: World, name: str, method: str = "uce", preserve: str = "none") -> dict:
    """The weight deltas (``state_dict`` keys of the U-Net) that erase ``name`` with ``method``."""
    from policykit.realera.engine import run_plan

    plan = name_plan(world, name, method, preserve)
    edit = run_plan(plan, pipe, cache_dir=None, inputs_key="builtin:emblems", log=lambda line: None,
                    progress=False)
    if edit.lora is not None:
        raise ValueError(f"{method} trains a LoRA; fidelity measures closed-form presets (uce, mace, realera-cf)")
    return edit.weights


def measure(pipe, world: World, erased: list[str], images: int = 4, others: int = 24, seed: int = 0,
            method: str = "uce", preserve: str = "none", **sampling) -> list[dict]:
    """Per erased entity, before and after the edit: share of name images showing it, of phrase images
    showing it, and of other entities' images showing them (same prompts and seeds)."""
    import torch

    from policykit.emblems.classify import classify_images
    from policykit.emblems.sampling import sample_images

    from policykit.realera.edit import temporary_edit

    rng = np.random.default_rng([seed, 11])
    rows = []
    for name in erased:
        entity = world.entity(name)
        pool = [e for e in world.entities if e.name != name]
        unrelated = [pool[i] for i in rng.choice(len(pool), size=min(others, len(pool)), replace=False)]
        prompts = [world.templates[i % len(world.templates)].format(name) for i in range(images)]
        prompts += [world.templates[(i + 2) % len(world.templates)].format(p) for p in entity.associated for i in range(images)]
        prompts += [world.templates[i % len(world.templates)].format(u.name) for u in unrelated for i in range(2)]
        before = [r.entity for r in classify_images(world, sample_images(pipe, prompts, seed=seed, **sampling))]
        delta = erase_name(pipe, world, name, method, preserve)
        with torch.no_grad(), temporary_edit(pipe.unet, delta):
            after = [r.entity for r in classify_images(world, sample_images(pipe, prompts, seed=seed, **sampling))]
        n_phr = images * len(entity.associated)
        wanted_others = [u.name for u in unrelated for _ in range(2)]
        row = {"entity": name}
        for when, shown in (("before", before), ("after", after)):
            row[f"name_{when}"] = float(np.mean([s == name for s in shown[:images]]))
            row[f"phrase_{when}"] = float(np.mean([s == name for s in shown[images:images + n_phr]]))
            row[f"others_{when}"] = float(np.mean([s == w for s, w in zip(shown[images + n_phr:], wanted_others)]))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Erase entities by name one at a time and print what was erased, left and kept."""
    from policykit.emblems.sampling import GUIDANCE_SCALE, MODEL_DIR, SAMPLING_STEPS, load_pipeline

    parser = argparse.ArgumentParser(prog="python -m policykit.emblems.fidelity", description=main.__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--entities", type=int, default=8, help="erase this many entities (spread over the list)")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--others", type=int, default=24)
    parser.add_argument("--method", default="uce", help="a closed-form preset: uce (default), mace, realera-cf")
    parser.add_argument("--preserve", choices=PRESERVES, default="none",
                        help="what the name-only policy preserves besides the preset's own (default: none)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--cache-dir", type=Path, metavar="DIR",
                        help="keep each sampled batch in DIR, keyed by the weights, prompts, seed and settings, so that a "
                             "rerun after a stop picks up where it stopped (default: none)")
    parser.add_argument("--write", action="store_true",
                        help="also write the table into docs/builtin-emblems.md (section fidelity-METHOD-PRESERVE)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    world = load_world()
    pipe = load_pipeline(args.model)
    step = max(1, len(world.entities) // args.entities)
    erased = [world.entities[i].name for i in range(0, len(world.entities), step)][:args.entities]
    rows = measure(pipe, world, erased, images=args.images, others=args.others, method=args.method,
                   preserve=args.preserve, steps=SAMPLING_STEPS, guidance_scale=GUIDANCE_SCALE,
                   cache_dir=args.cache_dir)
    lines = [f"Name-only erasure with the `{args.method}` preset, preserving {args.preserve}: {len(rows)} entities "
             f"erased one at a time, {args.images} images per prompt, {args.others} unrelated entities x 2 images; "
             "before -> after the edit.", "",
             "| erased entity | name draws it | associated phrases draw it (residue) | unrelated entities right |",
             "|---|---|---|---|"]
    keys = ("name", "phrase", "others")
    for r in rows:
        lines.append(f"| {r['entity']} | " + " | ".join(f"{r[k + '_before']:.0%} -> {r[k + '_after']:.0%}"
                                                      for k in keys) + " |")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "entity"}
    lines.append("| **mean** | " + " | ".join(f"**{mean[k + '_before']:.0%} -> {mean[k + '_after']:.0%}**"
                                              for k in keys) + " |")
    kept = mean["others_after"] / max(mean["others_before"], 1e-9)
    residue = mean["phrase_after"] / max(mean["phrase_before"], 1e-9)
    lines += ["", f"Unrelated entities kept: **{kept:.0%}** of those right before (target >= 90%); residue: "
                  f"**{residue:.0%}** of the associated-phrase images that showed the entity before still show it "
                  "(target >= 30%)."]
    print("\n".join(lines))
    if args.write:
        from policykit.emblems.docs import provenance, write_section

        section = f"fidelity-{args.method}-{args.preserve}"
        print(f"\nwrote {write_section(section, provenance(args.model) + chr(10) * 2 + chr(10).join(lines))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
