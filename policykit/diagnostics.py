"""Diagnostics: problems found in a policy, as values the CLI renders.

Every problem policykit reports about its input is a :class:`Diagnostic` that
points at ``file:line:col``. Commands collect them and render them in one of
three formats: ``text`` for terminals, ``json`` for machines and ``github``
for CI annotations (``::error file=...,line=...,col=...::message``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Iterable, Literal

Severity = Literal["error", "warning", "note"]

#: Version of every ``--json`` document policykit prints. Bump on breaking change.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Diagnostic:
    """One problem, anchored at a position in a source file.

    ``line`` and ``col`` are 1-based; 0 means "the file as a whole".
    ``code`` is a stable kebab-case identifier (``unknown-key``,
    ``out-of-range``...) that tools may branch on; ``message`` is for people.
    """

    code: str
    message: str
    file: str = "<input>"
    line: int = 0
    col: int = 0
    severity: Severity = "error"
    snippet: str | None = field(default=None, compare=False)

    @property
    def location(self) -> str:
        """``file:line:col`` (or less, when the position is unknown)."""
        if self.line <= 0:
            return self.file
        if self.col <= 0:
            return f"{self.file}:{self.line}"
        return f"{self.file}:{self.line}:{self.col}"

    def format_text(self) -> str:
        """``file:line:col: severity: code: message`` plus the snippet, if any."""
        head = f"{self.location}: {self.severity}: {self.code}: {self.message}"
        if not self.snippet:
            return head
        return head + "\n" + self.snippet

    def format_github(self) -> str:
        """A GitHub Actions workflow command that annotates the line in a PR."""
        kind = {"error": "error", "warning": "warning", "note": "notice"}[self.severity]
        props = [f"file={_gh_escape_prop(self.file)}"]
        if self.line > 0:
            props.append(f"line={self.line}")
        if self.col > 0:
            props.append(f"col={self.col}")
        props.append(f"title={_gh_escape_prop(self.code)}")
        return f"::{kind} {','.join(props)}::{_gh_escape_data(self.message)}"

    def to_dict(self) -> dict:
        """A JSON-ready dict (the snippet is left out: it is for terminals)."""
        data = asdict(self)
        data.pop("snippet")
        return data


def has_errors(diagnostics: Iterable[Diagnostic]) -> bool:
    """True when any diagnostic is an error (warnings and notes do not fail)."""
    return any(d.severity == "error" for d in diagnostics)


def sort_diagnostics(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Diagnostics in reading order: by file, then line, then column."""
    return sorted(diagnostics, key=lambda d: (d.file, d.line, d.col, d.code, d.message))


def diagnostics_json(diagnostics: Iterable[Diagnostic], **extra) -> str:
    """The ``--json`` document for a list of diagnostics."""
    items = [d.to_dict() for d in diagnostics]
    doc = {"format_version": FORMAT_VERSION, **extra, "diagnostics": items}
    return json.dumps(doc, indent=2, sort_keys=False)


def _gh_escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_escape_prop(text: str) -> str:
    return _gh_escape_data(text).replace(":", "%3A").replace(",", "%2C")
