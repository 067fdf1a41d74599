"""``policykit audit ARTIFACT``: re-run an artifact's audit and write fresh reports.

The artifact itself is never modified (it is signed); the reports go to
``--out`` (default ``<artifact>.audit/``). Exit 0 when the thresholds are met,
3 when they are not, 1 on error.
"""

from __future__ import annotations

import sys
from pathlib import Path

from policykit.cli import EXIT_ERROR, EXIT_OK

EXIT_AUDIT_FAILED = 3


def run(args) -> int:
    """Verify, load the base model, audit base vs edited, write reports."""
    from policykit.apply import event_json
    from policykit.artifact.load import ArtifactRefused, check_loadable
    from policykit.audit.run import audit_edit, write_reports
    from policykit.models import ModelNotAvailable, resolve_model
    from policykit.models import load_pipeline as load_base
    from policykit.plan import Plan
    from policykit.realera.engine import load_edit

    artifact = Path(args.artifact)
    as_json = args.format == "json"
    try:
        # Re-auditing a failed artifact is the point of this command: the audit rule is not applied.
        manifest = check_loadable(artifact, public_key=args.public_key, allow_unsigned=args.allow_unsigned,
                                  allow_failed_audit=True)
        plan = Plan.from_json((artifact / "plan.json").read_bytes())
        base = manifest["base_model"]
        model = resolve_model(base["id"], base.get("revision"))
        if model.sha256() != base["sha256"]:
            raise ArtifactRefused(f"base model {model.ref} is not the exact model {artifact} was built on")
        pipe = load_base(model)
        if args.device:
            pipe.to(args.device)
        emit = (lambda event, **f: print(event_json(event, **f), flush=True)) if as_json else \
            (lambda event, **f: print(f.get("message", ""), file=sys.stderr) if event in ("stage", "log") else None)
        result = audit_edit(plan, pipe, load_edit(artifact / "weights"), classifier=args.classifier,
                            provenance={"artifact": str(artifact), "content id": manifest.get("content_id", "")},
                            emit=emit)
    except (ArtifactRefused, ModelNotAvailable, OSError, ValueError) as exc:
        print(event_json("error", message=str(exc)) if as_json else f"policykit audit: {exc}",
              file=sys.stdout if as_json else sys.stderr)
        return EXIT_ERROR
    out = write_reports(result, args.out or artifact.with_name(artifact.name + ".audit"))
    if as_json:
        print(event_json("result", verdict=result.verdict, metrics=result.metrics_after.to_dict(), reports=str(out)))
    else:
        print(f"audit {result.verdict.upper()}: reports in {out}")
    return EXIT_OK if result.passed else EXIT_AUDIT_FAILED
