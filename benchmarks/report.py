"""Writing a benchmark's table into docs/benchmarks.md, with the command, machine and date.

Each benchmark owns one section of ``docs/benchmarks.md``, fenced by HTML comments
``<!-- bench:NAME:begin -->`` and ``<!-- bench:NAME:end -->``. Running the
benchmark replaces that section (or appends it when the file has none), so the
numbers in the docs are always the last run's, next to how they were obtained;
the prose around the sections is written by people and left alone.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"


def machine() -> str:
    """One line naming this machine: CPU, cores, memory, accelerator, torch build and the load average."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages * size / 2**30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        pass
    parts = [f"{cpu}, {os.cpu_count()} cores{memory}"]
    try:
        import torch

        if torch.cuda.is_available():
            parts.append(f"GPU {torch.cuda.get_device_name(0)}")
        else:
            parts.append("no GPU")
        parts.append(f"torch {torch.__version__}")
    except ImportError:
        pass
    try:
        parts.append("load average " + " ".join(f"{x:.1f}" for x in os.getloadavg()))
    except OSError:
        pass
    return "; ".join(parts)


def git_commit() -> str:
    """The commit the code was measured at (``+dirty`` when the work tree differs from it)."""
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "policykit"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def command_line(argv: list[str] | None = None) -> str:
    """The command that ran, as someone would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *(sys.argv[1:] if argv is None else argv)])


def header(argv: list[str] | None = None) -> str:
    """The lines that open a section: command, date (UTC) and machine."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"`{command_line(argv)}`, {now}, on {machine()}."


def write_section(name: str, markdown: str, doc: Path = DOC) -> Path:
    """Replace section ``name`` of ``doc`` with ``markdown`` (append it when missing); return the path."""
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text, encoding="utf-8")
    return doc


def markdown_table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` is one letter per column, ``l`` or ``r`` (default: first l, rest r)."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """The same table for a terminal: padded columns."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for n, row in enumerate(cells):
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
