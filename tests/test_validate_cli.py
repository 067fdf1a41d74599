"""``policykit validate``: exit codes and the text, json and github formats."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from policykit.cli import main

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "policies"
GOOD = str(FIXTURES / "good-minimal.yaml")
BAD = str(FIXTURES / "bad" / "many-problems.yaml")


def test_valid_policies_exit_zero(capsys):
    assert main(["validate", GOOD, str(REPO / "policies" / "demo.yaml")]) == 0
    out = capsys.readouterr().out
    assert f"{GOOD}: valid" in out


def test_any_invalid_policy_exits_one_with_snippets(capsys):
    assert main(["validate", GOOD, BAD]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    head = f"{BAD}:9:5: error: unknown-key: unknown key 'radiuss' in defaults.neighbors; did you mean 'radius'?"
    i = lines.index(head)
    assert lines[i + 1] == "   9 |     radiuss: 0.3"
    assert lines[i + 2] == "     |     ^"
    assert f"{BAD}: invalid" in lines and f"{GOOD}: valid" in lines


def test_json_format(capsys):
    assert main(["validate", "--json", GOOD, BAD]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["format_version"] == 1 and doc["valid"] is False
    by_file = {f["file"]: f for f in doc["files"]}
    assert by_file[GOOD] == {"file": GOOD, "valid": True, "sources": [GOOD], "diagnostics": []}
    first = by_file[BAD]["diagnostics"][0]
    assert (first["code"], first["line"], first["col"], first["file"]) == ("invalid-value", 1, 13, BAD)
    assert main(["validate", "--format", "json", GOOD]) == 0
    assert json.loads(capsys.readouterr().out)["valid"] is True
    child = FIXTURES / "extends" / "child.yaml"
    assert main(["validate", "--json", str(child)]) == 0
    sources = json.loads(capsys.readouterr().out)["files"][0]["sources"]
    assert [Path(s).name for s in sources] == ["base.yaml", "child.yaml"]


def test_github_format(capsys):
    assert main(["validate", "--format", "github", BAD]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 15
    assert lines[0].startswith(f"::error file={BAD},line=1,col=13,title=invalid-value::apiVersion")


def test_missing_file_is_a_diagnostic_not_a_traceback(capsys):
    assert main(["validate", "no/such/policy.yaml"]) == 1
    assert "no/such/policy.yaml: error: file-not-found" in capsys.readouterr().out


def test_graph_diagnostics_are_included(monkeypatch, capsys):
    import types

    from policykit.diagnostics import Diagnostic

    fake = types.ModuleType("policykit.graph")
    fake.build_graph = lambda loaded: types.SimpleNamespace(diagnostics=[
        Diagnostic("preserve-erased", "preserve equals an erase", *loaded.position(("erase", 0, "concept")))])
    monkeypatch.setitem(sys.modules, "policykit.graph", fake)
    assert main(["validate", "--json", GOOD]) == 1
    [diagnostic] = json.loads(capsys.readouterr().out)["files"][0]["diagnostics"]
    assert (diagnostic["code"], diagnostic["line"], diagnostic["col"]) == ("preserve-erased", 9, 14)


def test_terminal_output_is_rich_with_the_same_content(monkeypatch, capsys):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["validate", BAD]) == 1
    raw = capsys.readouterr().out
    assert "\x1b[" in raw  # coloured
    out = re.sub(r"\x1b\[[0-9;]*m", "", raw)
    assert "9:5: error: unknown-key: unknown key 'radiuss'" in out
    assert "   9 |     radiuss: 0.3" in out
    assert "many-problems.yaml: invalid" in out


# ------------------------------------------------------------ hostile extends paths

NUL_EXTENDS = 'extends: ["base\\0.yaml"]\n'  # the YAML escape \0: a NUL inside the path


def _nul_policy(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(NUL_EXTENDS + Path(GOOD).read_text(), encoding="utf-8")
    return path


def test_nul_in_an_extends_path_is_a_diagnostic_and_every_file_gets_its_result(tmp_path, capsys):
    bad = _nul_policy(tmp_path)
    assert main(["validate", "--json", GOOD, str(bad)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [(f["file"], f["valid"]) for f in doc["files"]] == [(GOOD, True), (str(bad), False)]
    [diagnostic] = doc["files"][1]["diagnostics"]
    assert (diagnostic["code"], diagnostic["file"], diagnostic["line"], diagnostic["col"]) == \
        ("invalid-character", str(bad), 1, 11)


@pytest.mark.parametrize("argv", [["plan", "--no-model"], ["diff", GOOD], ["validate"]], ids=["plan", "diff", "validate"])
def test_nul_in_an_extends_path_gives_plan_diff_and_validate_a_positioned_error(tmp_path, capsys, argv):
    bad = str(_nul_policy(tmp_path))
    assert main([*argv, bad]) == 1
    captured = capsys.readouterr()
    assert f"{bad}:1:11: error: invalid-character" in captured.out + captured.err


def test_one_file_whose_loading_fails_does_not_hide_the_others(monkeypatch, capsys):
    import policykit.policy.loader as loader

    real = loader.load_policy

    def flaky(path, **kwargs):
        if str(path) == BAD:
            raise RuntimeError("boom")
        return real(path, **kwargs)

    monkeypatch.setattr(loader, "load_policy", flaky)
    assert main(["validate", "--json", BAD, GOOD]) == 1
    files = json.loads(capsys.readouterr().out)["files"]
    assert [(f["file"], f["valid"]) for f in files] == [(BAD, False), (GOOD, True)]
    assert files[0]["diagnostics"][0]["code"] == "internal-error" and "boom" in files[0]["diagnostics"][0]["message"]
