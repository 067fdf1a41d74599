"""How good the shapes world is: sampled-image accuracy and text-space geometry.

``python -m policykit.shapes.quality`` measures the shipped model (or
``--model DIR``) and prints the tables in docs/builtin-shapes.md; the slow
tests in tests/test_shapes_quality.py call the same functions.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policykit.shapes.classify import classify_images
from policykit.shapes.world import Concept, World, load_world


@dataclass(frozen=True)
class PromptCase:
    """A prompt and the concept its images must show."""

    prompt: str
    concept: Concept
    kind: str  # "canonical", "synonym" or "associated"


@dataclass(frozen=True)
class CaseResult:
    """How the images of one prompt were read by the pixel-truth classifier."""

    case: PromptCase
    correct: bool
    colour_correct: bool
    shape_correct: bool


def canonical_cases(world: World, images_per_concept: int) -> list[PromptCase]:
    """``images_per_concept`` prompts per colour x shape concept, cycling through the templates."""
    return [PromptCase(world.templates[i % len(world.templates)].format(c.name), c, "canonical")
            for c in world.concepts for i in range(images_per_concept)]


def synonym_cases(world: World, images_per_concept: int, images_per_word: int) -> list[PromptCase]:
    """Prompts through synonyms (per concept, cycling its synonym phrases) and associated words."""
    cases = []
    for concept in world.concepts:
        phrases = [p for p in world.phrases(concept) if p.kind == "synonym"]
        for i in range(images_per_concept):
            phrase = phrases[i % len(phrases)]
            template = world.templates[(i + 1) % len(world.templates)]
            cases.append(PromptCase(template.format(phrase.text), concept, "synonym"))
    for word, concept in world.associated.items():
        cases += [PromptCase(world.templates[i % len(world.templates)].format(word), concept, "associated")
                  for i in range(images_per_word)]
    return cases


def run_cases(pipe, world: World, cases: list[PromptCase], seed: int = 0, **sampling) -> tuple[list[CaseResult], np.ndarray]:
    """Sample one image per case and read it with the pixel-truth classifier."""
    from policykit.shapes.sampling import sample_images

    images = sample_images(pipe, [c.prompt for c in cases], seed=seed, **sampling)
    results = []
    for case, reading in zip(cases, classify_images(world, images)):
        results.append(CaseResult(case, reading.concept == case.concept,
                                  reading.colour == case.concept.colour, reading.shape == case.concept.shape))
    return results, images


def accuracy(results: list[CaseResult]) -> float:
    """Share of results whose colour and shape were both right."""
    return sum(r.correct for r in results) / max(1, len(results))


def accuracy_by(results: list[CaseResult], key) -> dict:
    """Accuracy per ``key(result)``, keys in first-seen order."""
    groups: dict = {}
    for r in results:
        groups.setdefault(key(r), []).append(r)
    return {k: accuracy(v) for k, v in groups.items()}


def phrase_embeddings(clip, tokenizer, world: World, phrases: list[str]):
    """Unit CLIP text embeddings of phrases, each the normalised mean over the world's templates."""
    import torch

    with torch.no_grad():
        prompts = [t.format(p) for p in phrases for t in world.templates]
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        embeds = clip.get_text_features(input_ids=ids)
        embeds = getattr(embeds, "pooler_output", embeds)  # transformers 5 may wrap the features
        embeds = torch.nn.functional.normalize(embeds, dim=-1).reshape(len(phrases), len(world.templates), -1)
        return torch.nn.functional.normalize(embeds.mean(dim=1), dim=-1)


@dataclass(frozen=True)
class GeometryReport:
    """Where text-space geometry breaks what neighbor mining relies on (empty lists: it holds)."""

    misplaced_phrases: list[str]       # synonyms / associated words nearer another concept than their own
    unstructured_concepts: list[str]   # concepts whose nearest concept shares no word, or that are on
                                       # average no nearer to word-sharing concepts than to unrelated ones
    phrase_margin: float               # smallest (own - best other) cosine over all phrases
    mean_sharing_cosine: float         # over all pairs of concepts sharing a word
    mean_unrelated_cosine: float       # over all pairs sharing none


def text_geometry(clip, tokenizer, world: World) -> GeometryReport:
    """Check the synonym and word-sharing structure of the tiny CLIP's text space."""
    concepts = list(world.concepts)
    anchors = phrase_embeddings(clip, tokenizer, world, [c.name for c in concepts])
    phrases = [p for c in concepts for p in world.phrases(c) if p.kind != "canonical"]
    similarity = (phrase_embeddings(clip, tokenizer, world, [p.text for p in phrases]) @ anchors.T).numpy()
    misplaced, phrase_margin = [], 1e9
    for p, row in zip(phrases, similarity):
        own = concepts.index(p.concept)
        margin = row[own] - np.delete(row, own).max()
        phrase_margin = min(phrase_margin, float(margin))
        if margin <= 0:
            misplaced.append(f"{p.text} -> {concepts[int(row.argmax())].name} (not {p.concept.name})")
    between = (anchors @ anchors.T).numpy()
    unstructured, sharing_all, unrelated_all = [], [], []
    for i, a in enumerate(concepts):
        shares = [j != i and (a.colour == b.colour or a.shape == b.shape) for j, b in enumerate(concepts)]
        sharing = [between[i, j] for j, s in enumerate(shares) if s]
        unrelated = [between[i, j] for j, b in enumerate(concepts) if a.colour != b.colour and a.shape != b.shape]
        sharing_all += sharing
        unrelated_all += unrelated
        nearest = max((j for j in range(len(concepts)) if j != i), key=lambda j: between[i, j])
        if not shares[nearest] or np.mean(sharing) <= np.mean(unrelated):
            unstructured.append(a.name)
    return GeometryReport(misplaced, unstructured, phrase_margin,
                          float(np.mean(sharing_all)), float(np.mean(unrelated_all)))


def concept_grid(world: World, images: np.ndarray, cases: list[PromptCase], per_concept: int,
                 scale: int = 2, gap: int = 4) -> np.ndarray:
    """A picture: one row per colour, one cell per shape, each cell the concept's first ``per_concept`` images."""
    size = images.shape[1]
    cell_width = per_concept * size
    grid = np.full((len(world.colours) * (size + gap), len(world.shapes) * (cell_width + gap), 3), 255, np.uint8)
    for concept in world.concepts:
        row, col = world.colours.index(concept.colour), world.shapes.index(concept.shape)
        picked = [img for img, c in zip(images, cases) if c.concept == concept][:per_concept]
        y, x = row * (size + gap), col * (cell_width + gap)
        grid[y:y + size, x:x + len(picked) * size] = np.concatenate(picked, axis=1)
    return grid.repeat(scale, axis=0).repeat(scale, axis=1)


def main(argv: list[str] | None = None) -> int:
    """Measure a shapes model and print markdown tables (and optionally save the sample picture)."""
    from policykit.models.loading import load_pipeline
    from policykit.shapes.sampling import GUIDANCE_SCALE, MODEL_DIR, SAMPLING_STEPS, load_clip

    parser = argparse.ArgumentParser(prog="python -m policykit.shapes.quality", description=main.__doc__)
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--images-per-concept", type=int, default=8)
    parser.add_argument("--picture", type=Path, help="write a PNG of sampled images per concept here")
    parser.add_argument("--guidance", type=float, default=GUIDANCE_SCALE)
    parser.add_argument("--steps", type=int, default=SAMPLING_STEPS)
    args = parser.parse_args(argv)

    import torch

    # One thread: on a shared 2-core machine two spinning OpenMP threads are several times slower.
    torch.set_num_threads(1)
    world = load_world()
    pipe = load_pipeline(args.model)
    sampling = dict(steps=args.steps, guidance_scale=args.guidance)
    cases = canonical_cases(world, args.images_per_concept)
    results, images = run_cases(pipe, world, cases, seed=0, **sampling)
    by_concept = accuracy_by(results, lambda r: r.case.concept.name)
    print(f"## Colour x shape prompts ({args.images_per_concept} images each, {args.steps} steps, guidance {args.guidance})\n")
    print("| concept | correct | colour right | shape right |")
    print("|---|---|---|---|")
    for name, acc in by_concept.items():
        mine = [r for r in results if r.case.concept.name == name]
        print(f"| {name} | {acc:.0%} | {np.mean([r.colour_correct for r in mine]):.0%} | {np.mean([r.shape_correct for r in mine]):.0%} |")
    print(f"| **all** | **{accuracy(results):.1%}** | {np.mean([r.colour_correct for r in results]):.1%} | {np.mean([r.shape_correct for r in results]):.1%} |")
    syn_cases = synonym_cases(world, 4, 8)
    syn_results, _ = run_cases(pipe, world, syn_cases, seed=1, **sampling)
    print("\n## Synonyms and associated words\n")
    print("| prompts | correct |")
    print("|---|---|")
    for kind, acc in accuracy_by(syn_results, lambda r: r.case.kind).items():
        print(f"| {kind} | {acc:.1%} |")
    print(f"| **all** | **{accuracy(syn_results):.1%}** |")
    word_acc = accuracy_by([r for r in syn_results if r.case.kind == "associated"], lambda r: r.case.prompt.split()[-1])
    print("\nassociated words: " + ", ".join(f"{w} {a:.0%}" for w, a in word_acc.items()))
    geometry = text_geometry(load_clip(args.model), pipe.tokenizer, world)
    print(f"\n## Text-space geometry\n\n{geometry}")
    if args.picture:
        from PIL import Image

        args.picture.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(concept_grid(world, images, cases, min(4, args.images_per_concept))).save(args.picture, optimize=True)
        print(f"\nwrote {args.picture}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
