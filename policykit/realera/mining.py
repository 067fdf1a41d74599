"""Stages 1 and 2: neighbor-concept mining (NCM) and the beyond-concept shell (BCR).

Around a concept ``t`` we draw perturbations ``eta = rho * u``: ``u`` a
uniform random unit direction (a normalized Gaussian), ``rho`` uniform in
``[low * ||t||, high * ||t||]``. Mining uses ``[0, radius]`` and rejects
samples with ``cos(t, t + eta) < min_cosine``; the shell uses
``(radius, beyond_radius]`` and, by default, no cosine floor (the floor bounds
what is *erased*; a preserved sample may lie anywhere outside the radius).

Spaces (docs/method.md leaves the choice to the quality benchmark)
    ``token``: ``t`` is the concept's rows of the text encoder's token-embedding
    table, flattened (all of its tokens form one vector, so ``||t||`` is the
    Frobenius norm of the rows); each perturbed prompt is encoded again.
    ``text``: ``t`` is the encoder output at the concept's positions (span and
    leak, see :mod:`policykit.realera.prompts`), flattened; no extra encoder
    passes.
    Either way a sample is returned as encoder outputs at the concept
    positions, paired with the anchor prompt's outputs at the partner
    positions, plus the full ``(L, d)`` conditioning (for noise alignment).

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

Decoding a radius (for the audit and ``plan``)
    :func:`tokens_within_radius` lists vocabulary tokens that, put in place of
    one of the concept's tokens, stay inside the radius (token space).
    :func:`phrase_distances` gives the relative distance of known phrases
    (synonyms, preserves, probes) from the concept, in either space: in token
    space the two token blocks are right-aligned and the shorter is padded with
    zero rows (an extra token costs its whole norm); in text space the phrase
    prompt's outputs are taken at the partner positions of the anchor
    alignment.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from policykit.realera.prompts import (DEFAULT_LEAK_PADDING, AlignedPrompt, ConceptPositions, align_with_anchor,
                                      locate_concept, tokenize)

if TYPE_CHECKING:
    import torch

SPACES = ("token", "text")
MAX_ROUNDS = 12


# ---------------------------------------------------------------- encoding

@contextmanager
def _token_embedding_offset(text_encoder, offset: "torch.Tensor"):
    """Add ``offset`` ((B, L, d)) to the token embeddings for the passes inside the block.

    CLIPTextModel in transformers 5.x takes no ``inputs_embeds``, so the offset
    goes in through a forward hook on the input-embedding module.
    """
    module = text_encoder.get_input_embeddings()
    handle = module.register_forward_hook(lambda _m, _i, out: out + offset.to(dtype=out.dtype, device=out.device))
    try:
        yield
    finally:
        handle.remove()


def encode_ids(text_encoder, input_ids: "torch.Tensor", attention_mask: "torch.Tensor | None" = None,
               token_offset: "torch.Tensor | None" = None) -> "torch.Tensor":
    """Text-encoder output ``(B, L, d)`` as the SD pipelines compute it (last hidden state).

    The attention mask is passed only when the encoder's config asks for it,
    as in ``StableDiffusionPipeline.encode_prompt``. ``token_offset`` is added
    to the input token embeddings.
    """
    import torch

    device = next(text_encoder.parameters()).device
    mask = None
    if attention_mask is not None and getattr(text_encoder.config, "use_attention_mask", False):
        mask = attention_mask.to(device)
    with torch.no_grad():
        if token_offset is None:
            return text_encoder(input_ids.to(device), attention_mask=mask)[0]
        with _token_embedding_offset(text_encoder, token_offset):
            return text_encoder(input_ids.to(device), attention_mask=mask)[0]


def encode_prompts(text_encoder, tokenizer, prompts: Sequence[str], batch_size: int = 64) -> "torch.Tensor":
    """Conditioning ``(len(prompts), L, d)`` in float32 on the encoder's device."""
    import torch

    out = []
    for i in range(0, len(prompts), batch_size):
        batch = tokenize(tokenizer, prompts[i:i + batch_size])
        out.append(encode_ids(text_encoder, batch.input_ids, batch.attention_mask).float())
    return torch.cat(out)


# ---------------------------------------------------------------- sampling

def stream_generator(seed: int, *parts: Any) -> "torch.Generator":
    """A CPU generator seeded from ``seed`` and ``parts`` (order-independent across templates)."""
    import torch

    digest = hashlib.sha256(repr((seed,) + parts).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


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

@dataclass
class TemplateSamples:
    """Samples around one concept at one template.

    ``embeddings`` ``(n, P, d)``: encoder outputs at the concept positions;
    ``anchors`` ``(P, d)``: the anchor prompt's outputs at the partner
    positions (shared by all samples of the template); ``sequences``
    ``(n, L, d)``: the full conditionings; ``anchor_sequence`` ``(L, d)``: the
    anchor prompt's full conditioning; all float32.
    """

    aligned: AlignedPrompt
    embeddings: "torch.Tensor"
    anchors: "torch.Tensor"
    sequences: "torch.Tensor"
    anchor_sequence: "torch.Tensor"
    relative_radius: "torch.Tensor"
    cosine: "torch.Tensor"
    drawn: int
    shortfall: int


@dataclass
class MinedSamples:
    """All templates' samples for one concept, in one space, for one radius range."""

    space: str
    low: float
    high: float
    templates: list[TemplateSamples] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Accepted samples over all templates."""
        return sum(t.embeddings.shape[0] for t in self.templates)

    @property
    def drawn(self) -> int:
        """Candidates drawn over all templates."""
        return sum(t.drawn for t in self.templates)

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drawn (1.0 when nothing was drawn)."""
        return self.count / self.drawn if self.drawn else 1.0

    @property
    def shortfall(self) -> int:
        """Samples asked for but not found within the rejection rounds."""
        return sum(t.shortfall for t in self.templates)

    def erase_pairs(self) -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:
        """``(embeddings, anchor targets)`` per template, both ``(n, P, d)``, for the closed form."""
        for t in self.templates:
            yield t.embeddings, t.anchors.expand_as(t.embeddings)

    def conditioning_pairs(self) -> tuple["torch.Tensor", "torch.Tensor"]:
        """``(sequences, anchor sequences)``, both ``(count, L, d)``: erase inputs and targets for noise alignment."""
        import torch

        seqs = [t.sequences for t in self.templates]
        anchors = [t.anchor_sequence.expand_as(t.sequences) for t in self.templates]
        return torch.cat(seqs), torch.cat(anchors)

    def embedding_rows(self) -> "torch.Tensor":
        """Every sample's outputs at its concept positions as ``(rows, d)`` (preserve side of the closed form)."""
        import torch

        return torch.cat([t.embeddings.reshape(-1, t.embeddings.shape[-1]) for t in self.templates])


def mine_samples(text_encoder, tokenizer, templates: Sequence[str], concept: str, anchor: str, *, count: int,
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
        aligned = align_with_anchor(tokenizer, template, concept, anchor, leak_padding)
        generator = stream_generator(seed, purpose, space, concept, template)
        ids = tokenize(tokenizer, [aligned.concept.prompt, aligned.anchor.prompt])
        base = encode_ids(text_encoder, ids.input_ids, ids.attention_mask).float()
        positions, partners = list(aligned.concept_positions), list(aligned.anchor_positions)
        anchors = base[1, partners]
        if space == "token":
            span = list(aligned.concept.span)
            table = text_encoder.get_input_embeddings().weight
            t = table[ids.input_ids[0, span].to(table.device)].detach()
        else:
            t = base[0, positions]
        drawn = sample_perturbations(t, count, low, high, generator, min_cosine)
        eta = drawn.eta.to(device=base.device, dtype=torch.float32).reshape(-1, *t.shape)
        sequences = []
        for i in range(0, eta.shape[0], batch_size):
            chunk = eta[i:i + batch_size]
            if space == "token":
                offset = torch.zeros(chunk.shape[0], *base.shape[1:], device=base.device)
                offset[:, span] = chunk
                n = chunk.shape[0]
                seq = encode_ids(text_encoder, ids.input_ids[:1].expand(n, -1), ids.attention_mask[:1].expand(n, -1),
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


def encode_concept(text_encoder, tokenizer, templates: Sequence[str], concept: str, anchor: str, *,
                   leak_padding: int | None = DEFAULT_LEAK_PADDING) -> MinedSamples:
    """The unperturbed concept (one sample per template, ``rho = 0``) in the same shape as mined samples.

    Used for the concept itself and its synonyms (erase side, paired with the
    anchor) and for explicit preserves (pass ``anchor=concept``: only
    ``embeddings`` matter there), so later stages treat every source alike.
    """
    import torch

    result = MinedSamples(space="none", low=0.0, high=0.0)
    for template in templates:
        aligned = align_with_anchor(tokenizer, template, concept, anchor, leak_padding)
        ids = tokenize(tokenizer, [aligned.concept.prompt, aligned.anchor.prompt])
        base = encode_ids(text_encoder, ids.input_ids, ids.attention_mask).float()
        zero = torch.zeros(1, dtype=torch.float64)
        result.templates.append(TemplateSamples(
            aligned=aligned, embeddings=base[:1, list(aligned.concept_positions)],
            anchors=base[1, list(aligned.anchor_positions)], sequences=base[:1], anchor_sequence=base[1],
            relative_radius=zero,
            cosine=torch.ones(1, dtype=torch.float64), drawn=0, shortfall=0))
    return result


def mine_neighbors(text_encoder, tokenizer, templates: Sequence[str], concept: str, anchor: str, *, count: int,
                   radius: float, seed: int, min_cosine: float | None = None, space: str = "token",
                   leak_padding: int | None = DEFAULT_LEAK_PADDING, batch_size: int = 32) -> MinedSamples:
    """Stage 1: ``count`` neighbors per template with ``rho/||t|| <= radius`` and the cosine floor."""
    return mine_samples(text_encoder, tokenizer, templates, concept, anchor, count=count, low=0.0, high=radius,
                        seed=seed, space=space, min_cosine=min_cosine, leak_padding=leak_padding,
                        batch_size=batch_size, purpose="neighbors")


def mine_beyond(text_encoder, tokenizer, templates: Sequence[str], concept: str, anchor: str, *, count: int,
                radius: float, beyond_radius: float | None, seed: int, space: str = "token",
                min_cosine: float | None = None, leak_padding: int | None = DEFAULT_LEAK_PADDING, batch_size: int = 32) -> MinedSamples:
    """Stage 2: ``count`` shell samples per template with ``radius < rho/||t|| <= beyond_radius`` (default 2 x radius)."""
    beyond = 2 * radius if beyond_radius is None else beyond_radius
    if beyond <= radius:
        raise ValueError(f"beyond_radius ({beyond}) must be larger than radius ({radius})")
    return mine_samples(text_encoder, tokenizer, templates, concept, anchor, count=count, low=radius, high=beyond,
                        seed=seed, space=space, min_cosine=min_cosine, leak_padding=leak_padding,
                        batch_size=batch_size, purpose="beyond")


# ---------------------------------------------------------------- decoding a radius

@dataclass(frozen=True)
class CoveredToken:
    """A vocabulary token that, in place of the concept's token at ``span_index``, stays inside the radius."""

    span_index: int
    token: str
    token_id: int
    relative_distance: float


@dataclass(frozen=True)
class PhraseDistance:
    """How far a known phrase is from the concept, relative to ``||t||``, in one space."""

    phrase: str
    relative_distance: float
    inside: bool


def tokens_within_radius(text_encoder, tokenizer, located: ConceptPositions, radius: float,
                         min_cosine: float | None = None, limit: int = 50) -> list[CoveredToken]:
    """Vocabulary tokens one substitution away from the concept inside ``radius`` (nearest first).

    The concept's own tokens and the special tokens are left out.
    """
    import torch

    table = text_encoder.get_input_embeddings().weight.detach().to(torch.float64)
    ids = [located.input_ids[i] for i in located.span]
    t = table[ids]  # (n, d)
    norm = t.norm()
    special = set(tokenizer.all_special_ids)
    found = []
    for j, own in enumerate(ids):
        diff = table - t[j]
        rel = diff.norm(dim=1) / norm
        inside = rel <= radius
        if min_cosine is not None:
            # cos(t, t') with row j replaced by each vocabulary row
            dot = (t * t).sum() - t[j] @ t[j] + table @ t[j]
            other = (t * t).sum() - t[j] @ t[j]
            cos = dot / (norm * (other + (table * table).sum(dim=1)).sqrt()).clamp_min(1e-300)
            inside &= cos >= min_cosine
        for v in inside.nonzero().flatten().tolist():
            if v != own and v not in special:
                found.append(CoveredToken(j, tokenizer.convert_ids_to_tokens(v), v, float(rel[v])))
    found.sort(key=lambda c: (c.relative_distance, c.span_index, c.token_id))
    return found[:limit]


def phrase_distances(text_encoder, tokenizer, template: str, concept: str, phrases: Sequence[str], radius: float,
                     space: str = "token", leak_padding: int | None = DEFAULT_LEAK_PADDING) -> list[PhraseDistance]:
    """Relative distance of each phrase from the concept at ``template``, and whether it is inside ``radius``."""
    import torch

    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    out = []
    if space == "token":
        table = text_encoder.get_input_embeddings().weight.detach().to(torch.float64)
        c = locate_concept(tokenizer, template, concept, leak_padding)
        t = table[[c.input_ids[i] for i in c.span]]
        for phrase in phrases:
            p = locate_concept(tokenizer, template, phrase, leak_padding)
            q = table[[p.input_ids[i] for i in p.span]]
            n = max(len(t), len(q))
            pad = lambda x: torch.cat([x.new_zeros(n - len(x), x.shape[1]), x])  # noqa: E731 - right-align
            rel = float((pad(q) - pad(t)).norm() / t.norm())
            out.append(PhraseDistance(phrase, rel, rel <= radius))
        return out
    for phrase in phrases:
        aligned = align_with_anchor(tokenizer, template, concept, phrase, leak_padding)
        enc = encode_prompts(text_encoder, tokenizer, [aligned.concept.prompt, aligned.anchor.prompt]).double()
        t = enc[0, list(aligned.concept_positions)]
        q = enc[1, list(aligned.anchor_positions)]
        rel = float((q - t).norm() / t.norm())
        out.append(PhraseDistance(phrase, rel, rel <= radius))
    return out
