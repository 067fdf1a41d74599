"""`policykit neighbors`: what a radius covers, on a tiny random model saved to disk."""

import json

import pytest

from policykit.cli import main
from policykit.testing import build_tiny_pipeline


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny"
    build_tiny_pipeline().save_pretrained(str(path))
    return path


def _json(capsys, *argv):
    code = main(["neighbors", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_json_lists_phrases_with_distances_and_the_decoded_samples(model_dir, capsys):
    code, doc = _json(capsys, "red circle", "--model", str(model_dir), "--radius", "0.3", "--space", "text",
                      "--phrase", "blue circle", "--phrase", "cat", "--samples", "5", "--template", "a photo of {}")
    assert code == 0 and doc["format_version"] == 1
    assert (doc["concept"], doc["radius"], doc["space"], doc["template"]) == ("red circle", 0.3, "text", "a photo of {}")
    assert {p["phrase"] for p in doc["phrases"]} == {"blue circle", "cat"}
    assert all(p["inside"] == (p["distance"] <= 0.3) for p in doc["phrases"])
    assert doc["samples"]["accepted"] <= 5 and doc["samples"]["drawn"] >= doc["samples"]["accepted"]
    assert sum(d["count"] for d in doc["samples"]["decoded"]) == doc["samples"]["accepted"]


def test_a_small_token_radius_decodes_every_sample_to_the_concept_itself(model_dir, capsys):
    code, doc = _json(capsys, "red circle", "--model", str(model_dir), "--radius", "0.02", "--samples", "4")
    assert code == 0 and doc["tokens"] == []
    assert doc["samples"]["decoded"] == [{"phrase": "red circle", "count": 4}]


def test_policy_supplies_phrases_and_the_entry_settings(model_dir, tmp_path, capsys):
    policy = tmp_path / "p.yaml"
    policy.write_text(f"""\
apiVersion: policykit/v1alpha1
kind: ErasurePolicy
metadata: {{name: p, version: 1.0.0}}
base_model: {{id: {model_dir}}}
defaults: {{templates: ["a painting of {{}}"]}}
erase:
  - concept: red circle
    anchor: blue square
    synonyms: [red square]
    neighbors: {{radius: 0.7, space: text}}
preserve:
  - concept: cat
audit:
  probes:
    - prompt: a photo of a dog
      concept: dog
      expect: preserved
""")
    code, doc = _json(capsys, "red circle", "--model", str(model_dir), "--policy", str(policy))
    assert code == 0 and (doc["radius"], doc["space"], doc["template"]) == (0.7, "text", "a painting of {}")
    assert {(p["phrase"], p["role"]) for p in doc["phrases"]} == {("red square", "synonym"), ("cat", "preserve"),
                                                                  ("dog", "probe")}


def test_text_output_is_a_table(model_dir, capsys):
    assert main(["neighbors", "red circle", "--model", str(model_dir), "--space", "token", "--radius", "0.9",
                 "--phrase", "cat"]) == 0
    out = capsys.readouterr().out
    assert "Vocabulary tokens inside the radius" in out and "cat" in out and "neighbors accepted" in out


def test_missing_model_is_a_diagnostic_not_a_traceback(tmp_path, capsys):
    code, doc = _json(capsys, "red circle", "--model", str(tmp_path / "nope"))
    assert code == 1 and doc["diagnostics"][0]["code"] == "model-not-available"


def test_sdxl_radius_is_measured_in_both_encoders_joint_token_space(tmp_path, capsys):
    from policykit.models.text import load_text_model
    from policykit.testing import build_tiny_sdxl_pipeline

    path = tmp_path / "xl"
    build_tiny_sdxl_pipeline().save_pretrained(str(path))
    code, doc = _json(capsys, "red circle", "--model", str(path), "--radius", "1.3", "--space", "token", "--samples", "3",
                      "--phrase", "blue circle")
    assert code == 0 and doc["tokens"] and all(t["distance"] <= 1.3 for t in doc["tokens"])
    # the distance is over the 32 + 48 joint rows: recompute one from the two tables
    text = load_text_model(path)
    table = text.token_table()
    assert table.shape[1] == 80
    ids = text.tokenizer("red circle", add_special_tokens=False).input_ids
    t = table[ids]
    first = doc["tokens"][0]
    moved = t.clone()
    moved[first["span_index"]] = table[first["token_id"]]
    assert abs(float((moved - t).norm() / t.norm()) - first["distance"]) < 1e-5
