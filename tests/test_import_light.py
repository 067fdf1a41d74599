"""`import policykit` and the pre-model commands must never import torch & co.

Operators run validate/plan/diff in CI jobs and editors; they must start fast
and work without torch installed. Each check runs in a fresh interpreter.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "diffusers", "transformers", "peft")
REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
sys.argv = ["policykit"] + json.loads(sys.argv[1])
from policykit.cli import main
try:
    code = main()
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
sys.stdout.flush()
print("\\nHEAVY=" + json.dumps(heavy))
"""


def _heavy_modules_after(argv: list[str]) -> list[str]:
    code = PROBE.format(heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code, json.dumps(argv)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("HEAVY=")]
    assert line, out.stdout + out.stderr
    return json.loads(line[-1][len("HEAVY="):])


def test_import_policykit_is_light():
    out = subprocess.run([sys.executable, "-c",
                          "import sys, policykit; print([m for m in %r if m in sys.modules])" % (HEAVY + ("pydantic",),)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["validate", "policies/demo.yaml"],
    ["fmt", "--check", "policies/demo.yaml"],
    ["schema"],
    ["plan", "--no-model", "policies/demo.yaml"],
    ["diff", "policies/demo.yaml", "policies/demo.yaml"],
])
def test_pre_model_commands_do_not_import_torch(argv):
    assert _heavy_modules_after(argv) == []
