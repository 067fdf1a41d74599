"""The emblems world's text geometry: where associated phrases and synonyms sit.

``python -m policykit.emblems.geometry`` prints the tables in
docs/builtin-emblems.md. Two spaces are measured:

- CLIP's joint space (the projected text feature, each phrase embedded in
  every template, normalised mean), which neighbor mining searches;
- the U-Net's conditioning at the end of the prompt (the text encoder's last
  hidden state at the EOS token), which a name-only closed-form edit moves:
  if an associated phrase's EOS state were the name's, erasing the name
  would erase the phrase with it and leave no residue.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policykit.emblems.world import ATTRIBUTES, World, load_world
from policykit.shapes.quality import phrase_embeddings


def eos_states(text_encoder, tokenizer, world: World, phrases: list[str]):
    """Unit last-hidden-state vectors at EOS, each the normalised mean over the templates."""
    import torch

    with torch.no_grad():
        prompts = [t.format(p) for p in phrases for t in world.templates]
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        hidden = text_encoder(ids)[0]
        eos = (ids == tokenizer.eos_token_id).int().argmax(dim=1)
        states = torch.nn.functional.normalize(hidden[torch.arange(len(ids)), eos], dim=-1)
        states = states.reshape(len(phrases), len(world.templates), -1)
        return torch.nn.functional.normalize(states.mean(dim=1), dim=-1)


@dataclass(frozen=True)
class PhraseRow:
    """One associated phrase or synonym phrase against the entities (or objects)."""

    phrase: str
    owner: str
    kind: str         # "associated" or "synonym"
    own: float        # cosine to its own entity / object
    nearest_other: float
    mean_other: float
    rank: int         # 1 = its own is the nearest


def _rows(kind: str, phrases: list[str], owners: list[int], anchor_names: list[str],
          phrase_vecs, anchor_vecs) -> list[PhraseRow]:
    similarity = (phrase_vecs @ anchor_vecs.T).numpy()
    rows = []
    for text, own, row in zip(phrases, owners, similarity):
        others = np.delete(row, own)
        rows.append(PhraseRow(text, anchor_names[own], kind, float(row[own]), float(others.max()),
                              float(others.mean()), int((row > row[own]).sum()) + 1))
    return rows


def measure(clip, text_encoder, tokenizer, world: World) -> dict:
    """Every table of the geometry report, as data."""
    entities = list(world.entities)
    names = [e.name for e in entities]
    assoc = [(p, k) for k, e in enumerate(entities) for p in e.associated]
    objects = [(c, s) for c in world.colours for s in world.shapes]
    object_names = [world.object_phrase(c, s) for c, s in objects]
    synonyms = []
    for k, (c, s) in enumerate(objects):
        for cw in world.colour_words(c):
            for sw in world.shape_words(s):
                if (cw, sw) != (c, s):
                    synonyms.append((world.object_phrase(cw, sw), k))
    report = {}
    for space, embed in (("clip", lambda ps: phrase_embeddings(clip, tokenizer, world, ps)),
                         ("eos", lambda ps: eos_states(text_encoder, tokenizer, world, ps))):
        name_vecs = embed(names)
        rows = _rows("associated", [p for p, _ in assoc], [k for _, k in assoc], names, embed([p for p, _ in assoc]), name_vecs)
        rows += _rows("synonym", [p for p, _ in synonyms], [k for _, k in synonyms], object_names,
                      embed([p for p, _ in synonyms]), embed(object_names))
        between = (name_vecs @ name_vecs.T).numpy()
        by_shared: dict[int, list[float]] = {}
        for i, a in enumerate(entities):
            for j, b in enumerate(entities):
                if i < j:
                    shared = sum(getattr(a.emblem, x) == getattr(b.emblem, x) for x in ATTRIBUTES)
                    by_shared.setdefault(shared, []).append(float(between[i, j]))
        report[space] = {"rows": rows, "by_shared": {k: float(np.mean(v)) for k, v in sorted(by_shared.items())},
                         "pairs_by_shared": {k: len(v) for k, v in sorted(by_shared.items())}}
    return report


def _summary(rows: list[PhraseRow]) -> str:
    own = np.mean([r.own for r in rows])
    nearest = np.mean([r.nearest_other for r in rows])
    unrelated = np.mean([r.mean_other for r in rows])
    top1 = np.mean([r.rank == 1 for r in rows])
    return (f"{len(rows)} | {own:.3f} | {nearest:.3f} | {unrelated:.3f} | {top1:.1%} | "
            f"{min(r.own - r.nearest_other for r in rows):+.3f}")


def main(argv: list[str] | None = None) -> int:
    """Print the text-geometry tables of an emblems model."""
    from policykit.emblems.sampling import MODEL_DIR, load_clip, load_pipeline

    parser = argparse.ArgumentParser(prog="python -m policykit.emblems.geometry", description=main.__doc__)
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--per-phrase", action="store_true", help="also print one row per associated phrase")
    parser.add_argument("--write", action="store_true",
                        help="also write the tables (and the per-phrase rows) into docs/builtin-emblems.md")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    world = load_world()
    pipe = load_pipeline(args.model)
    report = measure(load_clip(args.model), pipe.text_encoder, pipe.tokenizer, world)
    titles = {"clip": "CLIP joint space", "eos": "EOS hidden state"}
    lines = ["| space | phrases | count | cosine to own | to nearest other | to others (mean) | own is nearest | "
             "worst margin |", "|---|---|---|---|---|---|---|---|"]
    for space, data in report.items():
        for kind, title in (("associated", "associated phrase vs entity names"),
                            ("synonym", "object synonym vs objects")):
            lines.append(f"| {titles[space]} | {title} | " + _summary([r for r in data["rows"] if r.kind == kind])
                         + " |")
    lines += ["", "Entity names, mean cosine between two names by the number of emblem attributes their entities "
              "share (the partial-credit structure):", "",
              "| attributes shared | pairs | CLIP joint space | EOS hidden state |", "|---|---|---|---|"]
    for shared, pairs in report["clip"]["pairs_by_shared"].items():
        lines.append(f"| {shared} | {pairs:,} | {report['clip']['by_shared'][shared]:.3f} | "
                     f"{report['eos']['by_shared'][shared]:.3f} |")
    clip_rows = [r for r in report["clip"]["rows"] if r.kind == "associated"]
    eos_rows = [r for r in report["eos"]["rows"] if r.kind == "associated"]
    lines += ["", f"Associated phrases whose own entity is the nearest name: {sum(r.rank == 1 for r in clip_rows)} "
              f"of {len(clip_rows)} in CLIP space (the others rank it {_ranks(clip_rows)}), "
              f"{sum(r.rank == 1 for r in eos_rows)} of {len(eos_rows)} at EOS; cosine to the own name at EOS "
              f"{min(r.own for r in eos_rows):.2f}-{max(r.own for r in eos_rows):.2f}."]
    print("\n".join(lines))
    details = []
    if args.per_phrase or args.write:
        details = ["<details><summary>Every associated phrase (CLIP space and EOS state: cosine to its own entity, "
                   "to the nearest other, and the own entity's rank)</summary>", "",
                   "| phrase | entity | own | nearest other | rank | EOS own | EOS nearest other | EOS rank |",
                   "|---|---|---|---|---|---|---|---|"]
        by_phrase = {r.phrase: r for r in eos_rows}
        for r in clip_rows:
            e = by_phrase[r.phrase]
            details.append(f"| {r.phrase} | {r.owner} | {r.own:.3f} | {r.nearest_other:.3f} | {r.rank} | "
                           f"{e.own:.3f} | {e.nearest_other:.3f} | {e.rank} |")
        details += ["", "</details>"]
        print("\n" + "\n".join(details))
    if args.write:
        from policykit.emblems.docs import provenance, write_section

        print(f"\nwrote {write_section('geometry', provenance(args.model) + chr(10) * 2 + chr(10).join(lines + [''] + details))}")
    return 0


def _ranks(rows: list[PhraseRow]) -> str:
    others = sorted(r.rank for r in rows if r.rank > 1)
    return f"{others[0]}-{others[-1]}" if others else "first everywhere"


if __name__ == "__main__":
    raise SystemExit(main())
