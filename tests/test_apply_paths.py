"""A policy (say, from a pull request) cannot make apply write or read outside the tree it runs in.

``output.dir`` and ``output.signing_key`` are refused at file:line:col when
they are absolute, climb out with ``..``, or leave through a symbolic link;
the operator's ``--output`` and ``--sign-key`` still go anywhere. The model
named here does not exist, so a check that comes too late shows up as the
wrong error, and nothing is ever trained.
"""

import os

import pytest

from policykit.apply import ApplyError, apply_policy
from policykit.cli import main

PATH_OUTSIDE = "path-outside-workspace"  # the diagnostic code (policykit.apply.PATH_OUTSIDE)

POLICY = """\
apiVersion: policykit/v1alpha1
kind: ErasurePolicy
metadata:
  name: paths
  version: 1.0.0
base_model:
  id: ./no-such-model
erase:
  - concept: red circle
    anchor: gray circle
output:
{output}
"""


@pytest.fixture
def work(tmp_path, monkeypatch):
    """The directory apply runs in, with a key beside it (outside) and one inside."""
    inside = tmp_path / "work"
    inside.mkdir()
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "outside.pem").write_text("not a key")
    (inside / "inside.pem").write_text("not a key")
    monkeypatch.chdir(inside)
    return inside


def _policy(directory, output: str):
    path = directory / "policy.yaml"
    path.write_text(POLICY.format(output=output))
    return path


def _position(path, key: str) -> tuple[int, int]:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip().startswith(key + ":"):
            return number, line.index(":") + 3
    raise AssertionError(key)


@pytest.mark.parametrize("output, setting", [
    ("  dir: /", "output.dir"),
    ("  dir: {outside}", "output.dir"),
    ("  dir: ../elsewhere", "output.dir"),
    ("  dir: artifacts/../../elsewhere", "output.dir"),
    ("  signing_key: /etc/shadow", "output.signing_key"),
    ("  signing_key: ../keys/outside.pem", "output.signing_key"),
])
def test_a_policy_cannot_point_apply_outside_its_tree(work, tmp_path, capsys, output, setting):
    policy = _policy(work, output.format(outside=tmp_path / "elsewhere"))
    with pytest.raises(ApplyError) as refused:
        apply_policy(policy)
    (diagnostic,) = refused.value.diagnostics
    key = setting.split(".")[1]
    assert diagnostic.code == PATH_OUTSIDE and setting in diagnostic.message
    assert (diagnostic.file, diagnostic.line, diagnostic.col) == (str(policy), *_position(policy, key))
    assert ("--output" if key == "dir" else "--sign-key") in diagnostic.message  # what the operator can do

    assert main(["apply", str(policy)]) == 1
    assert f"policy.yaml:{diagnostic.line}:{diagnostic.col}: error: {PATH_OUTSIDE}" in capsys.readouterr().err
    assert main(["plan", "--no-model", str(policy)]) == 1  # plan says what apply will refuse
    assert PATH_OUTSIDE in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys", "work"]  # nothing written anywhere


@pytest.mark.parametrize("link, output", [
    ("artifacts", "  dir: artifacts"),              # the output directory is a link out
    ("artifacts/paths", "  dir: artifacts"),        # the policy's directory below it is
    ("key.pem", "  signing_key: key.pem"),          # the key is a link to a file outside
])
def test_symbolic_links_out_of_the_tree_are_refused(work, tmp_path, link, output):
    target = tmp_path / "keys" / "outside.pem" if link.endswith(".pem") else tmp_path / "elsewhere"
    if not link.endswith(".pem"):
        target.mkdir()
    (work / link).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, work / link)
    with pytest.raises(ApplyError) as refused:
        apply_policy(_policy(work, output))
    assert refused.value.diagnostics[0].code == PATH_OUTSIDE
    assert "resolves to" in refused.value.diagnostics[0].message
    if target.is_dir():
        assert list(target.iterdir()) == []


def test_paths_inside_the_tree_and_the_operators_flags_are_accepted(work, tmp_path, capsys):
    inside = _policy(work, "  dir: sub/../artifacts\n  signing_key: inside.pem")
    assert main(["plan", "--no-model", str(inside)]) == 2
    assert "no artifact at sub/../artifacts/paths/1.0.0" in capsys.readouterr().out
    with pytest.raises(ApplyError, match="not available"):  # past the path checks, at the (missing) model
        apply_policy(inside)

    hostile = _policy(work, "  dir: /\n  signing_key: /etc/shadow")
    outside = tmp_path / "elsewhere"
    assert main(["plan", "--no-model", str(hostile), "--output", str(outside),
                 "--sign-key", str(tmp_path / "keys" / "outside.pem")]) == 2
    capsys.readouterr()
    with pytest.raises(ApplyError, match="not available"):
        apply_policy(hostile, output_dir=outside, sign_key=tmp_path / "keys" / "outside.pem")
