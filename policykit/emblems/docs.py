"""The measured sections of docs/builtin-emblems.md, written by the scripts that measure them.

``quality``, ``fidelity`` and ``geometry`` each print their tables and, with
``--write``, replace their section of the page (between
``<!-- emblems:NAME:begin -->`` and ``<!-- emblems:NAME:end -->``), so no
number on that page is typed by hand.
"""

from __future__ import annotations

import re
import sys
from datetime import datetime, timezone
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "builtin-emblems.md"


def provenance(model: Path) -> str:
    """One line: the command, the date, and the model measured (its sha256 pin when it is the shipped one)."""
    from policykit.emblems.sampling import MODEL_DIR

    command = "python -m policykit.emblems." + Path(sys.argv[0]).stem + (" " + " ".join(sys.argv[1:])
                                                                          if sys.argv[1:] else "")
    which = "the shipped model"
    if Path(model).resolve() == MODEL_DIR.resolve():
        from policykit.models import resolve_model

        which += f" (sha256 {resolve_model('builtin:emblems').sha256()[:16]}...)"
    else:
        which = f"the model in {model}"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return f"Measured on {when} with `{command}`, on {which}."


def write_section(name: str, markdown: str, doc: Path = DOC) -> Path:
    """Replace section ``name`` of ``doc`` with ``markdown``; the markers must be there already."""
    begin, end = f"<!-- emblems:{name}:begin -->", f"<!-- emblems:{name}:end -->"
    text = doc.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{doc} has no section {name!r} ({begin} ... {end}); add the markers where it belongs")
    doc.write_text(pattern.sub(lambda _m: f"{begin}\n{markdown.strip()}\n{end}", text, count=1), encoding="utf-8")
    return doc
