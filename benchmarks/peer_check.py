"""Compare policykit's `uce` and `mace` closed forms with edits written by the authors' own code.

    python benchmarks/peer_check.py --references DIR

``DIR`` holds safetensors files of edited ``attn2.to_k`` / ``to_v`` weights
(U-Net ``state_dict`` keys) that the authors' public code produced on
builtin:shapes for the cases below (docs/method.md, "How the presets were
checked"). policykit ships none of the authors' code: run their functions
yourself and save the edited weights under these names. Prints the largest
per-layer relative error ``||W_ours - W_ref|| / ||W_ref||`` of each case and
exits 1 when any is 1e-3 or more (a missing file is reported and skipped).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TOLERANCE = 1e-3

#: name, reference file, preset, erase (concept, anchor), preserves, category, settings override
CASES = [
    ("uce: red circle -> gray circle", "uce_ref.safetensors", "uce", [("red circle", "gray circle")],
     ["blue square", "green triangle"], "object", {}),
    ("uce: red circle -> ''", "uce_uncond_ref.safetensors", "uce", [("red circle", "")],
     ["blue square", "green triangle"], "object", {}),
    ("uce: 'a photo of ...' prompts", "uce_photo_ref.safetensors", "uce",
     [("a photo of a red circle", "a photo of a gray circle")],
     ["a photo of a blue square", "a photo of a green triangle"], "object", {}),
    ("mace object config", "mace_ref.safetensors", "mace", [("red circle", "gray circle")], [], "object", {}),
    # the authors' person config with the preserves in MACE's prior cache (weight tps^2 = 1e-8), float64 run
    ("mace person config (lambda 0)", "mace_cele1_retain_f64_ref.safetensors", "mace",
     [("red circle", "gray circle")], ["blue square", "green triangle"], "person", {"preserve_scale": 1e-8}),
    ("mace lambda 1, preserve scale 0.5", "mace_retain_synthetic_ref.safetensors", "mace",
     [("red circle", "gray circle")], ["blue square", "green triangle"], "object",
     {"lambda_": 1.0, "preserve_scale": 0.25}),
]


def _plan(method: str, erase, preserve, category: str):
    from policykit.plan import compile_plan
    from policykit.policy.schema import Policy

    return compile_plan(Policy.model_validate({
        "apiVersion": "policykit/v1alpha1", "kind": "ErasurePolicy", "metadata": {"name": "check", "version": "1.0.0"},
        "base_model": {"id": "builtin:shapes"},
        "erase": [{"concept": c, "anchor": a, "category": category} for c, a in erase],
        "preserve": [{"concept": p} for p in preserve], "training": {"method": method}}))


def edited_weights(plan, pipe, override: dict) -> dict:
    """The closed form's edited weights ``W'`` for ``plan`` (its settings with ``override``)."""
    from policykit.realera import closed_form, peer_rows

    settings = plan.stage("closed_form_refinement").settings.model_copy(update=override)
    erase, preserve = peer_rows.build(settings.rows, plan, pipe, settings)
    delta = closed_form.run(plan, pipe, settings, erase=erase, preserve=preserve).delta
    state = pipe.unet.state_dict()
    return {k: state[k] + v for k, v in delta.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--references", type=Path, required=True, help="folder of the authors' edits")
    args = parser.parse_args(argv)
    from safetensors.torch import load_file

    from policykit.models import load_pipeline, resolve_model

    pipe = load_pipeline(resolve_model("builtin:shapes"))
    worst_overall, checked = 0.0, 0
    for name, file, method, erase, preserve, category, override in CASES:
        path = args.references / file
        if not path.is_file():
            print(f"{name:40s} skipped: {path} not found")
            continue
        ref = load_file(str(path))
        ours = edited_weights(_plan(method, erase, preserve, category), pipe, override)
        missing = set(ref) - set(ours)
        if missing:
            print(f"{name:40s} FAIL: the reference edits {sorted(missing)[:2]}..., policykit does not")
            return 1
        worst = max(float((ours[k].double() - ref[k].double()).norm() / ref[k].double().norm()) for k in ref)
        worst_overall, checked = max(worst_overall, worst), checked + 1
        print(f"{name:40s} {file:40s} max per-layer relative error {worst:.2e}  {'ok' if worst < TOLERANCE else 'FAIL'}")
    print(f"{checked} case(s) checked, worst {worst_overall:.2e} (tolerance {TOLERANCE:g})")
    return 0 if checked and worst_overall < TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
