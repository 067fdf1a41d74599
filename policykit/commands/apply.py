"""``policykit apply POLICY``: run the edit and publish a signed, audited artifact.

Exit codes: 0 published (or already published with identical inputs) and the
audit passed; 1 error, nothing published (also: apply refused, e.g. another
artifact holds this version, or the one there is unsigned while a key was
given - ``policykit sign`` signs it); 3 published, but the audit failed its
thresholds (the artifact is marked failed, and loading it needs an explicit
override).

Output: progress on standard error (a rich bar on a terminal; plain lines
otherwise, so CI logs show long stages moving), then one summary. With
``--json``, one JSON event per line on standard output; the first is
``{"event": "start", "format_version": ...}``, the last ``result`` or ``error``.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from policykit.cli import EXIT_ERROR, EXIT_OK

EXIT_AUDIT_FAILED = 3
#: Version of the ``--json`` event stream; bump on breaking change.
EVENTS_FORMAT_VERSION = 1


def run(args) -> int:
    """Apply one policy; progress on stderr (rich) or JSON event lines with --json."""
    from policykit import __version__
    from policykit.apply import ApplyError, apply_policy, event_json
    from policykit.commands.plan import print_diagnostics

    from policykit.distributed import processes

    procs = processes(args.device)  # under accelerate launch: this process's place among the others
    as_json = args.format == "json"
    policy_path, plan_path = args.policy, args.plan
    if not procs.main:  # a helper process: the main one reports
        return _helper(args, procs)
    if as_json:
        print(event_json("start", format_version=EVENTS_FORMAT_VERSION, command="apply", policy=policy_path,
                         toolkit=f"policykit {__version__}"), flush=True)
    if policy_path.endswith(".json") and plan_path is None:
        message = "give the policy file; pass a saved plan with --plan plan.json"
        if as_json:
            print(event_json("error", message=message, diagnostics=[]))
        else:
            print(f"policykit apply: {message}", file=sys.stderr)
        return EXIT_ERROR

    console = None if as_json else _console()
    progress = None if as_json else Progress(console)

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
                         message=outcome.message, audit=manifest.get("status"), metrics=manifest.get("metrics"),
                         checks=(manifest.get("audit") or {}).get("checks"), content_id=manifest.get("content_id")))
    else:
        print_summary(console, outcome)
    return EXIT_OK if outcome.audit_passed else EXIT_AUDIT_FAILED


def _helper(args, procs) -> int:
    """A process other than the main one: its share of the work, silently; an error fails it (and the run)."""
    from policykit.apply import apply_policy

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    apply_policy(args.policy, plan_path=args.plan, output_dir=args.output, sign_key=args.sign_key,
                 cache_dir=args.cache_dir, device=args.device, classifier=args.classifier)
    return EXIT_OK


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _metrics_text(metrics: dict) -> str:
    names = {"acc_e": "Acc_e", "acc_g": "Acc_g", "acc_s": "Acc_s", "h_o": "H_o"}
    return ", ".join(f"{names.get(k, k)} {_pct(v)}" for k, v in metrics.items() if k in names)


def print_summary(console, outcome) -> None:
    """The one summary of an apply: where the artifact is, the audit per guidance scale, which
    threshold a failed audit missed, and the report."""
    from rich.markup import escape

    from policykit.audit.metrics import ThresholdCheck

    state = "signed" if outcome.signed else "unsigned"
    if outcome.status == "created":
        console.print(f"[bold]published[/bold] {escape(str(outcome.path))}  ({state})")
    else:
        console.print(f"[bold]up to date[/bold] {escape(str(outcome.path))}  ({state}): nothing to do")
    manifest = outcome.manifest
    metrics = manifest.get("metrics") or {}
    if not metrics.get("after"):
        return
    audit = manifest.get("audit") or {}
    scales = audit.get("guidance_scales")
    verdict = "[green]passed[/green]" if outcome.audit_passed else "[red]FAILED[/red]"
    where = f", judged on the worst of guidance {', '.join(f'{g:g}' for g in scales)}" if scales else ""
    console.print(f"audit {verdict}{where}: {_metrics_text(metrics['after'])}")
    for scale in metrics.get("by_guidance") or []:
        console.print(f"  guidance {scale['guidance']:g}: {_metrics_text(scale['after'])}", markup=False)
    for check in audit.get("checks") or []:
        if not check.get("passed", True):
            missed = ThresholdCheck(check["name"], check["measured"], check["bound"], check["kind"],
                                    check.get("setting", ""), check.get("guidance"))
            console.print(f"  [red]{escape(missed.describe())}[/red]")
    console.print(f"report: {escape(str(outcome.path / 'audit' / 'report.html'))}")


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


class Progress:
    """Apply's events on the console: a line per stage and, for the audit, a bar.

    On a terminal the bar is rich's. Elsewhere (a CI log, a file) rich draws nothing live, so
    progress becomes plain lines - one per ``LINE_EVERY`` of the images - and a long stage with
    no progress of its own (training) prints a heartbeat line every ``HEARTBEAT_SECONDS``.
    """

    LINE_EVERY = 0.1
    HEARTBEAT_SECONDS = 30.0

    def __init__(self, console):
        self.console = console
        self.live = console.is_terminal
        self.bar = None
        self.task = None
        self._stage: str | None = None
        self._started = 0.0
        self._next_line = 0.0
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def handle(self, event: str, fields: dict) -> None:
        """Show one event (``stage``, ``progress``, ``log``; others are for --json)."""
        if event == "stage":
            self.stop()
            self.console.print(f"[bold cyan]>[/bold cyan] {fields.get('message', fields.get('name'))}")
            self._stage, self._started, self._next_line = fields.get("name"), time.monotonic(), self.LINE_EVERY
            if fields.get("total") and self.live:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TimeRemainingColumn

                self.bar = Bar("  images", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                               console=self.console, transient=True)
                self.task = self.bar.add_task(fields["name"], total=fields["total"])
                self.bar.start()
            elif not self.live:
                self._start_heartbeat()
        elif event == "progress":
            if self.bar is not None:
                self.bar.update(self.task, completed=fields["completed"])
            elif not self.live and fields.get("total"):
                share = fields["completed"] / fields["total"]
                if share + 1e-9 >= self._next_line or fields["completed"] == fields["total"]:
                    self._next_line = (int(share / self.LINE_EVERY + 1e-9) + 1) * self.LINE_EVERY
                    self.console.print(f"  images {fields['completed']}/{fields['total']} ({100 * share:.0f}%, "
                                       f"{time.monotonic() - self._started:.0f} s)", markup=False)
        elif event == "log":
            self.console.print(f"  {fields.get('message', '')}", markup=False)

    def _start_heartbeat(self) -> None:
        self._stop = threading.Event()
        stop, stage, started = self._stop, self._stage, self._started

        def beat() -> None:
            while not stop.wait(self.HEARTBEAT_SECONDS):
                self.console.print(f"  ... {stage} still running ({time.monotonic() - started:.0f} s)", markup=False)

        self._heartbeat = threading.Thread(target=beat, name="policykit-heartbeat", daemon=True)
        self._heartbeat.start()

    def stop(self) -> None:
        """End the current stage's bar or heartbeat."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=1.0)
            self._heartbeat = None
