"""Audit prompts, per-image seeding and classification bookkeeping."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from policykit.audit.sampling import audit_prompts, classify_outcomes, generate, grid_png, image_seed
from policykit.plan import compile_plan
from policykit.policy.loader import load_policy

REPO = Path(__file__).resolve().parents[1]


class NoisePipe:
    """Stands in for a diffusers pipeline: each image is its generator's noise."""

    device = torch.device("cpu")

    def __init__(self, offset=0.0):
        self.offset = offset
        self.batches = []

    def __call__(self, prompt, num_inference_steps, guidance_scale, generator, output_type):
        assert len(generator) == len(prompt) and output_type == "np"
        self.batches.append(len(prompt))
        images = [torch.rand(4, 4, 3, generator=g).numpy() * 0.5 + self.offset for g in generator]
        return SimpleNamespace(images=np.stack(images))


def test_demo_audit_prompts_cover_every_role():
    plan = compile_plan(load_policy(REPO / "policies/demo.yaml"))
    prompts = audit_prompts(plan)
    roles = {}
    for p in prompts:
        roles.setdefault(p.role, []).append(p)
    assert [p.prompt for p in roles["erased"]] == [t.format("red circle") for t in plan.erase[0].templates]
    assert {p.concept for p in roles["synonym"] + roles["associated"]} == {"red circle"}
    assert len(roles["synonym"]) == 3 and len(roles["associated"]) == 2
    assert {p.concept for p in roles["preserved"]} == {"red square", "blue circle", "yellow circle", "green triangle"}


def test_images_do_not_depend_on_batch_size():
    a = generate(NoisePipe(), ["x", "y", "z"], per_prompt=3, seed=7, steps=2, guidance=1.0, batch_size=2)
    b = generate(NoisePipe(), ["x", "y", "z"], per_prompt=3, seed=7, steps=2, guidance=1.0, batch_size=16)
    assert a.shape == (3, 3, 4, 4, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    c = generate(NoisePipe(), ["y"], per_prompt=3, seed=7, steps=2, guidance=1.0)
    assert np.array_equal(a[1], c[0])  # a prompt's images do not depend on the other prompts
    assert image_seed(7, "x", 0) != image_seed(7, "x", 1) != image_seed(8, "x", 1)


def test_outcomes_count_hits_before_and_after():
    class BrightIsConcept:
        name = "fake"

        def shows(self, images, concept):
            return [bool(img.mean() > 127) for img in images]

    plan = compile_plan(load_policy(REPO / "policies/demo.yaml"))
    prompts = audit_prompts(plan)[:2]
    kwargs = dict(per_prompt=4, seed=0, steps=1, guidance=1.0)
    texts = [p.prompt for p in prompts]
    before = generate(NoisePipe(offset=0.5), texts, **kwargs)
    after = generate(NoisePipe(offset=0.0), texts, **kwargs)
    results = classify_outcomes(prompts, before, after, BrightIsConcept())
    assert [(r.before.hits, r.after.hits) for r in results] == [(4, 0), (4, 0)]
    assert results[0].grid_before_png.startswith(b"\x89PNG")


def test_grid_layout():
    from io import BytesIO

    from PIL import Image

    png = grid_png(np.zeros((10, 4, 4, 3), dtype=np.uint8), columns=8, scale=2)
    assert Image.open(BytesIO(png)).size == ((8 * 5 - 1) * 2, (2 * 5 - 1) * 2)
