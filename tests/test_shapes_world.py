"""The shapes world's vocabulary, data generator and tokenizer."""

import numpy as np
import pytest

from policykit.shapes.render import generate_example, generate_images
from policykit.shapes.tokenizer import MAX_LENGTH, build_tokenizer, learn_merges
from policykit.shapes.world import Concept, load_world


@pytest.fixture(scope="module")
def world():
    return load_world()


@pytest.fixture(scope="module")
def tokenizer(world):
    return build_tokenizer(world.words())


def test_world_has_enough_colours_shapes_and_a_neutral_anchor(world):
    assert len(world.colours) >= 6 and len(world.shapes) >= 4
    assert world.neutral_colour == "gray"
    assert world.image_size >= 32
    assert Concept("gray", "circle") in world.concepts


def test_every_synonym_and_associated_word_means_one_concept(world):
    assert world.meaning("scarlet disc") == Concept("red", "circle")
    assert world.meaning("crimson circle") == Concept("red", "circle")
    assert world.meaning("apple") == world.meaning("cherry") == Concept("red", "circle")
    assert world.meaning("sun") == Concept("yellow", "circle")
    assert world.meaning("red zebra") is None and world.meaning("zebra") is None
    for concept in world.concepts:
        for phrase in world.phrases(concept):
            assert world.meaning(phrase.text) == concept, phrase


def test_demo_policy_words_are_in_the_world(world):
    from policykit.policy.loader import load_policy

    result = load_policy("policies/demo.yaml")
    policy = getattr(result, "policy", result)
    erase = policy.erase[0]
    assert world.meaning(erase.concept) == Concept("red", "circle")
    assert world.meaning(erase.anchor).colour == world.neutral_colour
    for word in [*erase.synonyms, *erase.associated]:
        assert world.meaning(word) == Concept("red", "circle"), word
    for kept in policy.preserve:
        assert world.meaning(kept.concept) is not None, kept.concept


def test_generator_is_deterministic_and_jittered(world):
    first, second = generate_example(world, 7, 5), generate_example(world, 7, 5)
    assert np.array_equal(first.image, second.image) and first.caption == second.caption
    images, examples = generate_images(world, 7, 48)
    assert images.shape == (48, world.image_size, world.image_size, 3) and images.dtype == np.uint8
    # The same concept is drawn at different places and sizes.
    same = images[[i for i, e in enumerate(examples) if e.concept == examples[0].concept]]
    assert len(same) == 2 and not np.array_equal(same[0], same[1])
    # A plain background: the corners are background colour.
    assert (images[:, 0, 0] == world.background).all()
    assert {e.concept for e in examples} == set(world.concepts)
    assert all(world.meaning(_phrase_of(world, e.caption)) == e.concept for e in examples)


def _phrase_of(world, caption):
    for template in sorted(world.templates, key=len, reverse=True):
        head, tail = template.split("{}")
        if caption.startswith(head) and caption.endswith(tail) and len(caption) > len(head) + len(tail):
            phrase = caption[len(head):len(caption) - len(tail)]
            if world.meaning(phrase) is not None:
                return phrase
    raise AssertionError(f"no template fits {caption!r}")


def test_every_world_word_is_one_token(world, tokenizer):
    for word in world.words():
        assert len(tokenizer.tokenize(word)) == 1, word
    ids = tokenizer("a picture of a crimson disc").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and len(ids) == 8


def test_unknown_words_and_characters_do_not_crash(tokenizer):
    ids = tokenizer("a zebra \u00e9 42 red circle", padding="max_length", max_length=MAX_LENGTH).input_ids
    assert len(ids) == MAX_LENGTH
    assert tokenizer.unk_token_id in ids
    assert tokenizer.unk_token_id not in (tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # as in Stable Diffusion 1.x


def test_learn_merges_is_deterministic():
    words = ["red", "read", "bread", "reed"]
    assert learn_merges(words) == learn_merges(list(reversed(words)))
