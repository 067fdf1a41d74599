"""``policykit audit ARTIFACT``: re-run an artifact's audit and write fresh reports.

The artifact itself is never modified (it is signed); the reports go to
``--out`` (default ``<artifact>.audit/``, beside the artifact: not a version
directory, so ``artifacts list`` does not show it). Exit 0 when the
thresholds are met, 3 when they are not, 1 on error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from policykit.cli import EXIT_ERROR, EXIT_OK

EXIT_AUDIT_FAILED = 3


def default_reports_dir(artifact: Path) -> Path:
    """Where ``audit`` writes when ``--out`` is not given: ``<name>/<version>.audit``."""
    return artifact.with_name(artifact.name + ".audit")


def run(args) -> int:
    """Verify, load the base model, audit base vs edited, write reports."""
    from policykit.apply import event_json
    from policykit.artifact.load import ArtifactRefused, base_pipeline_for, open_artifact
    from policykit.distributed import processes
    from policykit.audit.run import audit_edit, write_reports
    from policykit.models import ModelNotAvailable
    from policykit.plan import Plan
    from policykit.realera.edit import load_edit

    procs = processes(args.device)  # under accelerate launch the images are shared out; only the main one writes
    artifact = Path(args.artifact)
    as_json = args.format == "json"
    out = Path(args.out) if args.out else default_reports_dir(artifact)

    def fail(message: str) -> int:
        print(event_json("error", message=message) if as_json else f"policykit audit: {message}",
              file=sys.stdout if as_json else sys.stderr)
        return EXIT_ERROR

    inside = Path(os.path.abspath(out))
    if inside == Path(os.path.abspath(artifact)) or Path(os.path.abspath(artifact)) in inside.parents:
        return fail(f"--out {out} is inside the artifact {artifact}: a signed artifact is never written to")
    try:
        # Re-auditing a failed artifact is the point of this command: the audit rule is not applied.
        verified = open_artifact(artifact, public_key=args.public_key, allow_unsigned=args.allow_unsigned,
                                 allow_failed_audit=True)
        plan = Plan.from_json(verified.files["plan.json"])  # the verified bytes, not a second read
        edit = load_edit(verified.weights())
        pipe = base_pipeline_for(verified)
        if args.device:
            pipe.to(args.device)
        emit = (lambda event, **f: print(event_json(event, **f), flush=True)) if as_json else \
            (lambda event, **f: print(f.get("message", ""), file=sys.stderr) if event in ("stage", "log") else None)
        if not procs.main:
            emit = lambda event, **f: None  # noqa: E731 - the main process reports
        result = audit_edit(plan, pipe, edit, classifier=args.classifier,
                            provenance={"artifact": str(artifact),
                                        "content id": verified.manifest.get("content_id", "")},
                            emit=emit)
    except ArtifactRefused as exc:
        return fail(exc.cli_message)
    except (ModelNotAvailable, OSError, ValueError) as exc:
        return fail(str(exc))
    if not procs.main:
        return EXIT_OK if result.passed else EXIT_AUDIT_FAILED
    out = write_reports(result, out)
    if as_json:
        print(event_json("result", verdict=result.verdict, metrics=result.metrics_after.to_dict(), reports=str(out)))
    else:
        print(f"audit {result.verdict.upper()}: reports in {out}")
    return EXIT_OK if result.passed else EXIT_AUDIT_FAILED
