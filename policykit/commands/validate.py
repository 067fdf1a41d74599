"""``policykit validate FILE...``: check policies; exit 0 if all valid, 1 if not.

Each file is loaded (YAML, ``extends``, schema) and, when that succeeds, its
concept graph is checked (conflicts, cycles) if :mod:`policykit.graph` is
available. Output: ``text`` (with the source line and a caret under the
column; coloured on a terminal), ``json`` (a document with a
``format_version``) or ``github`` (workflow annotations for pull requests).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from policykit.diagnostics import FORMAT_VERSION, Diagnostic, has_errors, sort_diagnostics


@dataclass
class FileResult:
    """What validating one policy file found."""

    file: str
    diagnostics: list[Diagnostic]
    #: Source text of each file read, for snippets.
    texts: dict[str, str]
    #: The file and every file it extends, bases first.
    sources: list[str]

    @property
    def valid(self) -> bool:
        """True when no diagnostic is an error."""
        return not has_errors(self.diagnostics)


def run(args: Any) -> int:
    """Validate ``args.files`` and print the result in ``args.format``."""
    results = [validate_file(file) for file in args.files]
    fmt = getattr(args, "format", "text")
    if fmt == "json":
        print(validation_json(results))
    elif fmt == "github":
        for result in results:
            for diagnostic in result.diagnostics:
                print(diagnostic.format_github())
    else:
        print_text(results)
    return 0 if all(r.valid for r in results) else 1


def validate_file(file: str) -> FileResult:
    """Load and check one policy file; never raises for what the file holds."""
    from policykit.policy.loader import load_policy

    try:
        loaded = load_policy(file)
    except Exception as exc:  # noqa: BLE001 - one bad file must not hide the other files' results
        return FileResult(file, [Diagnostic("internal-error", f"loading failed: {exc.__class__.__name__}: {exc}",
                                            file)], {}, [])
    diagnostics = list(loaded.diagnostics)
    if loaded.ok:
        diagnostics += graph_diagnostics(loaded)
    return FileResult(file, sort_diagnostics(diagnostics), loaded.texts, [str(p) for p in loaded.sources])


def graph_diagnostics(loaded: Any) -> list[Diagnostic]:
    """The checks across entries of a loaded policy: its concept graph (conflicts,
    cycles, look-alikes) and, for builtin:shapes, the world's vocabulary (what
    ``apply``'s audit would refuse after training)."""
    from policykit.graph import build_graph
    from policykit.policy.vocabulary import vocabulary_diagnostics

    found: list[Diagnostic] = []
    for name, check in (("concept graph", lambda: build_graph(loaded).diagnostics),
                        ("vocabulary", lambda: vocabulary_diagnostics(loaded))):
        try:
            found += check()
        except Exception as exc:  # noqa: BLE001 - a bug in the checks must not hide the file's verdict
            found.append(Diagnostic("internal-error", f"{name} check failed: {exc.__class__.__name__}: {exc}",
                                    str(loaded.path)))
    return found


def validation_json(results: list[FileResult]) -> str:
    """The ``--json`` document: overall verdict and, per file, its diagnostics
    and ``sources`` (the file and every file it extends, bases first)."""
    doc = {
        "format_version": FORMAT_VERSION,
        "valid": all(r.valid for r in results),
        "files": [{"file": r.file, "valid": r.valid, "sources": r.sources,
                   "diagnostics": [d.to_dict() for d in r.diagnostics]}
                  for r in results],
    }
    return json.dumps(doc, indent=2)


def snippet(diagnostic: Diagnostic, texts: dict[str, str]) -> list[str]:
    """The source line a diagnostic points at, and a caret under its column."""
    text = texts.get(diagnostic.file)
    if text is None or diagnostic.line <= 0:
        return []
    lines = text.splitlines()
    if diagnostic.line > len(lines):
        return []
    line = lines[diagnostic.line - 1]
    if len(line) > 200:  # keep hostile one-line files from flooding the terminal
        start = max(0, diagnostic.col - 100)
        line = line[start:start + 200]
        col = diagnostic.col - start
    else:
        col = diagnostic.col
    gutter = f"{diagnostic.line:>4} | "
    caret = " " * (len(gutter) - 2) + "| " + " " * max(col - 1, 0) + "^" if col > 0 else ""
    return [gutter + line.expandtabs(1)] + ([caret] if caret else [])


def print_text(results: list[FileResult]) -> None:
    """Human output: rich colours on a terminal, plain text otherwise."""
    if sys.stdout.isatty():
        _print_rich(results)
        return
    for result in results:
        for d in result.diagnostics:
            print(f"{d.location}: {d.severity}: {d.code}: {d.message}")
            for line in snippet(d, result.texts):
                print(line)
        print(f"{result.file}: {'valid' if result.valid else 'invalid'}")


def _print_rich(results: list[FileResult]) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False)
    colour = {"error": "bold red", "warning": "bold yellow", "note": "bold cyan"}
    for result in results:
        for d in result.diagnostics:
            console.print(f"[bold]{escape(d.location)}[/]: [{colour[d.severity]}]{d.severity}[/]: "
                          f"[dim]{escape(d.code)}[/]: {escape(d.message)}")
            for line in snippet(d, result.texts):
                console.print(escape(line), style="red" if line.strip().endswith("^") else None)
        if result.valid:
            console.print(f"[green]✓[/] {escape(result.file)}: valid")
        else:
            console.print(f"[red]✗[/] {escape(result.file)}: invalid")
