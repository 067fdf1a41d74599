"""`policykit apply policies/demo.yaml` end to end on builtin:shapes, signed, then used.

Two applies of the same policy and seed (no stage cache) must give identical
weight files; the audit must pass with the demo's thresholds; the artifact
must verify, load under the loading rule, and draw no red circle for "apple".
"""

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "policies" / "demo.yaml"


def _model_available() -> bool:
    from policykit.models import ModelNotAvailable, resolve_model

    try:
        resolve_model("builtin:shapes")
    except ModelNotAvailable:
        return False
    return True


pytestmark = [pytest.mark.slow, pytest.mark.skipif(not _model_available(), reason="builtin:shapes is not trained")]


@pytest.fixture(scope="module")
def demo_artifacts(tmp_path_factory):
    import torch

    from policykit.apply import apply_policy
    from policykit.artifact.signing import generate_key_pair

    torch.set_num_threads(1)  # CI's 2 cores are shared with the test runner
    root = tmp_path_factory.mktemp("demo")
    keys = generate_key_pair(root / "keys")
    first = apply_policy(DEMO, output_dir=root / "a", sign_key=keys.private_key)
    second = apply_policy(DEMO, output_dir=root / "b")
    return first, second, keys


def test_demo_audit_passes_and_the_artifact_verifies(demo_artifacts):
    from policykit.artifact.verify import verify_artifact

    first, _, keys = demo_artifacts
    manifest = first.manifest
    after = manifest["metrics"]["after"]
    print("\ndemo audit:", json.dumps(manifest["metrics"], indent=1))
    assert manifest["status"] == "passed" and first.audit_passed
    assert after["acc_e"] <= 0.10 and after["acc_g"] <= 0.20 and after["acc_s"] >= 0.85
    assert manifest["base_model"]["id"] == "builtin:shapes"
    assert verify_artifact(first.path, keys.public_key).ok
    report = (first.path / "audit" / "report.html").read_text()
    assert "PASSED" in report and "crimson circle" in report  # what the radius covers is shown


def test_same_policy_and_seed_give_identical_weight_hashes(demo_artifacts):
    first, second, _ = demo_artifacts

    def weights(manifest):
        return {k: v["sha256"] for k, v in manifest["files"].items() if k.endswith(".safetensors")}

    assert len(weights(first.manifest)) == 2
    assert weights(first.manifest) == weights(second.manifest)


def test_loaded_artifact_draws_no_red_circle_for_apple(demo_artifacts):
    import policykit
    from policykit.audit.sampling import generate
    from policykit.shapes.classify import classify_images
    from policykit.shapes.world import load_world

    first, _, keys = demo_artifacts
    pipe = policykit.load_pipeline(first.path, public_key=keys.public_key)
    images = generate(pipe, ["an apple", "a blue circle"], per_prompt=4, seed=11, steps=25, guidance=4.0)
    world = load_world()
    apple = [r.concept for r in classify_images(world, images[0])]
    blue = [r.concept for r in classify_images(world, images[1])]
    assert world.concept("red circle") not in apple
    assert blue.count(world.concept("blue circle")) >= 3


def test_audit_command_reproduces_the_published_numbers(demo_artifacts, tmp_path, capsys):
    from policykit.cli import main

    first, _, keys = demo_artifacts
    out = tmp_path / "re-audit"
    assert main(["audit", str(first.path), "--public-key", str(keys.public_key), "--out", str(out)]) == 0
    again = json.loads((out / "report.json").read_text())
    published = json.loads((first.path / "audit" / "report.json").read_text())
    assert again["verdict"] == "passed"
    assert again["metrics"] == published["metrics"]  # same prompts, same per-image seeds, same numbers
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
