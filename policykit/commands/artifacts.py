"""``policykit artifacts list [--output DIR] [--verify]``: every published artifact and its state."""

from __future__ import annotations

import json
from pathlib import Path

from policykit.cli import EXIT_ERROR, EXIT_OK


def _row(policy_dir: Path, version_dir: Path, verify: bool) -> dict:
    """One artifact's line; a malformed or tampered artifact is a row with a problem, never an exception."""
    from policykit.artifact.layout import ArtifactLocation
    from policykit.artifact.manifest import read_manifest
    from policykit.artifact.verify import verify_artifact

    row = {"name": policy_dir.name, "version": version_dir.name, "path": str(version_dir),
           "signed": ArtifactLocation.from_path(version_dir).signature.is_file()}
    try:
        manifest = read_manifest(version_dir)
    except ValueError as exc:
        row.update(status="unreadable", problem=str(exc))
        if verify:
            row["intact"] = False
        return row
    policy, plan, base = manifest.get("policy") or {}, manifest.get("plan") or {}, manifest.get("base_model") or {}
    row.update(status=manifest.get("status", "?"), method=plan.get("method"), base_model=base.get("id"),
               content_id=manifest.get("content_id"))
    if (policy.get("name"), policy.get("version")) != (policy_dir.name, version_dir.name):
        row["problem"] = (f"misplaced: the manifest is for {policy.get('name')!r} version "
                          f"{policy.get('version')!r}")
    if verify:
        report = verify_artifact(version_dir)
        row["intact"] = report.ok
        if not report.ok:
            row["problem"] = "; ".join(report.problems[:3])
    return row


def run(args) -> int:
    """List name, version, audit status, signature and (with --verify) integrity.

    Exit 1 when any artifact is unreadable, misplaced, or (with --verify) fails
    verification; the others are listed all the same.
    """
    from policykit.artifact.layout import iter_versions

    root = Path(args.output)
    rows = []
    policy_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    for policy_dir in policy_dirs:
        for version_dir in iter_versions(policy_dir):
            rows.append(_row(policy_dir, version_dir, args.verify))
    code = EXIT_ERROR if any("problem" in row for row in rows) else EXIT_OK
    if args.format == "json":
        print(json.dumps({"format_version": 1, "output": str(root), "artifacts": rows}, indent=2))
        return code
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    if not rows:
        print(f"no artifacts under {root}")
        return code
    table = Table(title=f"artifacts in {escape(str(root))}", title_justify="left")
    columns = ("name", "version", "audit", "signed", "method", "base model") + (("intact",) if args.verify else ())
    for column in columns:
        table.add_column(column)
    for row in rows:
        audit = {"passed": "[green]passed[/green]", "failed": "[red]FAILED[/red]"}.get(row["status"],
                                                                                      escape(row["status"]))
        if "problem" in row and not args.verify:
            audit += " [red](see below)[/red]"
        cells = [escape(row["name"]), escape(row["version"]), audit,
                 "yes" if row["signed"] else "[yellow]no[/yellow]",
                 escape(row.get("method") or ""), escape(row.get("base_model") or "")]
        if args.verify:
            cells.append("yes" if row.get("intact") else "[red]NO[/red] (see below)")
        table.add_row(*cells)
    console = Console(highlight=False)
    console.print(table)
    for row in rows:  # full sentences below the table, where a narrow terminal does not cut them
        if "problem" in row:
            console.print(f"[red]{escape(row['name'])}/{escape(row['version'])}[/red]: {escape(row['problem'])}")
    return code
