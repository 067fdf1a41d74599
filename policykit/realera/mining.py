"""Stage 1: neighbor-concept mining (NCM); the sampler the beyond-concept shell (:mod:`.beyond`) shares.

Around a concept ``t`` we draw perturbations ``eta = rho * u``: ``u`` a
uniform random unit direction (a normalized Gaussian), ``rho`` uniform in
``[low * ||t||, high * ||t||]``. Mining uses ``[0, radius]`` and rejects
samples with ``cos(t, t + eta) < min_cosine``; the shell uses
``(radius, beyond_radius]`` and, by default, no cosine floor (the floor bounds
what is *erased*; a preserved sample may lie anywhere outside the radius).

Spaces (docs/method.md leaves the choice to the quality benchmark)
    ``token``: ``t`` is the concept's rows of the text encoder's token-embedding
    table, flattened (all of its tokens form one vector, so ``||t||`` is the
    Frobenius norm of the rows); each perturbed prompt is encoded again. For
    SDXL the table is both encoders' tables side by side
    (:meth:`~policykit.models.text.TextModel.token_table`), so a sample moves
    the concept in both encoders' spaces at one joint radius.
    ``text``: ``t`` is the encoder output at the concept's positions (span and
    leak, see :mod:`policykit.realera.prompts`), flattened; no extra encoder
    passes.
    Either way a sample is returned as encoder outputs at the concept
    positions, paired with the anchor prompt's outputs at the partner
    positions, plus the full ``(S, d)`` conditioning (for noise alignment).

Determinism
    Every (seed, concept, template, purpose) gets its own ``torch.Generator``
    seeded from a sha256 of those values, and samples are drawn on the CPU in
    float64, so results do not depend on template order, batch size or device.

Rejection
    Rounds of candidates are drawn until ``count`` are accepted or
    ``max_rounds`` rounds have run (round ``k`` draws ``need * 2**k``
    candidates, at most 64 x ``need``). The acceptance rate is reported; a
    shortfall returns fewer samples rather than failing, and ``shortfall`` says
    how many.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from policykit.realera.encoding import SPACES, MinedSamples, TemplateSamples, encode_ids
from policykit.realera.prompts import DEFAULT_LEAK_PADDING, align_with_anchor, tokenize

if TYPE_CHECKING:
    import torch

    from policykit.models.text import TextModel

MAX_ROUNDS = 12


# ---------------------------------------------------------------- sampling

def stream_generator(seed: int, *parts: Any) -> "torch.Generator":
    """A CPU generator seeded from ``seed`` and ``parts`` (order-independent across templates)."""
    import torch

    from policykit.hashing import derived_seed

    return torch.Generator().manual_seed(derived_seed(repr((seed,) + parts)))


@dataclass
class Perturbations:
    """Accepted offsets ``eta`` (``(n, D)``, float64, CPU) and how they were drawn."""

    eta: "torch.Tensor"
    relative_radius: "torch.Tensor"
    cosine: "torch.Tensor"
    drawn: int
    shortfall: int


def sample_perturbations(t: "torch.Tensor", count: int, low: float, high: float, generator: "torch.Generator",
                         min_cosine: float | None = None, max_rounds: int = MAX_ROUNDS) -> Perturbations:
    """Draw ``count`` offsets around the flat vector ``t`` with ``low < rho/||t|| <= high``.

    Uniform direction, uniform ``rho``; samples with ``cos(t, t + eta) <
    min_cosine`` are rejected and redrawn in bounded rounds (module docstring).
    """
    import torch

    if not 0 <= low < high:
        raise ValueError(f"need 0 <= low < high for the radius range, got ({low}, {high}]")
    t = t.detach().reshape(-1).to("cpu", torch.float64)
    norm = t.norm()
    if norm == 0:
        raise ValueError("cannot perturb a zero embedding relative to its norm")
    kept_eta, kept_rel, kept_cos = [], [], []
    drawn, need = 0, count
    for round_ in range(max_rounds):
        if need <= 0:
            break
        n = need * min(2 ** round_, 64)
        u = torch.randn(n, t.numel(), generator=generator, dtype=torch.float64)
        u = u / u.norm(dim=1, keepdim=True)
        # (low, high]: the shell must exclude its inner edge, the radius itself
        rel = high - (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)
        eta = u * (rel * norm)[:, None]
        moved = t + eta
        cos = (moved @ t) / (moved.norm(dim=1) * norm).clamp_min(1e-300)
        ok = torch.ones(n, dtype=torch.bool) if min_cosine is None else cos >= min_cosine
        idx = ok.nonzero().flatten()[:need]
        drawn += n
        kept_eta.append(eta[idx])
        kept_rel.append(rel[idx])
        kept_cos.append(cos[idx])
        need -= idx.numel()
    empty = torch.zeros(0, dtype=torch.float64)
    return Perturbations(
        eta=torch.cat(kept_eta) if kept_eta else torch.zeros(0, t.numel(), dtype=torch.float64),
        relative_radius=torch.cat(kept_rel) if kept_rel else empty,
        cosine=torch.cat(kept_cos) if kept_cos else empty,
        drawn=drawn, shortfall=max(need, 0))


# ---------------------------------------------------------------- mining

def mine_samples(text: "TextModel", templates: Sequence[str], concept: str, anchor: str, *, count: int,
                 low: float, high: float, seed: int, space: str = "token", min_cosine: float | None = None,
                 leak_padding: int | None = DEFAULT_LEAK_PADDING, batch_size: int = 32, purpose: str = "neighbors") -> MinedSamples:
    """Draw ``count`` samples per template with ``low < rho/||t|| <= high`` and encode them.

    ``purpose`` only separates random streams (``"neighbors"`` vs ``"beyond"``).
    """
    import torch

    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    result = MinedSamples(space=space, low=low, high=high)
    for template in templates:
        aligned = align_with_anchor(text.tokenizer, template, concept, anchor, leak_padding)
        generator = stream_generator(seed, purpose, space, concept, template)
        ids = tokenize(text.tokenizer, [aligned.concept.prompt, aligned.anchor.prompt])
        base = encode_ids(text, ids.input_ids, ids.attention_mask).float()
        positions, partners = list(aligned.concept_positions), list(aligned.anchor_positions)
        anchors = base[1, partners]
        if space == "token":
            span = list(aligned.concept.span)
            t = text.token_rows(ids.input_ids[0, span])
        else:
            t = base[0, positions]
        drawn = sample_perturbations(t, count, low, high, generator, min_cosine)
        eta = drawn.eta.to(device=base.device, dtype=torch.float32).reshape(-1, *t.shape)
        sequences = []
        for i in range(0, eta.shape[0], batch_size):
            chunk = eta[i:i + batch_size]
            if space == "token":
                offset = torch.zeros(chunk.shape[0], text.length, text.token_width, device=base.device)
                offset[:, span] = chunk
                n = chunk.shape[0]
                seq = encode_ids(text, ids.input_ids[:1].expand(n, -1), ids.attention_mask[:1].expand(n, -1),
                                 token_offset=offset).float()
            else:
                seq = base[0].expand(chunk.shape[0], -1, -1).clone()
                seq[:, positions] += chunk
            sequences.append(seq)
        sequences = torch.cat(sequences) if sequences else base[:0]
        result.templates.append(TemplateSamples(
            aligned=aligned, embeddings=sequences[:, positions], anchors=anchors, sequences=sequences,
            anchor_sequence=base[1],
            relative_radius=drawn.relative_radius, cosine=drawn.cosine, drawn=drawn.drawn,
            shortfall=drawn.shortfall))
    return result


def mine_neighbors(text: "TextModel", templates: Sequence[str], concept: str, anchor: str, *, count: int,
                   radius: float, seed: int, min_cosine: float | None = None, space: str = "token",
                   leak_padding: int | None = DEFAULT_LEAK_PADDING, batch_size: int = 32) -> MinedSamples:
    """Stage 1: ``count`` neighbors per template with ``rho/||t|| <= radius`` and the cosine floor."""
    return mine_samples(text, templates, concept, anchor, count=count, low=0.0, high=radius,
                        seed=seed, space=space, min_cosine=min_cosine, leak_padding=leak_padding,
                        batch_size=batch_size, purpose="neighbors")


# ---------------------------------------------------------------- the stage

def run(plan, pipeline, settings, *, leak_padding: int | None, neighbor_mass: float,
        batch_size: int = 32):
    """Stage 1 on a plan: neighbors of every erased phrase at its templates, paired with the anchor.

    ``settings`` is the plan's :class:`~policykit.realera.settings.MiningSettings`; radius, samples,
    cosine floor and space are each entry's. All of one phrase's neighbors at one template weigh
    together ``neighbor_mass`` times the phrase (each ``neighbor_mass * strength / samples``).
    Returns :class:`~policykit.realera.encoding.ErasePairs` whose ``info`` has the acceptance rate
    and what each radius covers (:func:`policykit.realera.conflicts.plan_coverage`, for the audit).
    """
    from policykit.models.text import text_model
    from policykit.realera.conflicts import plan_coverage
    from policykit.realera.encoding import PairCollector, erased_phrases

    text = text_model(pipeline)
    collector = PairCollector(text.width, text.sequence_length)
    drawn = accepted = shortfall = 0
    for p in erased_phrases(plan):
        n = p.neighbors
        samples = mine_neighbors(text, p.templates, p.phrase, p.anchor,
                                 count=n.samples, radius=n.radius, seed=settings.seed, min_cosine=n.min_cosine,
                                 space=n.space, leak_padding=leak_padding, batch_size=batch_size)
        collector.add(samples, neighbor_mass * p.strength / max(1, n.samples))
        drawn, accepted, shortfall = drawn + samples.drawn, accepted + samples.count, shortfall + samples.shortfall
    coverage = [c.to_dict() for c in plan_coverage(plan, text)]
    pairs = collector.pairs()
    pairs.info = {"neighbors": accepted, "acceptance_rate": round(accepted / drawn, 4) if drawn else 1.0,
                  "shortfall": shortfall, "erase_rows": int(pairs.rows.shape[0]),
                  "covered_phrases": sum(len([p for p in c["phrases"] if p["inside"]]) for c in coverage),
                  "coverage": coverage}
    return pairs
