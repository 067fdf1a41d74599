"""Benchmark: how fast the pre-model commands are.

Targets (issue "The policy language and its compiler"): validate + plan of a
generated 1,000-concept policy under 1 s on the 2-core CI machine, and
``policykit --help`` under 0.3 s. Prints numbers; asserts nothing.

    python benchmarks/policy_speed.py [--concepts 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def generate_policy(n_concepts: int) -> str:
    """A valid policy with ``n_concepts`` erase entries, synonyms and preserves."""
    lines = [
        "apiVersion: policykit/v1alpha1",
        "kind: ErasurePolicy",
        "metadata:",
        "  name: bench",
        "  version: 1.0.0",
        "base_model:",
        # A hub id: builtin:shapes knows 24 concepts, and validate refuses
        # phrases it cannot mean ("concept 7"); --no-model never resolves it.
        "  id: CompVis/stable-diffusion-v1-4",
        "defaults:",
        "  neighbors:",
        "    radius: 0.2",
        "erase:",
    ]
    for i in range(n_concepts):
        lines += [
            f"  - concept: concept {i}",
            "    category: brand",
            f"    anchor: generic thing {i % 10}",
            f"    synonyms: [alias {i} a, alias {i} b]",
            f"    associated: [thing linked to {i}]",
        ]
        if i % 7 == 0:
            lines += ["    neighbors:", "      radius: 0.1", "    strength: 0.5"]
    lines.append("preserve:")
    for i in range(n_concepts // 4):
        lines.append(f"  - concept: kept concept {i}")
    return "\n".join(lines) + "\n"


def _time(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _fmt(times: list[float]) -> str:
    return f"median {statistics.median(times) * 1000:8.1f} ms   min {min(times) * 1000:8.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from policykit.graph import build_graph
    from policykit.plan import compile_plan, plan_json
    from policykit.policy.loader import load_policy

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(generate_policy(args.concepts))
        size_kib = path.stat().st_size / 1024

        def validate_and_plan() -> None:
            loaded = load_policy(path)
            assert loaded.ok, loaded.diagnostics[:3]
            graph = build_graph(loaded)
            assert not [d for d in graph.diagnostics if d.severity == "error"], graph.diagnostics[:3]
            plan_json(compile_plan(loaded))

        validate_and_plan()  # warm imports, as a long-lived process would be
        in_process = _time(validate_and_plan, args.repeat)

        cli = [sys.executable, "-m", "policykit"]
        help_times = _time(lambda: subprocess.run(cli + ["--help"], capture_output=True, check=True), args.repeat)
        validate_cli = _time(lambda: subprocess.run(cli + ["validate", str(path)], capture_output=True, check=True), args.repeat)
        plan_cli = _time(lambda: subprocess.run(cli + ["plan", "--no-model", str(path)], capture_output=True),
                         args.repeat)

    print(f"policy: {args.concepts} concepts, {size_kib:.0f} KiB; {args.repeat} runs each")
    print(f"validate+graph+plan, in process : {_fmt(in_process)}   (target < 1000 ms)")
    print(f"`policykit validate`, cold CLI  : {_fmt(validate_cli)}")
    print(f"`policykit plan --no-model`     : {_fmt(plan_cli)}   (target < 1000 ms)")
    print(f"`policykit --help`, cold CLI    : {_fmt(help_times)}   (target < 300 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
