"""CLIP zero-shot audit classifier, exercised offline with the shapes world's own tiny CLIP.

Real models are audited by CLIP from a local directory; here the directory is
the shipped shapes CLIP plus a processor saved next to it, so the same code
path runs in CI with nothing downloaded.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest

from policykit.audit.classifiers import ClassifierError, ClipZeroShotClassifier, build_classifier

MODEL = Path(__file__).resolve().parents[1] / "policykit" / "shapes" / "model"
pytestmark = pytest.mark.skipif(not (MODEL / "clip" / "config.json").is_file(), reason="builtin:shapes not trained")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

    path = tmp_path_factory.mktemp("clip") / "shapes-clip"
    shutil.copytree(MODEL / "clip", path)
    # The shapes CLIP reads 32x32 images scaled to [-1, 1] (policykit.shapes.sampling.clip_pixel_values).
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                image_mean=[0.5] * 3, image_std=[0.5] * 3)
    CLIPProcessor(image_processor=images, tokenizer=CLIPTokenizer.from_pretrained(MODEL / "tokenizer")).save_pretrained(path)
    return path


def test_zero_shot_agrees_with_pixel_truth_on_clean_images(clip_dir):
    from policykit.shapes.render import generate_images
    from policykit.shapes.world import load_world

    world = load_world()
    classifier = ClipZeroShotClassifier(clip_dir, [c.name for c in world.concepts], template="a picture of a {}")
    images, examples = generate_images(world, seed=5, count=96)
    predicted = classifier.predict(images)
    agreement = np.mean([p == e.concept.name for p, e in zip(predicted, examples)])
    print(f"\nCLIP zero-shot vs pixel truth on 96 clean images: {agreement:.1%}")
    assert agreement >= 0.95
    red = [i for i, e in enumerate(examples) if e.concept.name == "red circle"]
    assert all(classifier.shows(images[red], "red circle"))
    assert not any(classifier.shows(images[red], "blue circle"))


def test_errors_are_clear(clip_dir, tmp_path):
    with pytest.raises(ClassifierError, match="does not exist"):
        ClipZeroShotClassifier(tmp_path / "nope", ["a", "b"])
    with pytest.raises(ClassifierError, match="at least two labels"):
        ClipZeroShotClassifier(clip_dir, ["red circle"])
    classifier = build_classifier(str(clip_dir), "some/real-model", ["red circle", "blue circle"])
    with pytest.raises(ClassifierError, match="not among"):
        classifier.shows(np.zeros((1, 32, 32, 3), dtype=np.uint8), "green cross")
    with pytest.raises(ClassifierError, match="set audit.classifier"):
        build_classifier(None, "some/real-model", ["a", "b"])
