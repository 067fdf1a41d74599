"""Name-only erasure on builtin:emblems: what it removes, what it keeps, what it leaves.

``python -m policykit.emblems.fidelity`` erases entities one at a time, by
their NAME only, with a UCE-style closed-form edit of the cross-attention
``to_k``/``to_v`` projections (``policykit.realera.closed_form``; UCE's
lambda 0.1, erase scale 1, preserve scale 0.1): the name's last token, the
EOS token and every padding position, in each of the world's templates, map
to the empty prompt's (right-aligned: last token with the position before
EOS, EOS with EOS, padding with padding; ``--leak-padding N`` edits only N
padding positions); the object phrases (``a red star``) are preserved. It
then samples, per erased entity, with the same prompts and seeds before and
after the edit,

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

UCE_LAMBDA, UCE_ERASE_SCALE, UCE_PRESERVE_SCALE = 0.1, 1.0, 0.1


def _states(pipe, prompts: list[str]):
    import torch

    tok = pipe.tokenizer
    with torch.no_grad():
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        return pipe.text_encoder(ids)[0], ids


def _real_length(tokenizer, text: str) -> int:
    """Tokens of ``text`` with BOS and EOS."""
    return len(tokenizer(text).input_ids)


def name_erase_rows(pipe, world: World, name: str, leak_padding: int | None = None):
    """(embeddings, targets): name's last token + EOS + padding, and the empty prompt's partners, every template.

    ``leak_padding`` limits the padding positions to that many after EOS (None: all, as UCE does).
    """
    import torch

    tok = pipe.tokenizer
    prompts = [t.format(name) for t in world.templates]
    anchors = [" ".join(t.format("").split()) for t in world.templates]
    hidden, _ = _states(pipe, prompts)
    anchor_hidden, _ = _states(pipe, anchors)
    e, e_star = [], []
    for k, template in enumerate(world.templates):
        last = _real_length(tok, template.split("{}")[0] + name) - 2
        eos = _real_length(tok, prompts[k]) - 1
        anchor_eos = _real_length(tok, anchors[k]) - 1
        positions = [last] + list(range(eos, tok.model_max_length))
        partners = [max(anchor_eos - 1, 0)] + list(range(anchor_eos, tok.model_max_length))
        n = min(len(positions), len(partners), 2 + (leak_padding if leak_padding is not None else tok.model_max_length))
        positions, partners = positions[:n], partners[:n]
        e.append(hidden[k, positions])
        e_star.append(anchor_hidden[k, partners])
    return torch.cat(e), torch.cat(e_star)


def preserve_rows(pipe, world: World):
    """Every position of every template with each canonical object phrase (``a red star``)."""
    prompts = [t.format(world.object_phrase(c, s)) for c in world.colours for s in world.shapes for t in world.templates]
    hidden, _ = _states(pipe, prompts)
    return hidden.reshape(-1, hidden.shape[-1])


def erase_name(pipe, world: World, name: str, preserved=None, leak_padding: int | None = None) -> dict:
    """The edited ``to_k``/``to_v`` weights (``state_dict`` keys) that erase ``name``."""
    from policykit.realera.closed_form import closed_form_refine

    e, e_star = name_erase_rows(pipe, world, name, leak_padding)
    preserved = preserve_rows(pipe, world) if preserved is None else preserved
    return closed_form_refine(pipe.unet, [(e, e_star, UCE_ERASE_SCALE)], [(preserved, UCE_PRESERVE_SCALE)], UCE_LAMBDA)


def measure(pipe, world: World, erased: list[str], images: int = 4, others: int = 24, seed: int = 0,
            leak_padding: int | None = None, **sampling) -> list[dict]:
    """Per erased entity, before and after the edit: share of name images showing it, of phrase images
    showing it, and of other entities' images showing them (same prompts and seeds)."""
    import torch

    from policykit.emblems.classify import classify_images
    from policykit.emblems.sampling import sample_images

    preserved = preserve_rows(pipe, world)
    original = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
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
        edited = erase_name(pipe, world, name, preserved, leak_padding)
        with torch.no_grad():
            pipe.unet.load_state_dict({**original, **edited})
        try:
            after = [r.entity for r in classify_images(world, sample_images(pipe, prompts, seed=seed, **sampling))]
        finally:
            with torch.no_grad():
                pipe.unet.load_state_dict(original)
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
    parser.add_argument("--leak-padding", type=int, help="padding positions after EOS to edit (default: all, as UCE)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    world = load_world()
    pipe = load_pipeline(args.model)
    step = max(1, len(world.entities) // args.entities)
    erased = [world.entities[i].name for i in range(0, len(world.entities), step)][:args.entities]
    rows = measure(pipe, world, erased, images=args.images, others=args.others, leak_padding=args.leak_padding,
                   steps=SAMPLING_STEPS, guidance_scale=GUIDANCE_SCALE)
    padding = "all padding positions" if args.leak_padding is None else f"{args.leak_padding} padding positions"
    print(f"## Name-only UCE erasure (last name token, EOS, {padding}; {args.images} images per prompt, "
          f"{args.others} unrelated entities x 2 images; before -> after the edit)\n")
    print("| erased entity | name draws it | associated phrases draw it (residue) | unrelated entities right |")
    print("|---|---|---|---|")
    keys = ("name", "phrase", "others")
    for r in rows:
        print(f"| {r['entity']} | " + " | ".join(f"{r[k + '_before']:.0%} -> {r[k + '_after']:.0%}" for k in keys) + " |")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "entity"}
    print("| **mean** | " + " | ".join(f"**{mean[k + '_before']:.0%} -> {mean[k + '_after']:.0%}**" for k in keys) + " |")
    kept = mean["others_after"] / max(mean["others_before"], 1e-9)
    residue = mean["phrase_after"] / max(mean["phrase_before"], 1e-9)
    print(f"\nunrelated entities kept: {kept:.0%} of those right before; residue: {residue:.0%} of the phrase "
          f"images that showed the entity before still show it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
