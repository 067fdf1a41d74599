"""Vocabulary preservation: phrases of the model's own vocabulary preserved by the closed form."""

import pytest
import torch

from policykit.models.text import text_model
from policykit.plan import compile_plan
from policykit.policy.schema import Policy
from policykit.realera import engine
from policykit.realera.closed_form import find_cross_attention_projections
from policykit.realera.encoding import encode_concept, encode_vocabulary, vocabulary_phrases
from policykit.testing import build_tiny_pipeline

OPTIONS = engine.EngineOptions(latents_per_prompt=1, latent_steps=2)


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline()


def _plan(method="realera-cf", **closed_form):
    policy = {
        "apiVersion": "policykit/v1alpha1", "kind": "ErasurePolicy",
        "metadata": {"name": "t", "version": "1.0.0"}, "base_model": {"id": "builtin:shapes"},
        "defaults": {"templates": ["a photo of {}"], "neighbors": {"samples": 0, "beyond_samples": 0}},
        "erase": [{"concept": "mickey mouse", "anchor": "cartoon"}],
        "training": {"method": method, "closed_form": closed_form},
    }
    return compile_plan(Policy.model_validate(policy))


def test_phrases_are_drawn_from_the_vocabulary_deterministically(pipe):
    tokenizer = text_model(pipe).tokenizer
    words = vocabulary_phrases(tokenizer, 50, seed=3, exclude=["mickey mouse"])
    assert len(words) == 50 and len(set(words)) == 50
    assert words == vocabulary_phrases(tokenizer, 50, seed=3, exclude=["mickey mouse"])
    assert words != vocabulary_phrases(tokenizer, 50, seed=4, exclude=["mickey mouse"])
    specials = set(tokenizer.all_special_tokens)
    for word in words:
        assert word.strip() == word and word
        assert not any(s in word for s in specials)
        assert 1 <= len(tokenizer(word).input_ids) - 2 <= 3 * 2  # a few tokens (re-tokenizing may split)
    first = vocabulary_phrases(tokenizer, 10, seed=0)
    assert vocabulary_phrases(tokenizer, 11, seed=0, exclude=[first[0]])[:9] == first[1:10]


def test_batched_rows_are_the_phrase_rows(pipe):
    text = text_model(pipe)
    words = vocabulary_phrases(text.tokenizer, 5, seed=0)
    templates = ["a photo of {}", "{} on a table"]
    rows, sequences = encode_vocabulary(text, templates, words, leak_padding=4)
    one_by_one = torch.cat([encode_concept(text, [t], w, w, leak_padding=4).embedding_rows()
                            for t in templates for w in words])
    assert torch.allclose(rows, one_by_one, atol=1e-6)
    assert sequences.shape == (5, text.sequence_length, text.width)


def test_presets_default_and_policy_override():
    assert _plan("realera").stage("closed_form_refinement").settings.vocabulary_prompts == 256
    assert _plan("realera-cf").stage("closed_form_refinement").settings.vocabulary_weight == 2.0
    for peer in ("uce", "mace"):  # their authors preserve no vocabulary
        assert _plan(peer).stage("closed_form_refinement").settings.vocabulary_prompts == 0
    assert _plan("uce", vocabulary_prompts=32).stage("closed_form_refinement").settings.vocabulary_prompts == 32
    assert _plan("realera", vocabulary_prompts=0).stage("closed_form_refinement").settings.vocabulary_prompts == 0


def _keys_change(pipe, plan, phrase):
    """Relative change of every edited projection's output on ``phrase`` (all positions)."""
    edit = engine.run_plan(plan, pipe, inputs_key="tiny", options=OPTIONS, progress=False, log=lambda line: None)
    x = encode_concept(text_model(pipe), ["{}"], phrase, phrase, leak_padding=None).embedding_rows()
    layers = find_cross_attention_projections(pipe.unet)
    moved = total = 0.0
    for name, linear in layers.items():
        delta = edit.weights[f"{name}.weight"]
        moved += float((x @ delta.T).norm() ** 2)
        total += float((x @ linear.weight.detach().T).norm() ** 2)
    return (moved / total) ** 0.5, next(r for r in edit.records if r.name == "closed_form_refinement").info


@pytest.mark.parametrize("method", ["realera-cf", "uce"])
def test_vocabulary_keeps_unlisted_phrases_in_place(pipe, method):
    """An unrelated phrase the policy never names moves less when the vocabulary is preserved."""
    without, info_without = _keys_change(pipe, _plan(method, vocabulary_prompts=0), "a wooden chair")
    with_vocab, info_with = _keys_change(pipe, _plan(method, vocabulary_prompts=256), "a wooden chair")
    assert info_with["preserve_rows"] > info_without["preserve_rows"]
    assert with_vocab < 0.7 * without
