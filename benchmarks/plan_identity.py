"""Print the hash of every stored result's compiled plan, as the checkout at ``--tree`` compiles it.

A table whose results were measured at commits whose ``policykit/`` trees
differ (the tables say so, and in which files) shows one version of the code
that edits only if every unit's plan, and its task's evaluation plan, compile
to the same bytes under each of those trees. Run this once per tree and
compare the outputs::

    git worktree add /tmp/old <commit>
    python benchmarks/plan_identity.py --tree /tmp/old > old.txt
    python benchmarks/plan_identity.py > new.txt
    diff old.txt new.txt && echo identical

Results with a retain catalog are skipped with ``--skip-catalog`` (use it
on both sides when one tree predates the catalog; such a tree skips them
anyway). A catalog measured by the benchmark before the policy language had
one was a list of preserves; the policy's ``catalog`` writes the same
preserves plus a summary block that no stage reads. ``--engine-view`` hashes
only what the engine reads (the stages with their settings, the erase and
preserve lists with their weights), so such results can be compared across
that change. Each output line is
``<task>/<result file> <plan sha256[:16]> <evaluation plan sha256[:16]>``.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", default=str(HERE.parent), help="the checkout whose compiler to use (default: this one)")
    ap.add_argument("--results", default=str(HERE / "results" / "emblems"), help="stored results, one folder per task")
    ap.add_argument("--skip-catalog", action="store_true", help="leave out results measured with a catalog")
    ap.add_argument("--engine-view", action="store_true",
                    help="hash only the stages, erase and preserve lists (what the engine reads)")
    args = ap.parse_args(argv)
    sys.path[:0] = [str(Path(args.tree) / "benchmarks"), str(args.tree)]
    import quality

    from policykit.plan import plan_json

    fields = {f.name for f in dataclasses.fields(quality.Unit)}

    def digest(plan) -> str:
        text = plan_json(plan)
        if args.engine_view:
            body = json.loads(text)
            text = json.dumps({k: body.get(k) for k in ("stages", "erase", "preserve")}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    for path in sorted(glob.glob(str(Path(args.results) / "*" / "*.json"))):
        unit = json.load(open(path)).get("unit")
        catalog_unsupported = args.skip_catalog or "catalog" not in fields
        if not unit or unit["method"] == "base" or (unit.get("catalog") and catalog_unsupported):
            continue
        unit = quality.Unit(**{k: v for k, v in unit.items() if k in fields})
        task = quality._task(unit.task)
        overrides = tuple(tuple(o) if isinstance(o, list) else o for o in unit.overrides)
        extra = {k: getattr(unit, k) for k in ("catalog", "catalog_mass") if k in fields}
        # measure()'s own call, written out: an older checkout's quality.py has no shared helper to call
        plan = quality.compile_task(task, unit.method, radius=unit.radius,
                                    beyond=None if unit.beyond is None else unit.beyond * unit.radius,
                                    space=unit.space, samples_per_prompt=unit.samples_per_prompt,
                                    steps=unit.steps, learning_rate=unit.learning_rate, overrides=overrides,
                                    **extra)
        evaluation = quality.compile_task(task, "realera", samples_per_prompt=unit.samples_per_prompt)
        print(f"{Path(path).parent.name}/{Path(path).name} {digest(plan)} {digest(evaluation)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
