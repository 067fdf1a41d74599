"""The quality builtin:shapes must reach (issue targets; numbers are printed).

Sampling uses the shipped defaults (25 steps, classifier-free guidance) and
reads every image with the pixel-truth classifier.
"""

import pytest

from policykit.shapes.sampling import MODEL_DIR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MODEL_DIR / "model_index.json").is_file(), reason="shapes model not trained"),
]

IMAGES_PER_CONCEPT = 8


@pytest.fixture(scope="module")
def world():
    from policykit.shapes.world import load_world

    return load_world()


@pytest.fixture(scope="module")
def pipe():
    import torch

    from policykit.models.loading import load_pipeline

    # One thread: on a shared 2-core machine two spinning OpenMP threads are several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_pipeline(MODEL_DIR)
    torch.set_num_threads(threads)


def test_colour_x_shape_prompts_are_drawn_right(pipe, world):
    from policykit.shapes.quality import accuracy, accuracy_by, canonical_cases, run_cases

    results, _ = run_cases(pipe, world, canonical_cases(world, IMAGES_PER_CONCEPT), seed=0)
    per_concept = accuracy_by(results, lambda r: r.case.concept.name)
    overall = accuracy(results)
    print(f"\ncolour x shape: {overall:.1%} of {len(results)} images correct")
    print("  " + ", ".join(f"{name} {acc:.0%}" for name, acc in per_concept.items()))
    assert overall >= 0.90
    worst = min(per_concept, key=per_concept.get)
    assert per_concept[worst] >= 0.75, f"{worst}: {per_concept[worst]:.0%}"


def test_synonyms_and_associated_words_reach_their_concept(pipe, world):
    from policykit.shapes.quality import accuracy, accuracy_by, run_cases, synonym_cases

    results, _ = run_cases(pipe, world, synonym_cases(world, images_per_concept=4, images_per_word=8), seed=1)
    by_kind = accuracy_by(results, lambda r: r.case.kind)
    print(f"\nsynonyms and associated words: {accuracy(results):.1%} of {len(results)} images correct "
          f"({', '.join(f'{k} {a:.1%}' for k, a in by_kind.items())})")
    assert accuracy(results) >= 0.80


def test_text_space_has_the_geometry_neighbor_mining_needs(pipe, world):
    from policykit.shapes.quality import text_geometry
    from policykit.shapes.sampling import load_clip

    report = text_geometry(load_clip(), pipe.tokenizer, world)
    print(f"\n{report}")
    assert report.misplaced_phrases == []
    assert report.unstructured_concepts == []
    assert report.mean_sharing_cosine > report.mean_unrelated_cosine
