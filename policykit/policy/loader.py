"""Loading policies: YAML with positions, ``extends``, and diagnostics.

INTERIM VERSION: the interface below is fixed; the implementation is being
completed (positions for every diagnostic, extends merge rules, hostile input).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from policykit.diagnostics import Diagnostic

#: Reads a file's bytes; replaced for ``diff --against GITREV`` by a git reader.
FileReader = Callable[[Path], bytes]


@dataclass
class LoadedPolicy:
    """The outcome of loading one policy file (and everything it extends)."""

    path: Path
    #: The validated policy, or None when any error was found.
    policy: Any | None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    #: This file and every file it extends, in merge order (bases first).
    sources: list[Path] = field(default_factory=list)
    #: The merged plain data (after ``extends``), before validation.
    data: dict | None = None

    @property
    def ok(self) -> bool:
        """True when the policy loaded with no error."""
        return self.policy is not None

    def position(self, path: tuple[str | int, ...]) -> tuple[str, int, int]:
        """``(file, line, col)`` of the value at ``path`` in the merged data,
        e.g. ``("preserve", 2, "concept")``, in the file that supplied it."""
        return (str(self.path), 0, 0)


def load_policy(path: str | Path, *, read_file: FileReader | None = None) -> LoadedPolicy:
    """Load, merge (``extends``) and validate the policy at ``path``.

    Never raises for bad input: every problem becomes a Diagnostic.
    """
    from pydantic import ValidationError
    from ruamel.yaml import YAML

    from policykit.policy.schema import Policy

    path = Path(path)
    reader = read_file or (lambda p: p.read_bytes())
    try:
        data = YAML(typ="safe").load(reader(path))
    except Exception as exc:  # noqa: BLE001 - interim
        return LoadedPolicy(path, None, [Diagnostic("yaml-error", str(exc), str(path))], [path])
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        diags = [Diagnostic(e["type"], e["msg"], str(path)) for e in exc.errors()]
        return LoadedPolicy(path, None, diags, [path], data)
    return LoadedPolicy(path, policy, [], [path], data)
