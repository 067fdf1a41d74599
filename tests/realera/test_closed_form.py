"""Closed-form refinement against a float64 least-squares reference, and on the tiny pipeline."""

import copy

import pytest
import torch

from policykit.realera.edit import apply_weights
from policykit.realera.closed_form import (ClosedFormSystem, closed_form_refine,
                                           find_cross_attention_projections, refine_weights)
from policykit.realera.prompts import align_with_anchor, locate_concept, tokenize
from policykit.models.text import single_encoder


def _least_squares(w, e, e_star, alpha, p, beta, lam):
    """W' minimizing the method's objective, one layer, as a stacked least-squares problem."""
    d = w.shape[1]
    a, b = alpha.sqrt()[:, None], beta.sqrt()[:, None]
    x = torch.cat([a * e, b * p, lam ** 0.5 * torch.eye(d, dtype=torch.float64)])
    y = torch.cat([a * (e_star @ w.T), b * (p @ w.T), lam ** 0.5 * w.T])
    return torch.linalg.lstsq(x, y).solution.T


@pytest.mark.parametrize("n_erase,n_preserve,lam", [(5, 7, 0.1), (40, 3, 1e-3), (2, 0, 10.0)])
def test_matches_per_layer_least_squares(n_erase, n_preserve, lam):
    g = torch.Generator().manual_seed(n_erase)
    d = 12
    e, e_star = torch.randn(n_erase, d, generator=g), torch.randn(n_erase, d, generator=g)
    p = torch.randn(n_preserve, d, generator=g)
    alpha, beta = torch.rand(n_erase, generator=g) + 0.5, torch.rand(n_preserve, generator=g) + 0.5
    layers = {f"l{i}": torch.nn.Linear(d, out, bias=False) for i, out in enumerate((3, 12, 20))}
    for layer in layers.values():
        torch.nn.init.normal_(layer.weight, generator=g)

    system = ClosedFormSystem(d)
    # in two chunks, to check accumulation
    system.add_erase(e[: n_erase // 2], e_star[: n_erase // 2], alpha[: n_erase // 2])
    system.add_erase(e[n_erase // 2:], e_star[n_erase // 2:], alpha[n_erase // 2:])
    system.add_preserve(p, beta)
    edited = refine_weights(layers, system.right_factor(lam))

    for name, layer in layers.items():
        w = layer.weight.detach().double()
        reference = _least_squares(w, e.double(), e_star.double(), alpha.double(), p.double(), beta.double(), lam)
        got = edited[f"{name}.weight"]
        assert got.dtype == torch.float64  # W R stays in float64: the stage takes W R - W from it
        assert (got - reference).norm() / reference.norm() < 1e-6


def test_rows_are_accumulated_in_chunks_with_the_same_result(monkeypatch):
    """Large row counts go in CHUNK_ROWS at a time (bounded float64 copies); the Grams do not change."""
    import policykit.realera.closed_form as closed_form

    g = torch.Generator().manual_seed(3)
    e, e_star, p = (torch.randn(50, 8, generator=g) for _ in range(3))
    alpha, beta = torch.rand(50, generator=g), torch.rand(50, generator=g)
    whole = ClosedFormSystem(8)
    whole.add_erase(e, e_star, alpha)
    whole.add_preserve(p, beta)
    monkeypatch.setattr(closed_form, "CHUNK_ROWS", 7)
    chunked = ClosedFormSystem(8)
    chunked.add_erase(e, e_star, alpha)
    chunked.add_preserve(p, beta)
    for name in ("cross", "erase", "preserve"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), rtol=1e-12, atol=1e-12)
    assert (chunked.n_erase, chunked.n_preserve) == (50, 50)


def test_system_rejects_bad_input():
    system = ClosedFormSystem(4)
    with pytest.raises(ValueError, match="width"):
        system.add_preserve(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="shape"):
        system.add_erase(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="lambda"):
        system.right_factor(0.0)


def test_finds_every_cross_attention_projection(tiny_pipe):
    found = find_cross_attention_projections(tiny_pipe.unet)
    attn2 = [n for n, _ in tiny_pipe.unet.named_modules() if n.endswith("attn2")]
    assert sorted(found) == sorted(f"{n}.{t}" for n in attn2 for t in ("to_k", "to_v"))
    assert all(layer.in_features == tiny_pipe.text_encoder.config.hidden_size for layer in found.values())
    assert sorted(find_cross_attention_projections(tiny_pipe.unet, targets=["to_v"])) == \
        sorted(f"{n}.to_v" for n in attn2)
    with pytest.raises(ValueError):
        find_cross_attention_projections(tiny_pipe.unet, targets=["to_q"])


def _encode(pipe, prompts):
    ids = tokenize(pipe.tokenizer, prompts).input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def test_erased_map_to_anchor_and_preserved_keep_theirs(tiny_pipe):
    tok = tiny_pipe.tokenizer
    templates = ["a photo of {}", "{} in a forest"]
    erase, preserve = [], []
    for template in templates:
        aligned = align_with_anchor(tok, template, "mickey mouse", "a cat", leak_padding=2)
        c, a = _encode(tiny_pipe, [aligned.concept.prompt, aligned.anchor.prompt])
        erase.append((c[list(aligned.concept_positions)], a[list(aligned.anchor_positions)], 1.0))
        kept = locate_concept(tok, template, "red circle", leak_padding=2)
        preserve.append((_encode(tiny_pipe, [kept.prompt])[0][list(kept.positions)], 1.0))
    unet = copy.deepcopy(tiny_pipe.unet)
    before = {n: l.weight.detach().clone() for n, l in find_cross_attention_projections(unet).items()}
    weights = closed_form_refine(unet, erase, preserve, lam=1e-5)
    assert set(weights) == {f"{n}.weight" for n in before}
    for name, w in before.items():  # the solver does not touch the model
        assert torch.equal(find_cross_attention_projections(unet)[name].weight, w)

    apply_weights(unet, weights)
    layers = find_cross_attention_projections(unet)
    e = torch.cat([x[0] for x in erase])
    e_star = torch.cat([x[1] for x in erase])
    p = torch.cat([x[0] for x in preserve])
    assert e.shape[0] + p.shape[0] <= e.shape[1]  # feasible: the edit can be exact
    for name, layer in layers.items():
        w, w_new = before[name], layer.weight.detach()
        change = (e @ w.T - e_star @ w.T).norm()
        assert (e @ w_new.T - e_star @ w.T).norm() < 1e-3 * change
        assert (p @ w_new.T - p @ w.T).norm() < 1e-3 * change
        assert (w_new - w).norm() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_layers_are_solved_in_float64_and_cast_back(dtype):
    g = torch.Generator().manual_seed(7)
    d = 16
    layer = torch.nn.Linear(d, 8, bias=False).to(dtype)
    e, e_star, p = torch.randn(4, d, generator=g), torch.randn(4, d, generator=g), torch.randn(3, d, generator=g)
    system = ClosedFormSystem(d)
    system.add_erase(e.to(dtype), e_star.to(dtype), 1.0)
    system.add_preserve(p.to(dtype), 2.0)
    edited = refine_weights({"l": layer}, system.right_factor(0.5))["l.weight"].to(dtype)
    w = layer.weight.detach().double()
    reference = _least_squares(w, e.to(dtype).double(), e_star.to(dtype).double(), torch.ones(4, dtype=torch.float64),
                               p.to(dtype).double(), torch.full((3,), 2.0, dtype=torch.float64), 0.5)
    # only the final rounding to the layer's dtype separates the result from the float64 reference:
    # every entry is as close to it as the reference rounded to that dtype
    rounding = (reference.to(dtype).double() - reference).abs()
    assert bool(((edited.double() - reference).abs() <= rounding + 1e-9).all())
    assert float(rounding.max()) > 0  # the check is not vacuous: rounding does happen


def test_apply_weights_reaches_through_a_lora_wrapper(tiny_pipe):
    from peft import LoraConfig

    unet = copy.deepcopy(tiny_pipe.unet)
    names = sorted(find_cross_attention_projections(unet))
    unet.add_adapter(LoraConfig(r=2, target_modules=names))
    found = find_cross_attention_projections(unet)
    assert sorted(found) == names  # the wrapped projections are still found, as their base Linear
    new = {f"{n}.weight": torch.full_like(layer.weight, 0.5) for n, layer in found.items()}
    apply_weights(unet, new)
    assert all(bool((layer.weight == 0.5).all()) for layer in find_cross_attention_projections(unet).values())
    with pytest.raises(KeyError):
        apply_weights(unet, {"nope.weight": torch.zeros(1)})


def test_mined_neighbors_generalize_and_the_shell_is_kept(tiny_pipe):
    """The point of stages 1-2, at the level of the closed form (text space, fixed seeds).

    Erasing mined neighbors brings *held-out* neighbors (another seed) closer to
    the anchor than erasing the concept alone (UCE-like); adding the shell to the
    preserves moves held-out shell samples less.
    """
    from policykit.realera.beyond import mine_beyond
    from policykit.realera.encoding import encode_concept
    from policykit.realera.mining import mine_neighbors

    enc, tok = tiny_pipe.text_encoder, tiny_pipe.tokenizer
    templates, concept, anchor = ["a photo of {}", "{} in a forest"], "mickey mouse", "a cat"
    common = dict(leak_padding=2, space="text")
    exact = encode_concept(single_encoder(enc, tok), templates, concept, anchor, leak_padding=2)
    kept = encode_concept(single_encoder(enc, tok), templates, "red circle", "red circle", leak_padding=2)
    mined = mine_neighbors(single_encoder(enc, tok), templates, concept, anchor, count=20, radius=0.3, seed=0, min_cosine=0.5, **common)
    held_out = mine_neighbors(single_encoder(enc, tok), templates, concept, anchor, count=20, radius=0.3, seed=99, min_cosine=0.5,
                              **common)
    shell = mine_beyond(single_encoder(enc, tok), templates, concept, anchor, count=20, radius=0.3, beyond_radius=None, seed=0, **common)
    shell_held_out = mine_beyond(single_encoder(enc, tok), templates, concept, anchor, count=20, radius=0.3, beyond_radius=None,
                                 seed=98, **common)
    layers = find_cross_attention_projections(tiny_pipe.unet)

    def solve(neighbors, beyond):
        system = ClosedFormSystem(32)
        # without neighbors the concept gets their weight too, so only *where* the erase rows lie differs
        for e, e_star in exact.erase_pairs():
            system.add_erase(e, e_star, 1.0 if neighbors else 21.0)
        for e, e_star in (mined.erase_pairs() if neighbors else []):
            system.add_erase(e, e_star)
        system.add_preserve(kept.embedding_rows())
        if beyond:
            system.add_preserve(shell.embedding_rows())
        return system.right_factor(0.1)

    weights = [layer.weight.detach().double() for layer in layers.values()]

    def residual(factor, samples):  # distance to the anchor's projections, relative to before the edit
        e = torch.cat([x.reshape(-1, 32) for x, _ in samples.erase_pairs()]).double()
        a = torch.cat([y.reshape(-1, 32) for _, y in samples.erase_pairs()]).double()
        after = sum((e @ (w @ factor).T - a @ w.T).norm() ** 2 for w in weights)
        before = sum((e @ w.T - a @ w.T).norm() ** 2 for w in weights)
        return float((after / before).sqrt())

    def drift(factor, samples):  # how far preserved projections move, relative to their size
        p = samples.embedding_rows().double()
        moved = sum((p @ (w @ factor).T - p @ w.T).norm() ** 2 for w in weights)
        return float((moved / sum((p @ w.T).norm() ** 2 for w in weights)).sqrt())

    uce, ncm, ncm_bcr = solve(False, False), solve(True, False), solve(True, True)
    generality = residual(ncm, held_out), residual(uce, held_out)
    assert generality[0] < 0.75 * generality[1], generality
    shell_drift = drift(ncm_bcr, shell_held_out), drift(ncm, shell_held_out)
    assert shell_drift[0] < 0.75 * shell_drift[1], shell_drift
