"""Benchmark: how fast builtin:shapes loads and samples on a CPU.

Targets (issue "builtin:shapes"): loading the pipeline under 2 s, and a batch
of 16 images at 25 steps (classifier-free guidance) under 5 s, on the 2-core
machine. Prints numbers; asserts nothing.

    python benchmarks/shapes_speed.py [--repeat 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    """Time pipeline loading and one 16-image, 25-step batch."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared 2-core machine)")
    args = parser.parse_args()

    started = time.perf_counter()
    import torch

    # Import the pipeline's modules up front: diffusers imports them lazily on
    # the first from_pretrained, which is import time, not loading time.
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion  # noqa: F401
    import transformers.models.clip.modeling_clip  # noqa: F401

    from policykit.models.loading import load_pipeline
    from policykit.shapes.sampling import MODEL_DIR, sample_images

    torch.set_num_threads(args.threads)
    imported = time.perf_counter() - started

    loads = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        pipe = load_pipeline(MODEL_DIR)
        loads.append(time.perf_counter() - t0)
    prompts = [f"a picture of a {c} circle" for c in ("red", "blue", "green", "yellow")] * 4
    sample_images(pipe, prompts[:2], seed=0, steps=2)  # warm-up: first-call allocations
    batches = []
    for r in range(args.repeat):
        t0 = time.perf_counter()
        sample_images(pipe, prompts, seed=r, steps=25, batch_size=16)
        batches.append(time.perf_counter() - t0)
    print(f"torch/diffusers import: {imported:.2f} s (once per process, not counted below)")
    print(f"load pipeline:          median {statistics.median(loads):.2f} s  (target < 2 s)  runs {[round(x, 2) for x in loads]}")
    print(f"16 images x 25 steps:   median {statistics.median(batches):.2f} s  (target < 5 s)  runs {[round(x, 2) for x in batches]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
