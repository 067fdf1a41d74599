"""The peer presets' rows: which positions of which prompt become rows, against layouts written out by hand.

builtin:shapes' tokenizer makes every world word one token and pads with the EOS id to 16 positions, so
"a photo of a red circle" is: 0 BOS, 1 a, 2 photo, 3 of, 4 a, 5 red, 6 circle, 7 EOS, 8-15 padding.
"""

import pytest
import torch

from policykit.realera.peer_rows import mace_positions, uce_positions

L = 16


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import CLIPTokenizerFast

    from policykit.shapes.sampling import MODEL_DIR

    return CLIPTokenizerFast.from_pretrained(str(MODEL_DIR / "tokenizer"))


def _mask(tokenizer, prompt):
    return tokenizer(prompt, padding="max_length", max_length=L).attention_mask


def _ids(tokenizer, prompt):
    return tokenizer(prompt).input_ids


def test_the_fixed_prompts_tokenize_one_token_per_word(tokenizer):
    assert len(_ids(tokenizer, "a photo of a red circle")) == 8  # BOS, 6 words, EOS


def test_uce_rows_are_the_last_word_eos_and_padding_paired_position_for_position(tokenizer):
    old, new = uce_positions(_mask(tokenizer, "a photo of a red circle"), _mask(tokenizer, "a photo of a gray circle"))
    assert old == [6, 7, 8, 9, 10, 11, 12, 13, 14, 15]   # circle, EOS, 8 paddings; "red" (5) is not a row
    assert new == [6, 7, 8, 9, 10, 11, 12, 13, 14, 15]


def test_uce_towards_the_empty_guide_pairs_the_last_word_with_bos(tokenizer):
    old, new = uce_positions(_mask(tokenizer, "red circle"), _mask(tokenizer, " "))
    assert old == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]   # circle, EOS, padding
    assert new == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]     # BOS, EOS, padding; the tail is cut


def test_uce_trims_the_sequence_whose_last_word_comes_earlier(tokenizer):
    # "circle": last word at 1; "a gray circle": at 3. far = 3, so the phrase's rows stop 2 short of the end
    old, new = uce_positions(_mask(tokenizer, "circle"), _mask(tokenizer, "a gray circle"))
    assert old == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert new == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]


def test_mace_keeps_what_the_concept_shares_with_the_anchor_and_leaves_its_own_token_out(tokenizer):
    old, new = mace_positions(_ids(tokenizer, "a photo of a red circle"), _ids(tokenizer, "a photo of a gray circle"), L)
    expected = [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]  # all but "red" (5)
    assert old == expected and new == expected


def test_mace_towards_the_empty_anchor_keeps_bos_and_pairs_padding_from_eos(tokenizer):
    old, new = mace_positions(_ids(tokenizer, "red circle"), _ids(tokenizer, ""), L)
    assert old == [0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]   # BOS, EOS, padding; red and circle left out
    assert new == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]


def test_mace_with_a_template_after_the_concept(tokenizer):
    # "red circle in a photo" -> "gray circle in a photo": BOS, then circle in a photo EOS (common suffix)
    old, new = mace_positions(_ids(tokenizer, "red circle in a photo"), _ids(tokenizer, "gray circle in a photo"), L)
    assert old == new == [0] + list(range(2, 16))


def test_uce_preset_on_a_tiny_pipeline_builds_those_rows(tiny_pipe):
    from policykit.plan import compile_plan
    from policykit.policy.schema import Policy
    from policykit.realera.peer_rows import uce_rows

    policy = Policy.model_validate({
        "apiVersion": "policykit/v1alpha1", "kind": "ErasurePolicy", "metadata": {"name": "p", "version": "1.0.0"},
        "base_model": {"id": "builtin:shapes"}, "erase": [{"concept": "red circle", "anchor": "gray circle"}],
        "preserve": [{"concept": "blue square"}], "training": {"method": "uce"}})
    plan = compile_plan(policy)
    settings = plan.stage("closed_form_refinement").settings
    assert (settings.rows, settings.lambda_, settings.preserve_scale) == ("uce", 0.5, None)
    erase, preserve = uce_rows(plan, tiny_pipe, settings)
    tok = tiny_pipe.tokenizer
    length = tok.model_max_length
    old, new = uce_positions(tok("red circle", padding="max_length", max_length=length).attention_mask,
                             tok("gray circle", padding="max_length", max_length=length).attention_mask)
    assert erase.rows.shape[0] == len(old)
    # every position of "" and of the preserve, each weighing max(0.1, 1/2)
    assert preserve.rows.shape[0] == 2 * length and torch.allclose(preserve.beta, torch.full((2 * length,), 0.5))
