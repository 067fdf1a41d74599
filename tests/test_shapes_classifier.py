"""The pixel-truth classifier against the generator's own images."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from policykit.shapes.classify import classify_image, classify_images
from policykit.shapes.render import generate_images
from policykit.shapes.world import load_world


@pytest.fixture(scope="module")
def world():
    return load_world()


def test_at_least_99_percent_correct_on_clean_generated_images(world):
    images, examples = generate_images(world, seed=1234, count=960)
    readings = classify_images(world, images)
    correct = sum(r.concept == e.concept for r, e in zip(readings, examples))
    print(f"pixel-truth classifier: {correct}/{len(examples)} clean images correct")
    assert correct / len(examples) >= 0.99


def test_still_reads_blurred_noisy_images(world):
    """Generated images are softer than the renderer's: blur and noise must not fool it."""
    images, examples = generate_images(world, seed=99, count=240)
    rng = np.random.default_rng(0)
    correct = 0
    for image, example in zip(images, examples):
        soft = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float64)
        noisy = np.clip(soft + rng.normal(0, 6, soft.shape), 0, 255).astype(np.uint8)
        correct += classify_image(world, noisy).concept == example.concept
    assert correct / len(examples) >= 0.95


def test_blank_image_shows_nothing(world):
    blank = np.full((32, 32, 3), world.background, dtype=np.uint8)
    reading = classify_image(world, blank)
    assert reading.colour is None and reading.shape is None and reading.concept is None


def test_off_palette_colour_has_no_name(world):
    images, _ = generate_images(world, seed=5, count=1)
    image = images[0].copy()
    foreground = np.abs(image.astype(int) - world.background).max(axis=-1) > 60
    image[foreground] = (20, 240, 240)  # cyan: not a colour of this world
    assert classify_image(world, image).colour is None
