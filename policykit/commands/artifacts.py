"""``policykit artifacts list [--output DIR]``: every published artifact and its state."""

from __future__ import annotations

import json
from pathlib import Path

from policykit.cli import EXIT_OK


def run(args) -> int:
    """List name, version, audit status, signature and (with --verify) integrity."""
    from policykit.artifact.layout import ArtifactLocation, iter_versions
    from policykit.artifact.manifest import check_files, read_manifest

    root = Path(args.output)
    rows = []
    policy_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    for policy_dir in policy_dirs:
        for version_dir in iter_versions(policy_dir):
            row = {"name": policy_dir.name, "version": version_dir.name, "path": str(version_dir),
                   "signed": ArtifactLocation.from_path(version_dir).signature.is_file()}
            try:
                manifest = read_manifest(version_dir)
            except ValueError as exc:
                row.update(status="unreadable", problem=str(exc))
            else:
                row.update(status=manifest.get("status", "?"), method=manifest.get("plan", {}).get("method"),
                           base_model=manifest.get("base_model", {}).get("id"),
                           content_id=manifest.get("content_id"))
                if args.verify:
                    problems = check_files(version_dir, manifest)
                    row["intact"] = not problems
                    if problems:
                        row["problem"] = "; ".join(map(str, problems[:3]))
            rows.append(row)
    if args.format == "json":
        print(json.dumps({"format_version": 1, "output": str(root), "artifacts": rows}, indent=2))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    if not rows:
        print(f"no artifacts under {root}")
        return EXIT_OK
    table = Table(title=f"artifacts in {root}", title_justify="left")
    for column in ("name", "version", "audit", "signed", "method", "base model") + (("intact",) if args.verify else ()):
        table.add_column(column)
    for row in rows:
        audit = {"passed": "[green]passed[/green]", "failed": "[red]FAILED[/red]"}.get(row["status"], row["status"])
        cells = [row["name"], row["version"], audit, "yes" if row["signed"] else "[yellow]no[/yellow]",
                 row.get("method") or "", row.get("base_model") or ""]
        if args.verify:
            cells.append("yes" if row.get("intact") else f"[red]NO[/red] {row.get('problem', '')}")
        table.add_row(*cells)
    Console(highlight=False).print(table)
    return EXIT_OK
