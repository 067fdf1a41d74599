"""The emblems pixel-truth classifier against the generator's own images."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from policykit.emblems.classify import classify_image, classify_images
from policykit.emblems.render import draw_emblem, generate_images
from policykit.emblems.world import ATTRIBUTES, Emblem, load_world


@pytest.fixture(scope="module")
def world():
    return load_world()


def test_every_attribute_at_least_99_percent_correct_on_clean_renders(world):
    images, examples = generate_images(world, seed=4321, count=960)
    readings = classify_images(world, images)
    for attribute in ATTRIBUTES:
        correct = sum(getattr(r, attribute) == getattr(e.emblem, attribute) for r, e in zip(readings, examples))
        print(f"{attribute}: {correct}/{len(examples)}")
        assert correct / len(examples) >= 0.99, attribute
    named = sum(r.entity == (e.entity.name if e.entity else getattr(world.entity_by_emblem.get(e.emblem), "name", None))
                for r, e in zip(readings, examples))
    assert named / len(examples) >= 0.99


def test_still_reads_softened_noisy_renders(world):
    """Sampled images are softer than the renderer's: slight blur and noise must not fool it."""
    images, examples = generate_images(world, seed=99, count=240)
    rng = np.random.default_rng(0)
    softened = []
    for image in images:
        soft = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float64)
        softened.append(np.clip(soft + rng.normal(0, 6, soft.shape), 0, 255).astype(np.uint8))
    readings = classify_images(world, np.stack(softened))
    correct = sum(r.emblem == e.emblem for r, e in zip(readings, examples))
    assert correct / len(examples) >= 0.97


def test_names_entity_style_and_object(world):
    entity = world.entities[0]
    image = draw_emblem(world, entity.emblem, 6, 6, 34, world.colour_rgb[entity.emblem.colour],
                        world.background_rgb[entity.emblem.background])
    reading = classify_image(world, image)
    assert reading.entity == entity.name
    assert reading.style == entity.emblem.pattern
    assert reading.object == f"{entity.emblem.colour} {entity.emblem.shape}"


def test_a_non_entity_emblem_names_no_entity_and_a_blank_image_nothing(world):
    free = next(Emblem(s, c, p, b) for s in world.shapes for c in world.colours for p in world.patterns
                for b in world.backgrounds if Emblem(s, c, p, b) not in world.entity_by_emblem)
    image = draw_emblem(world, free, 5, 5, 36, world.colour_rgb[free.colour], world.background_rgb[free.background])
    reading = classify_image(world, image)
    assert reading.emblem == free and reading.entity is None
    blank = np.full((world.image_size, world.image_size, 3), world.background_rgb["mint"], np.uint8)
    reading = classify_image(world, blank)
    assert reading.shape is None and reading.entity is None and reading.background == "mint"


def test_the_audits_pixel_truth_judges_names_phrases_and_objects_of_the_world(world):
    """What apply's audit uses for builtin:emblems: an image shows a name (or an associated phrase) when all four
    attributes are the entity's, an object phrase when its colour and shape are."""
    from policykit.audit.classifiers import ClassifierError, build_classifier

    classifier = build_classifier(None, "builtin:emblems", [])
    entity, other = world.entities[0], world.entities[1]
    rng = np.random.default_rng(7)
    from policykit.emblems.render import render_emblem

    images = np.stack([render_emblem(world, entity.emblem, rng) for _ in range(4)])
    assert classifier.shows(images, entity.name) == [True] * 4
    assert classifier.shows(images, entity.associated[0]) == [True] * 4
    assert classifier.shows(images, other.name) == [False] * 4
    assert classifier.shows(images, f"a {entity.emblem.colour} {entity.emblem.shape}") == [True] * 4
    with pytest.raises(ClassifierError, match="means nothing in builtin:emblems"):
        classifier.shows(images, "a purple elephant")


def test_pixel_truth_judges_a_style_or_shape_said_alone(world):
    from policykit.audit.classifiers import PixelTruthClassifier

    rng = np.random.default_rng(1)
    from policykit.emblems.render import render_emblem

    images = np.stack([render_emblem(world, Emblem("star", "red", "striped", "cream"), rng),
                       render_emblem(world, Emblem("circle", "blue", "dotted", "white"), rng)])
    classifier = PixelTruthClassifier("builtin:emblems")
    assert classifier.shows(images, "in zebra style") == [True, False]
    assert classifier.shows(images, "spotted") == [False, True]
    assert classifier.shows(images, "pentagram") == [True, False]
    assert classifier.shows(images, "cobalt") == [False, True]
