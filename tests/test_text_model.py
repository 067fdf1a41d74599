"""One text-conditioning interface (policykit.models.text) for SD 1.x, SD 2.x and SDXL: it encodes exactly as
the diffusers pipelines do, and unpacks SDXL's pooled embedding and time ids for the U-Net and the pipeline."""

import pytest
import torch

from policykit.models.text import TextModelError, load_text_model, text_model
from policykit.testing import build_tiny_pipeline, build_tiny_sdxl_pipeline

PROMPTS = ["a photo of red circle", "a cat in a forest", ""]


@pytest.fixture(scope="module")
def sdxl():
    torch.set_num_threads(1)
    return build_tiny_sdxl_pipeline()


@pytest.mark.parametrize("pad_token", ["<|endoftext|>", "!"])
def test_sd1_and_sd2_conditionings_are_the_pipelines_own(pad_token):
    pipe = build_tiny_pipeline(pad_token=pad_token)
    text = text_model(pipe)
    assert (text.sequence_length, text.width, text.pooled) == (text.length, 32, False)
    want, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False)
    assert torch.allclose(text.encode_prompts(PROMPTS), want, atol=1e-6)
    assert torch.allclose(text.unconditional(), want[-1:], atol=1e-6)
    assert text.pipeline_inputs(want) == {"prompt_embeds": want}


def test_sdxl_conditioning_is_both_encoders_penultimate_states_and_the_pooled_row(sdxl):
    text = text_model(sdxl)
    length = sdxl.tokenizer.model_max_length
    assert (text.length, text.sequence_length, text.width, text.pooled_width) == (length, length + 1, 80, 40)
    prompt_embeds, _, pooled, _ = sdxl.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=False)
    got = text.encode_prompts(PROMPTS)
    assert got.shape == (3, length + 1, 80)
    # the second tokenizer pads with "!": the ids derived from the first tokenizer's must match its own
    assert torch.allclose(got[:, :length], prompt_embeds, atol=1e-6)
    assert torch.allclose(got[:, length, :40], pooled, atol=1e-6)
    assert torch.count_nonzero(got[:, length, 40:]) == 0
    # SDXL's unconditional branch is zeros (force_zeros_for_empty_prompt), not the encoded ""
    assert sdxl.config.force_zeros_for_empty_prompt and torch.count_nonzero(text.unconditional()) == 0
    unpacked = text.pipeline_inputs(got)
    assert torch.equal(unpacked["prompt_embeds"], got[:, :length])
    assert torch.equal(unpacked["pooled_prompt_embeds"], got[:, length, :40])


def test_sdxl_unet_inputs_match_what_the_pipeline_passes(sdxl):
    text = text_model(sdxl)
    cond = text.encode_prompts(PROMPTS[:2])
    resolution = sdxl.default_sample_size * sdxl.vae_scale_factor
    assert text.resolution == resolution
    want_ids = sdxl._get_add_time_ids((resolution, resolution), (0, 0), (resolution, resolution), torch.float32,
                                      text_encoder_projection_dim=40)
    inputs = text.unet_inputs(cond)
    assert torch.equal(inputs["added_cond_kwargs"]["time_ids"], want_ids.expand(2, -1))
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = sdxl.unet(latents, 500, **inputs).sample
        want = sdxl.unet(latents, 500, encoder_hidden_states=cond[:, :text.length],
                         added_cond_kwargs={"text_embeds": cond[:, text.length, :40],
                                            "time_ids": want_ids.expand(2, -1)}).sample
    assert torch.equal(out, want)


def test_sdxl_token_space_is_both_tables_and_an_offset_moves_each_encoder_by_its_part(sdxl):
    from policykit.realera.prompts import tokenize

    text = text_model(sdxl)
    table = text.token_table()
    assert table.shape == (len(sdxl.tokenizer), 80) and table.dtype == torch.float64
    assert torch.equal(table[:, :32], sdxl.text_encoder.get_input_embeddings().weight.double())
    ids = tokenize(text.tokenizer, ["a photo of red circle"])
    base = text.encode_ids(ids.input_ids)
    offset = torch.zeros(1, text.length, text.token_width)
    offset[0, 4, :32] = 0.5  # the first encoder's part only
    moved = text.encode_ids(ids.input_ids, token_offset=offset)
    assert not torch.allclose(moved[:, :, :32], base[:, :, :32])
    assert torch.equal(moved[:, :, 32:], base[:, :, 32:])  # encoder 2 and the pooled row untouched
    assert torch.equal(text.encode_ids(ids.input_ids, token_offset=torch.zeros_like(offset)), base)


def test_load_text_model_reads_only_the_text_side_and_matches_the_pipeline(tmp_path, sdxl):
    sdxl.save_pretrained(tmp_path / "xl")
    loaded = load_text_model(tmp_path / "xl")
    assert loaded.pooled and loaded.zero_unconditional and loaded.resolution == text_model(sdxl).resolution
    assert torch.allclose(loaded.encode_prompts(PROMPTS), text_model(sdxl).encode_prompts(PROMPTS), atol=1e-6)


def test_sdxl_tokenizers_with_different_vocabularies_are_refused():
    from policykit.models.text import _build
    from policykit.testing import build_clip_tokenizer

    pipe = build_tiny_sdxl_pipeline()
    other = build_clip_tokenizer(pad_token="!")
    other.add_tokens(["zzzextra"])
    with pytest.raises(TextModelError, match="different vocabularies"):
        _build((pipe.tokenizer, other), (pipe.text_encoder, pipe.text_encoder_2), sdxl=True)
