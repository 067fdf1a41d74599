"""``policykit apply POLICY``: run the edit and publish a signed, audited artifact.

Exit codes: 0 published (or already published with identical inputs) and the
audit passed; 1 error, nothing published; 3 published, but the audit failed
its thresholds (the artifact is marked failed, and loading it needs an
explicit override).
"""

from __future__ import annotations

import os
import sys

from policykit.cli import EXIT_ERROR, EXIT_OK

EXIT_AUDIT_FAILED = 3


def run(args) -> int:
    """Apply one policy; progress on stderr (rich) or JSON event lines with --json."""
    from policykit.apply import ApplyError, apply_policy, event_json
    from policykit.commands.plan import print_diagnostics

    as_json = args.format == "json"
    policy_path, plan_path = args.policy, args.plan
    if policy_path.endswith(".json") and plan_path is None:
        print("policykit apply: give the policy file; pass a saved plan with --plan plan.json", file=sys.stderr)
        return EXIT_ERROR

    console = None if as_json else _console()
    progress = None if as_json else _Progress(console)

    def emit(event: str, **fields) -> None:
        if as_json:
            print(event_json(event, **fields), flush=True)
        else:
            progress.handle(event, fields)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        outcome = apply_policy(policy_path, plan_path=plan_path, output_dir=args.output, sign_key=args.sign_key,
                               cache_dir=args.cache_dir, device=args.device, classifier=args.classifier, emit=emit)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed apply must say what failed, not dump a traceback
        if not isinstance(exc, ApplyError):
            if os.environ.get("POLICYKIT_DEBUG"):
                raise
            exc = ApplyError(f"{type(exc).__name__}: {exc} (set POLICYKIT_DEBUG=1 for the traceback)")
        if progress:
            progress.stop()
        if as_json:
            print(event_json("error", message=str(exc), diagnostics=[d.to_dict() for d in exc.diagnostics]))
        else:
            print_diagnostics(exc.diagnostics, "text", None)
            print("policykit apply: nothing was published", file=sys.stderr)
        return EXIT_ERROR
    finally:
        if progress:
            progress.stop()

    manifest = outcome.manifest
    if as_json:
        print(event_json("result", status=outcome.status, path=str(outcome.path), signed=outcome.signed,
                         audit=manifest.get("status"), metrics=manifest.get("metrics"),
                         content_id=manifest.get("content_id")))
    else:
        verb = "published" if outcome.status == "created" else "up to date"
        console.print(f"[bold]{verb}[/bold] {outcome.path}  ({'signed' if outcome.signed else 'unsigned'})")
        metrics = (manifest.get("metrics") or {}).get("after")
        if metrics:
            console.print("audit " + ("[green]passed[/green]" if outcome.audit_passed else "[red]FAILED[/red]") + ": "
                          + ", ".join(f"{k} {'n/a' if v is None else f'{100 * v:.1f}%'}" for k, v in metrics.items()))
            console.print(f"report: {outcome.path / 'audit' / 'report.html'}")
    return EXIT_OK if outcome.audit_passed else EXIT_AUDIT_FAILED


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


class _Progress:
    """Rich rendering of apply's events: a line per stage, a bar for the audit."""

    def __init__(self, console):
        self.console = console
        self.bar = None
        self.task = None

    def handle(self, event: str, fields: dict) -> None:
        if event == "stage":
            self.stop()
            self.console.print(f"[bold cyan]>[/bold cyan] {fields.get('message', fields.get('name'))}")
            if fields.get("total"):
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

                self.bar = Progress("  images", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                    console=self.console, transient=True)
                self.task = self.bar.add_task(fields["name"], total=fields["total"])
                self.bar.start()
        elif event == "progress" and self.bar is not None:
            self.bar.update(self.task, completed=fields["completed"])
        elif event == "log":
            self.console.print(f"  {fields.get('message', '')}", markup=False)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
