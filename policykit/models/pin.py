"""The sha256 pin of a model: one digest over all of its files.

The digest covers each file's relative path and content, in sorted path
order, so it does not depend on the machine, the folder the model sits in,
or the order the file system lists files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from policykit.diagnostics import Diagnostic
from policykit.hashing import file_sha256, sha256_hex

def model_sha256(root: str | Path, files: Iterable[str]) -> str:
    """The pin: sha256 over ``"<relative path>\\0<file sha256>\\n"`` for each file, in sorted order."""
    root = Path(root)
    lines = "".join(f"{relative}\0{file_sha256(root / relative)}\n" for relative in sorted(files))
    return sha256_hex(lines.encode("utf-8"))


def check_pin(model, expected: str | None, file: str = "<input>", line: int = 0, col: int = 0) -> Diagnostic | None:
    """None when ``expected`` is unset or matches ``model.sha256()``; else a ``model-pin-mismatch`` error."""
    if expected is None:
        return None
    actual = model.sha256()
    if actual == expected.lower():
        return None
    return Diagnostic(
        "model-pin-mismatch",
        f"base model {model.ref!r} ({model.path}) has sha256 {actual}, but the policy pins {expected}; "
        "the model changed since the policy was written: re-pin it deliberately, or restore the pinned model",
        file=file, line=line, col=col,
    )
