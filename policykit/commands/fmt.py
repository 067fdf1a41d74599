"""``policykit fmt FILE... [--check] [--diff]``: rewrite policies canonically.

Without ``--check`` each file that is not canonical is rewritten atomically
(a temporary file in the same directory, then a rename). ``--check`` changes
nothing and exits 1 if any file would change, naming them; ``--diff`` prints
a unified diff of what would change. Files that are not valid YAML are
refused with diagnostics (exit 1).
"""

from __future__ import annotations

import difflib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


def run(args: Any) -> int:
    """Format ``args.files``; the exit code says whether all were (or are) canonical."""
    from policykit.policy.fmt import format_policy
    from policykit.policy.yaml_tree import MAX_FILE_BYTES

    failed = False
    would_change = []
    for file in args.files:
        path = Path(file)
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            print(f"{file}: error: read-error: {exc.strerror or exc}", file=sys.stderr)
            failed = True
            continue
        text, diagnostics = format_policy(data, file)
        if text is None:
            for diagnostic in diagnostics:
                print(diagnostic.format_text(), file=sys.stderr)
            failed = True
            continue
        old = data.decode("utf-8", errors="replace")
        if text == old:
            continue
        would_change.append(file)
        if args.diff:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                                       f"a/{file}", f"b/{file}"))
        if not args.check:
            write_atomically(path, text)
            print(f"formatted {file}", file=sys.stderr)
    if args.check and would_change:
        for file in would_change:
            print(f"would reformat {file}", file=sys.stderr)
        return 1
    return 1 if failed else 0


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see the old file or the new one, never half."""
    mode = path.stat().st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
