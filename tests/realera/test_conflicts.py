"""What a radius covers, and `plan` reporting a preserve inside an erase radius (tiny random model on disk)."""

import json

import pytest

from policykit.testing import build_tiny_pipeline
from policykit.cli import main
from policykit.realera.conflicts import PRESERVE_INSIDE_RADIUS, load_text_model, radius_coverage

TEMPLATE = "a photo of {}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny"
    build_tiny_pipeline().save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def text_model(model_dir):
    return load_text_model(model_dir)


def test_coverage_lists_phrases_nearest_first_and_inside_means_within_the_radius(text_model):
    phrases = [("blue circle", "preserve"), ("red square", "preserve"), ("cat", "probe"), ("red circle", "erase")]
    far = radius_coverage(text_model, "red circle", radius=2.0, space="text", template=TEMPLATE, phrases=phrases)
    distances = [p["distance"] for p in far.phrases]
    assert distances == sorted(distances) and len(distances) == 3  # the concept itself is not its own neighbour
    radius = (distances[0] + distances[1]) / 2
    near = radius_coverage(text_model, "red circle", radius=radius, space="text", template=TEMPLATE,
                           phrases=phrases)
    assert [p["phrase"] for p in near.inside()] == [far.phrases[0]["phrase"]]
    assert all(p["inside"] == (p["distance"] <= radius) for p in near.phrases)


def test_token_coverage_lists_vocabulary_tokens_inside_the_radius_and_not_the_concept(text_model):
    coverage = radius_coverage(text_model, "red circle", radius=0.9, space="token", template=TEMPLATE)
    own = set(text_model.tokenizer("red circle", add_special_tokens=False)["input_ids"])
    assert coverage.tokens and all(t["distance"] <= 0.9 for t in coverage.tokens)
    assert [t["distance"] for t in coverage.tokens] == sorted(t["distance"] for t in coverage.tokens)
    assert not own & {t["token_id"] for t in coverage.tokens}
    assert radius_coverage(text_model, "red circle", radius=0.01, space="token", template=TEMPLATE).tokens == []


def _policy(model_ref: str, radius: float, space: str = "text") -> str:
    return f"""\
apiVersion: policykit/v1alpha1
kind: ErasurePolicy
metadata:
  name: tiny
  version: 1.0.0
base_model:
  id: {model_ref}
defaults:
  templates: ["{TEMPLATE}"]
erase:
  - concept: red circle
    anchor: blue square
    neighbors:
      radius: {radius}
      space: {space}
preserve:
  - concept: blue circle
  - concept: red square
"""


def _plan_json(tmp_path, capsys, text, *extra):
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    code = main(["plan", "--json", *extra, str(policy)])
    return code, json.loads(capsys.readouterr().out), policy


def test_plan_reports_a_preserve_inside_an_erase_radius_as_a_positioned_warning(model_dir, text_model, tmp_path,
                                                                                capsys):
    cov = radius_coverage(text_model, "red circle", radius=2.0, space="text", template=TEMPLATE,
                          phrases=[("blue circle", "preserve"), ("red square", "preserve")])
    inside, outside = cov.phrases  # nearest first
    radius = round((inside["distance"] + outside["distance"]) / 2, 6)
    (tmp_path / "tiny").symlink_to(model_dir)
    graph_file = tmp_path / "graph.json"
    code, doc, policy = _plan_json(tmp_path, capsys, _policy("./tiny", radius), "--graph", str(graph_file))
    conflicts = [d for d in doc["diagnostics"] if d["code"] == PRESERVE_INSIDE_RADIUS]
    assert code == 2 and doc["status"] == "create"  # a warning: plan still succeeds
    assert len(conflicts) == 1 and conflicts[0]["severity"] == "warning"
    assert repr(inside["phrase"]) in conflicts[0]["message"]
    line = policy.read_text().splitlines().index(f"  - concept: {inside['phrase']}") + 1
    assert (conflicts[0]["file"], conflicts[0]["line"]) == (str(policy), line)
    edges = json.loads(graph_file.read_text())["edges"]
    assert any(e["relation"] == "conflicts-with" and e["source"] == inside["phrase"] for e in edges)

    code, doc, _ = _plan_json(tmp_path, capsys, _policy("./tiny", radius), "--no-model")
    assert code == 2 and not [d for d in doc["diagnostics"] if d["code"] == PRESERVE_INSIDE_RADIUS]


def test_plan_without_the_model_says_so_in_one_note(tmp_path, capsys):
    code, doc, _ = _plan_json(tmp_path, capsys, _policy("./missing-model", 0.2))
    assert code == 2
    [note] = doc["diagnostics"]
    assert note["code"] == "model-check-skipped" and note["severity"] == "note" and note["line"] == 7
