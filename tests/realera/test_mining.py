"""Neighbor mining and the beyond-concept shell on the tiny random pipeline."""

import pytest
import torch

from policykit.realera.beyond import mine_beyond
from policykit.realera.conflicts import phrase_distances, tokens_within_radius
from policykit.realera.encoding import encode_concept, encode_prompts
from policykit.realera.mining import mine_neighbors, sample_perturbations, stream_generator
from policykit.realera.prompts import locate_concept
from policykit.models.text import single_encoder

TEMPLATES = ["a photo of {}", "{} in a forest"]


def test_perturbations_respect_radius_and_cosine():
    t = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    drawn = sample_perturbations(t, 200, 0.0, 0.8, stream_generator(1, "x"), min_cosine=0.8)
    assert drawn.eta.shape == (200, 96) and drawn.shortfall == 0
    flat = t.reshape(-1).double()
    rel = drawn.eta.norm(dim=1) / flat.norm()
    assert torch.allclose(rel, drawn.relative_radius) and float(rel.max()) <= 0.8 + 1e-9
    moved = flat + drawn.eta
    cos = moved @ flat / (moved.norm(dim=1) * flat.norm())
    assert float(cos.min()) >= 0.8 and torch.allclose(cos, drawn.cosine)
    # cos >= 0.8 cuts rho at about 0.75 ||t|| in high dimension: some draws are rejected
    assert 200 < drawn.drawn
    # directions are spread out, not one repeated direction
    u = drawn.eta / drawn.eta.norm(dim=1, keepdim=True)
    assert float(u.mean(0).norm()) < 0.25


def test_shell_excludes_the_radius_and_shortfall_is_reported():
    t = torch.ones(16)
    shell = sample_perturbations(t, 50, 0.5, 1.0, stream_generator(0, "b"))
    assert float(shell.relative_radius.min()) > 0.5 and float(shell.relative_radius.max()) <= 1.0
    impossible = sample_perturbations(t, 5, 0.9, 1.0, stream_generator(0, "c"), min_cosine=0.999, max_rounds=3)
    assert impossible.eta.shape[0] == 0 and impossible.shortfall == 5 and impossible.drawn == 5 + 10 + 20


@pytest.mark.parametrize("space", ["token", "text"])
def test_mining_is_deterministic_and_paired_with_anchor(tiny_pipe, space):
    enc, tok = tiny_pipe.text_encoder, tiny_pipe.tokenizer
    kwargs = dict(count=6, radius=0.5, seed=3, min_cosine=0.5, space=space, leak_padding=2)
    a = mine_neighbors(single_encoder(enc, tok), TEMPLATES, "mickey mouse", "", **kwargs)
    b = mine_neighbors(single_encoder(enc, tok), TEMPLATES[::-1], "mickey mouse", "", batch_size=4, **kwargs)
    assert a.count == 12 and a.acceptance_rate == 1.0  # 0.5 radius never breaks cos >= 0.5 here
    assert torch.allclose(a.templates[0].embeddings, b.templates[1].embeddings, atol=1e-5)
    c = mine_neighbors(single_encoder(enc, tok), TEMPLATES, "mickey mouse", "", **{**kwargs, "seed": 4})
    assert not torch.allclose(a.templates[0].embeddings, c.templates[0].embeddings)

    for t in a.templates:
        positions = list(t.aligned.concept_positions)
        assert t.embeddings.shape == (6, len(positions), 32)
        assert torch.equal(t.sequences[:, positions], t.embeddings)
        anchor = encode_prompts(single_encoder(enc, tok), [t.aligned.anchor.prompt])[0]
        assert torch.allclose(t.anchors, anchor[list(t.aligned.anchor_positions)])
        concept = encode_prompts(single_encoder(enc, tok), [t.aligned.concept.prompt])[0]
        moved = (t.embeddings - concept[positions]).flatten(1).norm(dim=1)
        assert float(moved.min()) > 0  # every sample differs from the concept itself
        before = positions[0]
        # causal encoder: positions before the concept never change
        assert torch.allclose(t.sequences[:, :before], concept[:before].expand(6, -1, -1), atol=1e-5)
    seqs, anchor_seqs = a.conditioning_pairs()
    assert seqs.shape == anchor_seqs.shape == (12, 16, 32)
    assert torch.equal(anchor_seqs[0], encode_prompts(single_encoder(enc, tok), [a.templates[0].aligned.anchor.prompt])[0])
    pairs = list(a.erase_pairs())
    assert len(pairs) == 2 and pairs[0][0].shape == pairs[0][1].shape
    assert a.embedding_rows().shape[1] == 32


def test_text_space_perturbs_only_concept_positions_within_radius(tiny_pipe):
    enc, tok = tiny_pipe.text_encoder, tiny_pipe.tokenizer
    mined = mine_neighbors(single_encoder(enc, tok), TEMPLATES[:1], "cat", "dog", count=20, radius=0.3, seed=0, space="text",
                           leak_padding=1)
    t = mined.templates[0]
    concept = encode_prompts(single_encoder(enc, tok), [t.aligned.concept.prompt])[0]
    positions = list(t.aligned.concept_positions)
    others = [i for i in range(concept.shape[0]) if i not in positions]
    assert torch.equal(t.sequences[:, others], concept[others].expand(20, -1, -1))
    rel = (t.embeddings - concept[positions]).flatten(1).norm(dim=1) / concept[positions].norm()
    assert float(rel.max()) <= 0.3 + 1e-5
    assert torch.allclose(rel.double(), t.relative_radius, atol=1e-5)


def test_beyond_shell_lies_between_radius_and_beyond(tiny_pipe):
    enc, tok = tiny_pipe.text_encoder, tiny_pipe.tokenizer
    shell = mine_beyond(single_encoder(enc, tok), TEMPLATES, "cat", "", count=10, radius=0.2, beyond_radius=None, seed=0)
    rel = torch.cat([t.relative_radius for t in shell.templates])
    assert rel.numel() == 20 and float(rel.min()) > 0.2 and float(rel.max()) <= 0.4
    near = mine_neighbors(single_encoder(enc, tok), TEMPLATES, "cat", "", count=10, radius=0.2, seed=0)
    assert not torch.allclose(shell.templates[0].embeddings, near.templates[0].embeddings)
    with pytest.raises(ValueError):
        mine_beyond(single_encoder(enc, tok), TEMPLATES, "cat", "", count=1, radius=0.2, beyond_radius=0.1, seed=0)


def test_tokens_within_radius_are_exactly_the_near_rows(tiny_pipe):
    enc, tok = tiny_pipe.text_encoder, tiny_pipe.tokenizer
    table = enc.get_input_embeddings().weight.detach().double()
    located = locate_concept(tok, "a photo of {}", "cat")
    cat = located.input_ids[located.span[0]]
    rel = (table - table[cat]).norm(dim=1) / table[cat].norm()
    radius = float(rel.sort().values[6])  # the concept itself plus a handful of tokens
    covered = tokens_within_radius(single_encoder(enc, tok), located, radius, limit=1000)
    expected = {v for v in (rel <= radius).nonzero().flatten().tolist() if v != cat and v not in tok.all_special_ids}
    assert {c.token_id for c in covered} == expected and len(expected) >= 3
    assert [c.relative_distance for c in covered] == sorted(c.relative_distance for c in covered)
    assert tokens_within_radius(single_encoder(enc, tok), located, radius, min_cosine=1.0) == []


@pytest.mark.parametrize("space", ["token", "text"])
def test_phrase_distances(tiny_pipe, space):
    enc, tok = tiny_pipe.text_encoder, tiny_pipe.tokenizer
    got = phrase_distances(single_encoder(enc, tok), "a photo of {}", "cat", ["cat", "dog", "mickey mouse"], radius=1e-6, space=space)
    assert got[0].relative_distance == pytest.approx(0, abs=1e-6) and got[0].inside
    assert got[1].relative_distance > 0.1 and not got[1].inside
    assert got[2].relative_distance > 0.1 and not got[2].inside


def test_encode_concept_is_the_unperturbed_sample(tiny_pipe):
    enc, tok = tiny_pipe.text_encoder, tiny_pipe.tokenizer
    exact = encode_concept(single_encoder(enc, tok), TEMPLATES, "mickey mouse", "a cat", leak_padding=2)
    assert exact.count == 2 and exact.acceptance_rate == 1.0
    for t in exact.templates:
        full = encode_prompts(single_encoder(enc, tok), [t.aligned.concept.prompt, t.aligned.anchor.prompt])
        assert torch.equal(t.sequences[0], full[0])
        assert torch.equal(t.embeddings[0], full[0][list(t.aligned.concept_positions)])
        assert torch.equal(t.anchors, full[1][list(t.aligned.anchor_positions)])
    # a tiny radius gives neighbors next to the exact concept
    near = mine_neighbors(single_encoder(enc, tok), TEMPLATES, "mickey mouse", "a cat", count=3, radius=1e-4, seed=0, leak_padding=2)
    assert torch.allclose(near.templates[0].embeddings, exact.templates[0].embeddings.expand(3, -1, -1), atol=1e-3)


def test_mining_with_an_openclip_style_tokenizer(openclip_tokenizer, openclip_text_encoder):
    enc = openclip_text_encoder
    mined = mine_neighbors(single_encoder(enc, openclip_tokenizer), TEMPLATES, "mickey mouse", "", count=4, radius=0.4, seed=0,
                           leak_padding=3)
    for t in mined.templates:
        c = t.aligned.concept
        # span, EOS, then three "!" padding positions; the anchor side ends at its own EOS and padding
        assert [c.input_ids[i] for i in c.leak] == [openclip_tokenizer.eos_token_id] + [0] * 3
        assert t.embeddings.shape == (4, 2 + 4, 16)
        assert t.aligned.anchor_positions[-4:] == t.aligned.anchor.leak
