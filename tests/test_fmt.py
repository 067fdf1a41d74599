"""``policykit fmt``: canonical order and style, comments kept, idempotent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from policykit.cli import main
from policykit.policy.fmt import format_policy
from policykit.policy.loader import load_policy

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "policies"

MESSY = """\
# Header comment stays on top.
kind: ErasurePolicy   # kind comment
metadata: {version: 1.0.0, name: messy}
defaults:
  templates:
  - "a {}"
  - "{} again"
apiVersion: policykit/v1alpha1
erase:
- synonyms: [b, "c"]
  custom_key: kept
  concept: a   # the concept
preserve:
    -   weight: 2
        concept: q
base_model:
  id: builtin:shapes
"""

CANONICAL = """\
# Header comment stays on top.
apiVersion: policykit/v1alpha1
kind: ErasurePolicy   # kind comment
metadata:
  name: messy
  version: 1.0.0
base_model:
  id: builtin:shapes
defaults:
  templates:
    - "a {}"
    - "{} again"
erase:
  - concept: a # the concept
    synonyms: [b, "c"]
    custom_key: kept
preserve:
  - concept: q
    weight: 2
"""


def test_messy_policy_becomes_canonical():
    text, diagnostics = format_policy(MESSY.encode(), "messy.yaml")
    assert diagnostics == []
    assert text == CANONICAL


@pytest.mark.parametrize("path", sorted((REPO / "policies").glob("*.yaml"))
                         + sorted(FIXTURES.rglob("*.yaml")), ids=lambda p: p.name)
def test_formatting_is_idempotent_and_keeps_meaning(path):
    first, diagnostics = format_policy(path.read_bytes(), str(path))
    assert diagnostics == []
    second, _ = format_policy(first.encode(), str(path))
    assert second == first
    # Same data before and after: fmt only moves keys and changes layout.
    before = load_policy(path).data
    after = load_policy(path, read_file=lambda p: first.encode() if Path(p) == path else Path(p).read_bytes()).data
    assert before == after


def test_comments_survive():
    text, _ = format_policy((REPO / "policies" / "demo.yaml").read_bytes(), "demo.yaml")
    source = (REPO / "policies" / "demo.yaml").read_text()
    comments = [line.split("#", 1)[1].strip() for line in source.splitlines() if "#" in line]
    assert comments and all(comment in text for comment in comments)


@pytest.mark.parametrize("data, code", [
    (b"a: &x 1\nb: *x\n", "yaml-anchor"),
    (b"a: !!python/object:os.system x\n", "yaml-tag"),
    (b"a: 1\na: 2\n", "duplicate-key"),
    (b"a: [1, 2\n", "yaml-syntax"),
    (b"- a\n", "not-a-mapping"),
    (b"a: \xff\n", "not-utf8"),
    (b"a: 1e999\n", "not-finite"),
    (b"a: " + b"9" * 5000 + b"\n", "number-too-large"),
    (b"[" * 10_000, "too-deep"),
], ids=["alias", "tag", "duplicate", "syntax", "list", "latin1", "inf", "huge-int", "deep"])
def test_invalid_yaml_is_refused(data, code):
    text, diagnostics = format_policy(data, "bad.yaml")
    assert text is None
    assert diagnostics[0].code == code


def test_cli_check_diff_and_write(tmp_path, capsys):
    messy = tmp_path / "messy.yaml"
    messy.write_text(MESSY)
    clean = tmp_path / "clean.yaml"
    clean.write_text(CANONICAL)

    assert main(["fmt", "--check", str(clean)]) == 0
    assert main(["fmt", "--check", "--diff", str(messy), str(clean)]) == 1
    out, err = capsys.readouterr()
    assert f"would reformat {messy}" in err and str(clean) not in err
    assert "+apiVersion: policykit/v1alpha1" in out
    assert messy.read_text() == MESSY  # --check changes nothing

    assert main(["fmt", str(messy)]) == 0
    assert messy.read_text() == CANONICAL
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_cli_refuses_invalid_yaml(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"a: 1\na: 2\n")
    assert main(["fmt", str(bad)]) == 1
    assert f"{bad}:2:1: error: duplicate-key" in capsys.readouterr().err
    assert bad.read_bytes() == b"a: 1\na: 2\n"


def test_shipped_policies_are_fmt_clean():
    files = sorted(str(p) for p in (REPO / "policies").glob("*.yaml"))
    out = subprocess.run([sys.executable, "-m", "policykit", "fmt", "--check", *files],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_comment_lines_move_with_the_key_below_them():
    source = """\
# File header.

kind: ErasurePolicy
# About the API version.
apiVersion: policykit/v1alpha1

# Who owns this.
metadata:
  version: 1.0.0  # bump on change
  # DNS-style.
  name: x
erase:
  - synonyms: [b]
    # The concept.
    concept: a
# Trailing comment.
"""
    expected = """\
# File header.

# About the API version.
apiVersion: policykit/v1alpha1
kind: ErasurePolicy

# Who owns this.
metadata:
  # DNS-style.
  name: x
  version: 1.0.0  # bump on change
erase:
  - concept: a
    # The concept.
    synonyms: [b]
# Trailing comment.
"""
    text, diagnostics = format_policy(source.encode(), "c.yaml")
    assert diagnostics == []
    assert text == expected
    assert format_policy(text.encode(), "c.yaml")[0] == text
