"""The U-Net stages' text-state cache gives the bytes of encoding every batch in full; heads are a knob."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    from policykit.emblems.tokenizer import MAX_LENGTH, build_tokenizer
    from policykit.emblems.world import load_world

    world = load_world()
    tokenizer = build_tokenizer(world.words(), list(world.syllables))
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=MAX_LENGTH,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return world, tokenizer, CLIPTextModel(config).eval()


def _captions(world, step: int, n: int = 16):
    from policykit.emblems.render import caption_for, generate_images

    _, examples = generate_images(world, 3, 24, start=0)
    rng = np.random.default_rng([0, step])
    return ["" if rng.random() < 0.2 else caption_for(world, examples[i], rng, 0.5, 0.4)[0]
            for i in rng.integers(0, len(examples), n).tolist()]


def test_cached_states_are_the_bytes_of_full_batches(encoder):
    from policykit.emblems.train import TextStates
    from policykit.shapes.train import _tokenize

    world, tokenizer, text_encoder = encoder
    states = TextStates(tokenizer, text_encoder)
    batches = [_captions(world, step) for step in range(6)]
    for captions in batches:
        with torch.no_grad():
            full = text_encoder(_tokenize(tokenizer, captions))[0]
        assert torch.equal(states(captions), full)
    looked_up = sum(len(b) for b in batches)
    assert states.looked_up == looked_up
    assert states.encoded == len({c for b in batches for c in b}) < looked_up  # repeats were not re-encoded


def test_the_cache_keeps_at_most_its_capacity_and_stays_exact(encoder):
    from policykit.emblems.train import TextStates
    from policykit.shapes.train import _tokenize

    world, tokenizer, text_encoder = encoder
    states = TextStates(tokenizer, text_encoder, capacity=5)
    for step in range(4):
        captions = _captions(world, step)
        with torch.no_grad():
            full = text_encoder(_tokenize(tokenizer, captions))[0]
        assert torch.equal(states(captions), full)
        assert len(states.states) <= 5


def test_heads_is_the_attention_head_count_at_the_same_parameters():
    from policykit.emblems.architecture import build_unet

    eight, two = build_unet(12, (32, 64)), build_unet(12, (32, 64), heads=2)
    assert eight.down_blocks[0].attentions[0].transformer_blocks[0].attn1.heads == 8
    assert two.down_blocks[0].attentions[0].transformer_blocks[0].attn1.heads == 2
    assert two.down_blocks[1].attentions[0].transformer_blocks[0].attn2.heads == 2
    assert sum(p.numel() for p in eight.parameters()) == sum(p.numel() for p in two.parameters())
