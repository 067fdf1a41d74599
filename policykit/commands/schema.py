"""``policykit schema [--out PATH]``: the JSON Schema of the policy language.

The output is deterministic (sorted keys), so the copy checked in at
``schemas/erasure-policy.v1alpha1.json`` can be compared byte for byte.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def run(args: Any) -> int:
    """Print the schema, or write it to ``args.out`` atomically."""
    from policykit.commands.fmt import write_atomically
    from policykit.policy.schema import json_schema_text

    text = json_schema_text()
    if args.out:
        out = Path(args.out)
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("", encoding="utf-8")
        write_atomically(out, text)
    else:
        sys.stdout.write(text)
    return 0
