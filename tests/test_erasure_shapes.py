"""End to end on builtin:shapes: erase policies/demo.yaml's concept and read the images' pixels.

The issue's targets, measured with the pixel-truth classifier on images the
edited pipeline draws (thresholds are the demo policy's audit thresholds and
are not loosened here):

- the erased prompt shows the concept in at most 10% of its images;
- its synonyms and associated words, at most 20%;
- the preserved concepts (including "red square" and "blue circle", which
  share a word with it) are drawn correctly in at least 85%.

The same edit is made with the ``uce`` preset (closed form, no mining) and
both are printed side by side with the base model, and with the concept's
other phrases in the world that the policy does not list ("held out": red
dot, scarlet circle...), where mining is expected to matter most.

Neighbor space: demo.yaml mines in ``space: text``. In text
space the concept's synonyms and associated words lie at 0.04-0.18 of its
norm and the preserves at 0.39 and beyond, so the radius (0.3) separates
them; in token space the radius reaches none of them (the nearest,
"crimson circle", is at 0.56) and the mined neighbors add little. Measured
with 8 images per phrase: on an early, weaker training of the world, token
space left the concept in 12% of erased images and 31% of "apple"/"cherry"
images (closed form only), text space 0% and 0%; on the full training both
spaces reach 0% erased / 0% synonyms / 100% preserved (``policykit neighbors
"red circle" --model builtin:shapes --space text --policy policies/demo.yaml``
shows the distances).

``POLICYKIT_SHAPES_MODEL`` points the test at another trained shapes
directory; without a model the test skips.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "policies" / "demo.yaml"
#: Images per phrase, cycling through the world's templates (most of them unseen by the edit).
IMAGES_PER_PHRASE = 8
ERASED_IMAGES = 16
SEED = 100


def _model_dir() -> Path | None:
    override = os.environ.get("POLICYKIT_SHAPES_MODEL")
    if override:
        return Path(override)
    from policykit.models import ModelNotAvailable, resolve_model

    try:
        return resolve_model("builtin:shapes").path
    except ModelNotAvailable:
        return None


MODEL = _model_dir()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(MODEL is None or not (MODEL / "model_index.json").is_file(),
                                 reason="builtin:shapes is not trained on this checkout")]


def _plan(method: str):
    from policykit.plan import compile_plan
    from policykit.policy.loader import load_policy
    from policykit.policy.schema import Policy

    loaded = load_policy(DEMO)
    assert loaded.ok, [d.format_text() for d in loaded.diagnostics]
    data = loaded.policy.model_dump(mode="json", by_alias=True)
    data["training"]["method"] = method
    return compile_plan(Policy.model_validate(data))


def _shown(pipe, world, phrases: list[str], images: int) -> dict[str, float]:
    """Per phrase: the share of its images that show what the phrase means."""
    from policykit.shapes.classify import classify_images
    from policykit.shapes.sampling import sample_images

    out = {}
    for phrase in phrases:
        # One seed for every phrase: the erased and the preserved prompts see the same starting noise.
        prompts = [world.templates[i % len(world.templates)].format(phrase) for i in range(images)]
        readings = classify_images(world, sample_images(pipe, prompts, seed=SEED))
        want = world.meaning(phrase)
        out[phrase] = sum(r.concept == want for r in readings) / images
    return out


def _groups(plan, world) -> dict[str, list[str]]:
    entry = plan.erase[0]
    listed = {entry.concept, *entry.synonyms, *entry.associated}
    held_out = [p.text for p in world.phrases(world.concept(entry.concept)) if p.text not in listed]
    return {"erased": [entry.concept], "synonyms+associated": [*entry.synonyms, *entry.associated],
            "held out": held_out, "preserved": [p.concept for p in plan.preserve]}


def _measure(pipe, world, groups) -> dict[str, dict[str, float]]:
    sizes = {"erased": ERASED_IMAGES}
    return {g: _shown(pipe, world, phrases, sizes.get(g, IMAGES_PER_PHRASE)) for g, phrases in groups.items()}


def _mean(values: dict[str, float]) -> float:
    return sum(values.values()) / len(values)


@pytest.fixture(scope="module")
def results():
    import torch

    from policykit.realera.edit import apply_edit
    from policykit.realera.engine import run_plan
    from policykit.models.loading import load_pipeline
    from policykit.shapes.world import load_world

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two OpenMP threads on a shared 2-core runner spin against each other
    world = load_world()
    base = load_pipeline(MODEL)
    out = {}
    groups = _groups(_plan("realera"), world)
    started = first = time.perf_counter()
    out["base"] = _measure(base, world, groups)
    print(f"base: images {time.perf_counter() - started:.0f}s")
    started = time.perf_counter()
    for method in ("realera", "uce"):
        plan = _plan(method)
        edit = run_plan(plan, base, inputs_key=f"test:{MODEL}", progress=False)
        trained = time.perf_counter()
        out[method] = _measure(apply_edit(copy.deepcopy(base), edit), world, groups)
        print(f"{method}: edit {trained - started:.0f}s, images {time.perf_counter() - trained:.0f}s")
        started = time.perf_counter()
    _print_table(out, groups, time.perf_counter() - first)
    torch.set_num_threads(threads)
    return out


def _print_table(out, groups, seconds: float) -> None:
    methods = list(out)
    print(f"\nshare of images showing each phrase's meaning ({seconds:.0f}s; erased: lower is better, "
          "preserved: higher is better)")
    print(f"{'group / phrase':32s}" + "".join(f"{m:>9s}" for m in methods))
    for group, phrases in groups.items():
        print(f"{group:32s}" + "".join(f"{_mean(out[m][group]):9.2f}" for m in methods))
        for phrase in phrases:
            print(f"  {phrase:30s}" + "".join(f"{out[m][group][phrase]:9.2f}" for m in methods))


def test_erased_prompt_shows_the_concept_at_most_10_percent(results):
    method = "realera"  # uce is measured and printed beside it, not held to the targets
    assert _mean(results[method]["erased"]) <= 0.10, results[method]["erased"]


def test_synonyms_and_associated_words_show_it_at_most_20_percent(results):
    method = "realera"  # uce is measured and printed beside it, not held to the targets
    assert _mean(results[method]["synonyms+associated"]) <= 0.20, results[method]["synonyms+associated"]


def test_preserved_concepts_stay_at_least_85_percent_correct(results):
    method = "realera"  # uce is measured and printed beside it, not held to the targets
    assert _mean(results[method]["preserved"]) >= 0.85, results[method]["preserved"]
