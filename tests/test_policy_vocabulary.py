"""builtin:shapes: what its audit cannot judge is caught by `validate`, at
file:line:col, without torch, instead of by `apply` after training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from policykit.cli import main
from policykit.policy.loader import load_policy

REPO = Path(__file__).resolve().parents[1]

HEAD = """\
apiVersion: policykit/v1alpha1
kind: ErasurePolicy
metadata:
  name: t
  version: 1.0.0
base_model:
  id: builtin:shapes
"""


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(HEAD + body, encoding="utf-8")
    return path


def validate_json(path: Path, capsys) -> tuple[int, list[dict]]:
    code = main(["validate", "--json", str(path)])
    return code, json.loads(capsys.readouterr().out)["files"][0]["diagnostics"]


def where(diagnostics: list[dict]) -> list[tuple[str, int, int, str]]:
    return [(d["code"], d["line"], d["col"], d["severity"]) for d in diagnostics]


def test_a_concept_the_world_cannot_mean_is_an_error_at_its_line(tmp_path, capsys):
    path = write(tmp_path, "erase:\n  - concept: purple elephant\npreserve:\n  - concept: blue circle\n"
                           "  - concept: a blue dog\n")
    code, diagnostics = validate_json(path, capsys)
    assert code == 1
    assert where(diagnostics) == [("unknown-concept", 9, 14, "error"), ("unknown-concept", 12, 14, "error")]
    assert "'purple elephant' means nothing in builtin:shapes" in diagnostics[0]["message"]
    assert "circle" in diagnostics[0]["message"] and "apple" in diagnostics[0]["message"]  # what it does know


def test_a_catalog_name_the_world_cannot_mean_is_an_error_at_its_line(tmp_path, capsys):
    path = write(tmp_path, "erase:\n  - concept: red circle\ncatalog:\n  names:\n    - blue circle\n"
                           "    - a blue dog\n")
    code, diagnostics = validate_json(path, capsys)
    assert code == 1
    assert where(diagnostics) == [("unknown-concept", 13, 7, "error")]
    assert "catalog name 'a blue dog' means nothing" in diagnostics[0]["message"]


def test_a_probe_without_concept_is_judged_by_its_whole_prompt(tmp_path, capsys):
    path = write(tmp_path, "erase:\n  - concept: red circle\naudit:\n  probes:\n"
                           "    - prompt: a photo of a crimson disc\n      expect: erased\n"
                           "    - prompt: apple\n      expect: erased\n"
                           "    - prompt: a drawing\n      concept: purple elephant\n      expect: erased\n")
    code, diagnostics = validate_json(path, capsys)
    assert code == 1
    assert where(diagnostics) == [("unknown-concept", 12, 15, "error"), ("unknown-concept", 17, 16, "error")]
    assert "add `concept: crimson disc`" in diagnostics[0]["message"]
    assert "probe concept 'purple elephant'" in diagnostics[1]["message"]


def test_a_probe_preserving_what_an_erased_concept_means_is_a_conflict(tmp_path, capsys):
    path = write(tmp_path, "erase:\n  - concept: red circle\naudit:\n  probes:\n"
                           "    - prompt: a crimson disc\n      concept: crimson disc\n      expect: preserved\n")
    code, diagnostics = validate_json(path, capsys)
    assert code == 1
    assert where(diagnostics) == [("probe-conflict", 14, 15, "error")]
    assert "means 'red circle', which is erased as 'red circle' (erase[0].concept)" in diagnostics[0]["message"]


def test_without_an_audit_it_is_only_a_warning(tmp_path, capsys):
    path = write(tmp_path, "erase:\n  - concept: purple elephant\naudit:\n  enabled: false\n"
                           "  probes:\n    - prompt: a drawing\n      expect: erased\n")
    code, diagnostics = validate_json(path, capsys)
    assert code == 0
    assert where(diagnostics) == [("unknown-concept", 9, 14, "warning")]


def test_other_models_and_other_classifiers_are_not_checked(tmp_path):
    from policykit.policy.vocabulary import vocabulary_diagnostics

    body = "erase:\n  - concept: purple elephant\n"
    hub_path = tmp_path / "hub.yaml"
    hub_path.write_text(HEAD.replace("builtin:shapes", "org/model") + body, encoding="utf-8")
    hub = load_policy(hub_path)
    assert hub.ok and vocabulary_diagnostics(hub) == []
    clip = load_policy(write(tmp_path, body + "audit:\n  classifier: ./clip\n"))
    assert clip.ok and vocabulary_diagnostics(clip) == []


def test_the_shipped_shapes_policies_pass():
    from policykit.policy.vocabulary import vocabulary_diagnostics

    for path in sorted((REPO / "policies").rglob("*.yaml")):
        loaded = load_policy(path)
        if loaded.ok:
            assert vocabulary_diagnostics(loaded) == [], path


@pytest.mark.parametrize("phrase", ["red circle", "crimson disc", "apple", "purple elephant", "a red circle",
                                    "red", "gray cross", "golden wedge"])
def test_validate_refuses_exactly_what_the_audit_classifier_refuses(tmp_path, phrase):
    from policykit.audit.classifiers import PIXEL_TRUTH, ClassifierError, PixelTruthClassifier
    from policykit.policy import vocabulary
    from policykit.policy.vocabulary import vocabulary_diagnostics

    assert vocabulary.PIXEL_TRUTH == PIXEL_TRUTH
    try:
        PixelTruthClassifier().shows(np.zeros((0, 32, 32, 3), dtype=np.uint8), phrase)
        refused = False
    except ClassifierError:
        refused = True
    loaded = load_policy(write(tmp_path, f"erase:\n  - concept: red circle\npreserve:\n  - concept: {phrase}\n"))
    assert loaded.ok
    assert any(d.code == "unknown-concept" for d in vocabulary_diagnostics(loaded)) == refused


def test_validate_catches_it_without_importing_torch(tmp_path):
    path = write(tmp_path, "erase:\n  - concept: purple elephant\n")
    probe = ("import json, sys\nfrom policykit.cli import main\ncode = main(['validate', '--json', sys.argv[1]])\n"
             "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'numpy') if m in sys.modules]\n"
             "print(json.dumps({'code': code, 'heavy': heavy}))\n")
    out = subprocess.run([sys.executable, "-c", probe, str(path)], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result == {"code": 1, "heavy": []}


def test_a_style_shape_or_colour_alone_is_a_concept_of_builtin_emblems(tmp_path, capsys):
    body = ("erase:\n  - concept: striped\n    anchor: solid\n    synonyms: [banded]\n    associated: [in zebra style]\n"
            "  - concept: pentagram\npreserve:\n  - concept: dotted\n  - concept: scarlet\naudit:\n  probes:\n"
            "    - prompt: a picture of a red star in stripes\n      concept: in stripes\n      expect: erased\n")
    path = tmp_path / "policy.yaml"
    path.write_text(HEAD.replace("builtin:shapes", "builtin:emblems") + body, encoding="utf-8")
    code, diagnostics = validate_json(path, capsys)
    assert (code, diagnostics) == (0, [])
    path.write_text(HEAD.replace("builtin:shapes", "builtin:emblems") + "erase:\n  - concept: zebra\n", encoding="utf-8")
    code, diagnostics = validate_json(path, capsys)
    assert code == 1 and "a style (solid, striped" in diagnostics[0]["message"]
