"""Concept positions and anchor alignment on SD 1.x- and SD 2.x-style CLIP tokenizers."""

import pytest

from policykit.realera.prompts import (PromptError, align_with_anchor, build_prompts, fill_template,
                                       locate_concept)


def _tokens(tokenizer, located, positions):
    return [tokenizer.convert_ids_to_tokens(located.input_ids[i]) for i in positions]


def test_fill_template_normalizes_spaces_for_empty_anchor():
    assert fill_template("a photo of {}", "") == "a photo of"
    assert fill_template("{} in a forest", "a cat") == "a cat in a forest"
    assert build_prompts(["a {}", "{}."], "dog") == ["a dog", "dog."]
    with pytest.raises(PromptError):
        fill_template("no slot", "dog")


@pytest.mark.parametrize("template,concept,expected", [
    ("a photo of {}", "mickey mouse", ["mickey</w>", "mouse</w>"]),
    ("{} in a forest", "mickey mouse", ["mickey</w>", "mouse</w>"]),
    ("a painting of {} in the forest", "crimson", ["c", "r", "i", "m", "s", "o", "n</w>"]),
    ("{}", "Cat", ["cat</w>"]),
    ("a photo of {}'s dog", "mouse", ["mouse</w>"]),
])
def test_span_is_exactly_the_concept_tokens(clip_tokenizer, template, concept, expected):
    located = locate_concept(clip_tokenizer, template, concept, leak_padding=2)
    assert _tokens(clip_tokenizer, located, located.span) == expected
    assert located.span == tuple(range(located.span[0], located.span[0] + len(expected)))
    # EOS then two padding positions, EOS right after the last real token of the prompt
    last = min(located.eos + 2, clip_tokenizer.model_max_length - 1)
    assert located.leak == tuple(range(located.eos, last + 1))
    n_real = len(clip_tokenizer(located.prompt)["input_ids"])
    assert located.eos == n_real - 1


def test_eos_found_when_padding_is_not_eos(openclip_tokenizer):
    located = locate_concept(openclip_tokenizer, "a photo of {}", "cat", leak_padding=3)
    assert _tokens(openclip_tokenizer, located, located.span) == ["cat</w>"]
    assert located.input_ids[located.eos] == openclip_tokenizer.eos_token_id
    assert [located.input_ids[i] for i in located.leak[1:]] == [openclip_tokenizer.pad_token_id] * 3


def test_leak_none_runs_to_the_end_and_leak_is_clipped(clip_tokenizer):
    located = locate_concept(clip_tokenizer, "a photo of {}", "cat", leak_padding=None)
    assert located.leak[-1] == clip_tokenizer.model_max_length - 1
    clipped = locate_concept(clip_tokenizer, "a photo of the {} in a forest", "mickey mouse", leak_padding=50)
    assert clipped.leak[-1] == clip_tokenizer.model_max_length - 1


def test_cut_off_concept_is_an_error(clip_tokenizer):
    with pytest.raises(PromptError, match="cut off"):
        locate_concept(clip_tokenizer, "a photo of the a photo of the a photo of the a {}", "mickey mouse")


def test_empty_concept_has_no_span(clip_tokenizer):
    located = locate_concept(clip_tokenizer, "a photo of {}", "")
    assert located.span == ()
    assert _tokens(clip_tokenizer, located, [located.eos - 1]) == ["of</w>"]


def test_alignment_same_length_is_position_by_position(clip_tokenizer):
    aligned = align_with_anchor(clip_tokenizer, "a photo of {}", "cat", "dog", leak_padding=2)
    assert aligned.concept_positions == aligned.anchor_positions == (4, 5, 6, 7)


def test_alignment_to_empty_anchor_maps_every_concept_token_to_anchor_eos(clip_tokenizer):
    aligned = align_with_anchor(clip_tokenizer, "{} in a forest", "mickey mouse", "", leak_padding=2)
    c, a = aligned.concept, aligned.anchor
    assert aligned.concept_positions == c.span + c.leak
    # mickey, mouse -> the anchor's EOS: the empty anchor has no tokens of its own
    assert aligned.anchor_positions[:2] == (a.eos, a.eos)
    assert aligned.anchor_positions[2:] == a.leak


def test_alignment_is_right_aligned_eos_to_eos(clip_tokenizer):
    # concept longer than anchor: leading extra tokens go to the anchor's first token
    aligned = align_with_anchor(clip_tokenizer, "a painting of {}", "crimson", "red cat", leak_padding=1)
    c, a = aligned.concept, aligned.anchor
    pairs = dict(zip(aligned.concept_positions, aligned.anchor_positions))
    assert pairs[c.eos] == a.eos and pairs[c.eos + 1] == a.eos + 1
    assert pairs[c.span[-1]] == a.span[-1]
    assert [pairs[p] for p in c.span[:-2]] == [a.span[0]] * (len(c.span) - 2)
    # anchor longer than concept: the anchor's extra leading tokens are left out
    reverse = align_with_anchor(clip_tokenizer, "a painting of {}", "cat", "mickey mouse", leak_padding=1)
    assert len(reverse.concept_positions) == len(reverse.anchor_positions) == 3
    assert reverse.anchor_positions[0] == reverse.anchor.span[-1]


def test_alignment_cuts_leaks_to_the_same_length(clip_tokenizer):
    # the concept prompt's EOS is 2 positions from the end: both leaks keep 3 positions, not 4
    aligned = align_with_anchor(clip_tokenizer, "a photo of the a photo of the a photo {}", "of mickey", "",
                                leak_padding=3)
    assert len(aligned.concept.leak) == 3 and len(aligned.anchor.leak) == 4
    assert aligned.concept_positions[-3:] == aligned.concept.leak
    assert aligned.anchor_positions[-3:] == aligned.anchor.leak[:3]


def test_token_mixing_template_and_concept_is_in_the_span(clip_tokenizer):
    located = locate_concept(clip_tokenizer, "a photo of {}se", "mou")
    assert _tokens(clip_tokenizer, located, located.span) == ["mouse</w>"]
