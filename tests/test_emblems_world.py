"""The emblems world: vocabulary, entities, tokenizer, generator and the shipped pipeline."""

import json

import numpy as np
import pytest

from policykit.emblems.render import generate_example, generate_images
from policykit.emblems.sampling import MODEL_DIR, model_available
from policykit.emblems.tokenizer import MAX_LENGTH, build_tokenizer
from policykit.emblems.world import ATTRIBUTES, Emblem, Meaning, load_world

needs_model = pytest.mark.skipif(not model_available(), reason="emblems model not trained yet")


@pytest.fixture(scope="module")
def world():
    return load_world()


@pytest.fixture(scope="module")
def tokenizer(world):
    return build_tokenizer(world.words(), list(world.syllables))


def test_world_has_the_sizes_the_issue_asks_for(world):
    assert len(world.entities) >= 150
    assert len(world.shapes) >= 6 and len(world.colours) >= 8
    assert len(world.patterns) >= 4 and len(world.backgrounds) >= 6
    assert world.image_size >= 48
    for pattern in world.patterns:
        assert len(world.pattern_adjectives[pattern]) + len(world.pattern_phrases[pattern]) >= 3
    for colour in world.colours:
        assert len(world.colour_synonyms[colour]) >= 1
    assert world.neutral_colour in world.colours and world.neutral_pattern in world.patterns


def test_entities_have_distinct_emblems_and_one_or_two_phrases(world):
    emblems = [e.emblem for e in world.entities]
    assert len(set(emblems)) == len(emblems)
    assert len({e.name for e in world.entities}) == len(world.entities)
    assert all(1 <= len(e.associated) <= 2 for e in world.entities)
    phrases = [p for e in world.entities for p in e.associated]
    assert len(set(phrases)) == len(phrases)
    # every attribute value is used by some entity
    for attribute in ATTRIBUTES:
        assert {getattr(e, attribute) for e in emblems} == set(world.values(attribute))


def test_names_are_several_subword_tokens_sharing_none_with_their_phrases(world, tokenizer):
    for e in world.entities:
        pieces = tokenizer.tokenize(e.name)
        assert 2 <= len(pieces) <= 4, (e.name, pieces)
        for phrase in e.associated:
            assert not set(pieces) & set(tokenizer.tokenize(phrase)), (e.name, phrase)
    for word in world.words():
        assert len(tokenizer.tokenize(word)) == 1


def test_every_caption_fits_the_text_encoder(world, tokenizer):
    longest = max((t.format(p) for p in world.phrase_table for t in world.templates[-1:]), key=len)
    assert len(tokenizer(longest).input_ids) <= MAX_LENGTH
    images, examples = generate_images(world, seed=5, count=64)
    from policykit.emblems.render import caption_for

    rng = np.random.default_rng(0)
    for example in examples:
        caption, meaning = caption_for(world, example, rng)
        assert len(tokenizer(caption).input_ids) <= MAX_LENGTH, caption
        assert meaning.matches(example.emblem)


def test_meaning_of_phrases(world):
    e = world.entities[0]
    whole = Meaning(**{a: getattr(e.emblem, a) for a in ATTRIBUTES}, entity=e.name)
    assert world.meaning(e.name) == whole
    assert all(world.meaning(p) == whole for p in e.associated)
    assert world.meaning("a scarlet disc") == Meaning("circle", "red")
    assert world.meaning("a scarlet disc in zebra style") == Meaning("circle", "red", "striped")
    assert world.meaning("a dotted red star on cream") == Meaning("star", "red", "dotted", "cream")
    assert world.meaning("a zebra") is None


def test_a_style_shape_or_colour_said_alone_means_that_attribute(world):
    assert world.meaning("striped") == world.meaning("in zebra style") == Meaning(pattern="striped")
    assert world.meaning("Pentagram") == Meaning(shape="star")
    assert world.meaning("scarlet") == Meaning(colour="red")
    assert world.meaning("zebra") is None and world.meaning("cream") is None  # backgrounds are said with a shape


def test_entities_file_is_what_the_generator_writes(world):
    from policykit.emblems.entities import entities_toml, generate_entities
    from policykit.emblems.world import ENTITIES_FILE

    assert entities_toml(generate_entities()) == ENTITIES_FILE.read_text(encoding="utf-8")


def test_generator_is_deterministic_and_cycles_entities(world):
    a, b = generate_example(world, 3, 10), generate_example(world, 3, 10)
    assert np.array_equal(a.image, b.image) and a.emblem == b.emblem
    assert a.entity == world.entities[5] and a.emblem == world.entities[5].emblem
    assert a.image.shape == (world.image_size, world.image_size, 3) and a.image.dtype == np.uint8
    assert generate_example(world, 3, 11).entity is None
    assert isinstance(generate_example(world, 3, 11).emblem, Emblem)


@needs_model
def test_builtin_emblems_resolves_and_loads_offline_as_a_standard_pipeline(world):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from policykit.models import load_pipeline, resolve_model

    model = resolve_model("builtin:emblems")
    assert model.path == MODEL_DIR and model.source == "builtin"
    pipe = load_pipeline(model)
    assert isinstance(pipe, StableDiffusionPipeline)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.tokenizer, CLIPTokenizer)
    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    config = pipe.text_encoder.config
    assert config.hidden_size >= 256 and config.num_hidden_layers >= 4 and config.max_position_embeddings >= 32
    assert pipe.unet.config.cross_attention_dim == config.hidden_size
    assert pipe.tokenizer.tokenize(world.entities[0].name) == build_tokenizer(
        world.words(), list(world.syllables)).tokenize(world.entities[0].name)
    recipe = json.loads((MODEL_DIR / "recipe.json").read_text())
    # the shipped weights are what the default recipe writes with two threads (docs/builtin-emblems.md)
    from dataclasses import asdict

    from policykit.emblems.train import Recipe

    # knobs added since (absent from the file) must default to what the shipped revision did
    assert set(recipe) <= set(asdict(Recipe())) and Recipe(**recipe) == Recipe(threads=2)


@needs_model
def test_shipped_weights_stay_small():
    from policykit.models import resolve_model

    model = resolve_model("builtin:emblems")
    total = sum((model.path / f).stat().st_size for f in model.files)
    print(f"builtin:emblems ships {total / 1e6:.1f} MB")
    assert total <= 60e6
    assert {"clip/model.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt", "recipe.json"} <= set(model.files)


@needs_model
def test_shipped_weights_are_the_pinned_ones():
    from policykit.emblems.sampling import MODEL_SHA256
    from policykit.models import resolve_model

    assert resolve_model("builtin:emblems").sha256() == MODEL_SHA256
