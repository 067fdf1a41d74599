"""The semantic policy diff: every kind of change, the renderers, exit codes
and ``--against GITREV``."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from policykit.cli import main
from policykit.plan import compile_plan
from policykit.policy.loader import load_policy
from policykit.policy_diff import Change, diff_plans, render_github, render_json, render_markdown

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests/fixtures/diff"

POLICY = """\
apiVersion: policykit/v1alpha1
kind: ErasurePolicy
metadata:
  name: t
  version: 1.0.0
base_model:
  id: builtin:shapes
defaults:
  neighbors:
    radius: 0.3
erase:
  - concept: red circle
    anchor: gray circle
    synonyms: [crimson circle]
    associated: [apple]
    neighbors:
      samples: 8
preserve:
  - concept: blue circle
  - concept: red square
audit:
  probes:
    - prompt: an apple
      concept: red circle
      expect: erased
training:
  seed: 0
"""


def edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def plan_of(tmp_path: Path, text: str, name: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    loaded = load_policy(path)
    assert loaded.ok, [d.format_text() for d in loaded.diagnostics]
    return compile_plan(loaded)


def diff_texts(tmp_path: Path, old: str, new: str):
    return diff_plans(plan_of(tmp_path, old, "old.yaml"), plan_of(tmp_path, new, "new.yaml"))


CHANGES = [
    ("preserve:\n", "  - concept: blue square\n    anchor: gray square\npreserve:\n", "concept-added"),
    ("anchor: gray circle", "anchor: a circle", "anchor-changed"),
    ("    anchor: gray circle\n", "    anchor: gray circle\n    category: character\n", "category-changed"),
    ("synonyms: [crimson circle]", "synonyms: [crimson circle, red disc]", "synonym-added"),
    ("synonyms: [crimson circle]", "synonyms: []", "synonym-removed"),
    ("associated: [apple]", "associated: [apple, cherry]", "associated-added"),
    ("associated: [apple]", "associated: []", "associated-removed"),
    ("    radius: 0.3\n", "    radius: 0.4\n", "radius-widened"),
    ("    radius: 0.3\n", "    radius: 0.2\n", "radius-narrowed"),
    ("    radius: 0.3\n", "    radius: 0.3\n    beyond_radius: 0.9\n", "beyond-radius-widened"),
    ("      samples: 8\n", "      samples: 4\n", "neighbors-changed"),
    ("      samples: 8\n", "      samples: 8\n      min_cosine: 0.9\n", "neighbors-changed"),
    ("      samples: 8\n", "      samples: 8\n      space: token\n", "neighbors-changed"),
    ("    anchor: gray circle\n", "    anchor: gray circle\n    strength: 0.5\n", "strength-lowered"),
    ("    anchor: gray circle\n", "    anchor: gray circle\n    templates: ['a {}']\n", "templates-changed"),
    ("preserve:\n", "preserve:\n  - concept: green triangle\n", "preserve-added"),
    ("  - concept: red square\n", "", "preserve-removed"),
    ("  - concept: red square\n", "  - concept: red square\n    weight: 3\n", "preserve-weight-changed"),
    ("audit:\n  probes:\n", "audit:\n  probes:\n    - prompt: a cherry\n      expect: erased\n", "probe-added"),
    ("    - prompt: an apple\n      concept: red circle\n      expect: erased\n", "    []\n", "probe-removed"),
    ("audit:\n", "audit:\n  thresholds:\n    min_specificity_accuracy: 0.9\n", "threshold-changed"),
    ("training:\n", "training:\n  method: uce\n", "method-changed"),
    ("training:\n", "training:\n  method: uce\n", "stage-removed"),
    ("audit:\n", "audit:\n  samples_per_prompt: 9\n", "stage-setting-changed"),
    ("training:\n", "training:\n  lora:\n    steps: 50\n", "stage-setting-changed"),
    ("  seed: 0\n", "  seed: 1\n", "seed-changed"),
    ("  id: builtin:shapes\n", "  id: ./my-model\n", "base-model-changed"),
    ("  id: builtin:shapes\n", "  id: builtin:shapes\n  revision: v2\n", "base-model-revision-changed"),
    ("  id: builtin:shapes\n", "  id: builtin:shapes\n  sha256: " + "ab" * 32 + "\n", "base-model-pin-changed"),
    ("training:\n", "output:\n  dir: elsewhere\ntraining:\n", "output-changed"),
    ("version: 1.0.0", "version: 1.1.0", "version-bumped"),
    ("training:\n", "catalog:\n  names: [green triangle, yellow star]\ntraining:\n", "catalog-added"),
]


def test_a_catalog_diff_names_its_names_and_moves_its_weight_once(tmp_path):
    with_catalog = edit(POLICY, "training:\n", "catalog:\n  names: [green triangle, yellow star, blue square]\n"
                                                "training:\n")
    fewer = edit(with_catalog, ", blue square]", "]")
    diff = diff_texts(tmp_path, with_catalog, fewer)
    counts = diff.counts()
    # one name removed; the other two now share the same mass, so their weight moved, reported once
    assert counts.get("catalog-removed") == 1 and counts.get("catalog-weight-changed") == 1, diff.changes
    assert "preserve-weight-changed" not in counts and "preserve-removed" not in counts
    heavier = edit(with_catalog, "catalog:\n", "catalog:\n  mass: 4\n")
    assert diff_texts(tmp_path, with_catalog, heavier).counts() == {"catalog-weight-changed": 1}


@pytest.mark.parametrize("old, new, kind", CHANGES)
def test_every_kind_of_change_is_reported(tmp_path, old, new, kind):
    diff = diff_texts(tmp_path, POLICY, edit(POLICY, old, new))
    assert kind in diff.counts(), diff.changes
    assert diff.changed


@pytest.mark.parametrize("old, new", [
    # the same preserves in another order: the edit solves and trains on them in that order
    ("  - concept: blue circle\n  - concept: red square\n", "  - concept: red square\n  - concept: blue circle\n"),
    ("  - concept: blue circle\n", "  - concept: Blue  circle\n"),  # what the audit prompts say
])
def test_a_change_only_the_artifact_identity_sees_is_still_a_change(tmp_path, old, new):
    a, b = plan_of(tmp_path, POLICY, "a.yaml"), plan_of(tmp_path, edit(POLICY, old, new), "b.yaml")
    assert main(["diff", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")]) == 2
    assert [c.kind for c in diff_plans(a, b).changes] == ["plan-changed"]
    from policykit.plan import artifact_identity

    assert artifact_identity(a) != artifact_identity(b)  # what plan and apply compare moved too


def test_diff_reports_a_change_whenever_the_artifact_identity_moves(tmp_path):
    from policykit.plan import artifact_identity

    a = plan_of(tmp_path, POLICY, "a.yaml")
    for old, new, _kind in CHANGES:
        b = plan_of(tmp_path, edit(POLICY, old, new), "b.yaml")
        moved = artifact_identity(a) != artifact_identity(b)
        assert diff_plans(a, b).changed == (moved or a.output != b.output), (old, new)
        assert moved or a.output != b.output, (old, new)  # every kind of change diff names changes something


def test_concept_removed_is_the_mirror_of_added(tmp_path):
    bigger = edit(POLICY, "preserve:\n", "  - concept: blue square\n    anchor: gray square\npreserve:\n")
    diff = diff_texts(tmp_path, bigger, POLICY)
    assert diff.counts() == {"concept-removed": 1}
    assert diff.changes[0].subject == "blue square" and diff.changes[0].old == "gray square"


def test_no_semantic_change_for_comments_key_order_and_spelled_out_defaults(tmp_path):
    rewritten = "# a comment\n" + edit(POLICY, "    anchor: gray circle\n", "    anchor: gray circle\n    strength: 1.0\n")
    rewritten = edit(rewritten, "    synonyms: [crimson circle]\n    associated: [apple]\n",
                     "    associated: [apple]  # evokes it\n    synonyms: [crimson circle]\n")
    diff = diff_texts(tmp_path, POLICY, rewritten)
    assert not diff.changed and diff.summary() == "no semantic change" and diff.warnings == ()
    # a concept spelled differently is another prompt (other audit seeds, other training text): a change
    respelled = diff_texts(tmp_path, POLICY, edit(POLICY, "  - concept: red circle", "  - concept: Red  Circle"))
    assert respelled.counts() == {"plan-changed": 1}


def test_a_defaults_change_shows_on_the_concept(tmp_path):
    diff = diff_texts(tmp_path, POLICY, edit(POLICY, "    radius: 0.3\n", "    radius: 0.5\n"))
    radius = [c for c in diff.changes if c.kind == "radius-widened"]
    assert radius == [Change("radius-widened", "red circle", "'red circle': radius 0.3 \u2192 0.5",
                             "neighbors.radius", 0.3, 0.5)]
    # beyond_radius follows (2 x radius), and that is a real change too
    assert "beyond-radius-widened" in diff.counts()


def test_content_change_without_version_bump_warns(tmp_path):
    diff = diff_texts(tmp_path, POLICY, edit(POLICY, "  seed: 0\n", "  seed: 1\n"))
    assert len(diff.warnings) == 1 and "metadata.version is still 1.0.0" in diff.warnings[0]
    bumped = edit(edit(POLICY, "  seed: 0\n", "  seed: 1\n"), "version: 1.0.0", "version: 1.0.1")
    assert diff_texts(tmp_path, POLICY, bumped).warnings == ()


def test_extra_checks_are_the_hook_for_model_based_notes(tmp_path):
    def preserve_inside_radius(old, new):
        yield Change("preserve-inside-radius", "blue circle", "'blue circle' now falls inside 'red circle'")

    old = plan_of(tmp_path, POLICY, "old.yaml")
    diff = diff_plans(old, old, checks=[preserve_inside_radius])
    assert diff.counts() == {"preserve-inside-radius": 1}
    assert "| preserve-inside-radius | blue circle |" in render_markdown(diff)


def _fixture_diff():
    plans = [compile_plan(load_policy(FIXTURES / name)) for name in ("old.yaml", "new.yaml")]
    return diff_plans(*plans)


def test_markdown_is_a_pr_comment_with_a_summary_line_first():
    markdown = render_markdown(_fixture_diff())
    lines = markdown.splitlines()
    assert lines[0] == "**demo 1.0.0 \u2192 1.1.0**: 1 concept added, 1 radius widened, 2 preserves removed"
    assert lines[1] == ""
    assert "### Erase concepts" in lines and "### Preserves" in lines and "### Metadata" in lines
    header = lines.index("### Preserves") + 2
    assert lines[header] == "| Change | Subject | Setting | Before | After |"
    assert lines[header + 2].startswith("| preserve-removed | blue circle |")
    assert "### Base model" not in lines  # empty sections are left out


def test_json_and_github_renderings():
    diff = _fixture_diff()
    doc = json.loads(render_json(diff))
    assert doc["format_version"] == 1 and doc["changed"] is True
    assert doc["counts"] == {"concept-added": 1, "radius-widened": 1, "preserve-removed": 2, "version-bumped": 1}
    assert doc["old"]["version"] == "1.0.0" and len(doc["new"]["plan_hash"]) == 64
    github = render_github(diff, "policies/new.yaml").splitlines()
    assert len(github) == len(diff.changes)
    assert all(line.startswith("::notice file=policies/new.yaml,title=") for line in github)


# ------------------------------------------------------------------ the command


def test_diff_command_exit_codes_and_formats(capsys):
    old, new = str(FIXTURES / "old.yaml"), str(FIXTURES / "new.yaml")
    assert main(["diff", old, old]) == 0
    assert "no semantic change" in capsys.readouterr().out
    assert main(["diff", old, new]) == 2
    assert "1 concept added" in capsys.readouterr().out
    assert main(["diff", old, new, "--format", "markdown"]) == 2
    assert capsys.readouterr().out.startswith("**demo 1.0.0")
    assert main(["diff", old, new, "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["summary"].startswith("1 concept added")


def test_diff_command_fails_when_a_side_is_invalid(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(edit(POLICY, "  - concept: red square\n", "  - concept: apple\n"))
    assert main(["diff", str(FIXTURES / "old.yaml"), str(bad)]) == 1
    err = capsys.readouterr().err
    assert "erase-preserve-conflict" in err and "bad.yaml" in err
    assert main(["diff", str(FIXTURES / "old.yaml")]) == 1
    assert "--against" in capsys.readouterr().err


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=repo,
                   check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git repository holding the diff fixtures (old.yaml as policy.yaml), one commit."""
    _git(tmp_path, "init", "-q")
    shutil.copy(FIXTURES / "shared-defaults.yaml", tmp_path / "shared-defaults.yaml")
    shutil.copy(FIXTURES / "old.yaml", tmp_path / "policy.yaml")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "first")
    return tmp_path


def test_against_a_git_revision(repo, capsys, monkeypatch):
    policy = repo / "policy.yaml"
    assert main(["diff", str(policy), "--against", "HEAD"]) == 0
    capsys.readouterr()
    shutil.copy(FIXTURES / "new.yaml", policy)
    assert main(["diff", str(policy), "--against", "HEAD", "--format", "markdown"]) == 2
    assert "1 concept added, 1 radius widened, 2 preserves removed" in capsys.readouterr().out
    monkeypatch.chdir(repo)  # a relative path works the same
    assert main(["diff", "policy.yaml", "--against", "HEAD"]) == 2


def test_against_reads_extended_files_at_the_revision(repo, capsys):
    assert len(load_policy(repo / "policy.yaml").sources) == 2  # policy.yaml and the file it extends
    base = repo / "shared-defaults.yaml"
    base.write_text(edit(base.read_text(), "radius: 0.3", "radius: 0.35"))
    assert main(["diff", str(repo / "policy.yaml"), "--against", "HEAD", "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["counts"]["radius-widened"] == 1 and doc["warnings"]  # version not bumped


def test_against_errors_are_clear(repo, tmp_path_factory, capsys):
    new_file = repo / "new.yaml"
    shutil.copy(FIXTURES / "new.yaml", new_file)
    assert main(["diff", str(new_file), "--against", "HEAD"]) == 1
    assert "new.yaml does not exist at HEAD" in capsys.readouterr().err
    assert main(["diff", str(repo / "policy.yaml"), "--against", "no-such-rev"]) == 1
    assert "'no-such-rev' is not a commit" in capsys.readouterr().err
    outside = tmp_path_factory.mktemp("not-a-repo")
    shutil.copy(FIXTURES / "new.yaml", outside / "p.yaml")
    assert main(["diff", str(outside / "p.yaml"), "--against", "HEAD"]) == 1
    assert "not inside a git repository" in capsys.readouterr().err


def test_against_an_invalid_old_revision_says_which_side_failed(repo, capsys):
    policy = repo / "policy.yaml"
    policy.write_text(edit(policy.read_text(), "  - concept: red square\n", "  - concept: apple\n"))
    _git(repo, "commit", "-q", "-am", "preserve an erased word")
    shutil.copy(FIXTURES / "old.yaml", policy)
    assert main(["diff", str(policy), "--against", "HEAD"]) == 1
    err = capsys.readouterr().err
    assert "(at HEAD) 'apple' is preserved" in err
    assert main(["diff", str(policy), "--against", "HEAD", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "error" and [d["code"] for d in doc["diagnostics"]] == ["erase-preserve-conflict"]
