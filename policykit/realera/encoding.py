"""What the plan's phrases encode to, under policykit's own position rules (:mod:`.prompts`).

Every erased phrase (each concept, its synonyms and associated words: all of
them are erased, so each has its own residue) is encoded at every template of
its entry, its positions paired with the anchor prompt's
(:func:`~policykit.realera.prompts.align_with_anchor`); the preserves, the
anchors and the empty prompt are encoded at every erase entry's templates.
The closed form reads the rows, noise alignment the full conditionings.

A conditioning is ``(S, d)``: ``L`` token positions, plus SDXL's pooled
embedding as one more row (:mod:`policykit.models.text`); every position the
closed form reads is a token position ``< L``.

The peer presets build their rows their own way (:mod:`.peer_rows`); this
module serves the ``realera`` rules and the noise-alignment conditionings of
every preset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from policykit.realera.prompts import DEFAULT_LEAK_PADDING, AlignedPrompt, align_with_anchor, tokenize
from policykit.realera.runner import TypedOutput

if TYPE_CHECKING:
    import torch

    from policykit.models.text import TextModel

#: Where mining perturbs a phrase: its input token embeddings or the text encoder's outputs.
SPACES = ("token", "text")


# ---------------------------------------------------------------- the text encoder

def encode_ids(text: "TextModel", input_ids: "torch.Tensor", attention_mask: "torch.Tensor | None" = None,
               token_offset: "torch.Tensor | None" = None) -> "torch.Tensor":
    """The conditioning ``(B, S, d)`` as the SD pipelines compute it (:meth:`TextModel.encode_ids`)."""
    return text.encode_ids(input_ids, attention_mask, token_offset)


def encode_prompts(text: "TextModel", prompts: Sequence[str], batch_size: int = 64) -> "torch.Tensor":
    """Conditionings ``(len(prompts), S, d)`` in float32 on the encoders' device."""
    return text.encode_prompts(prompts, batch_size)


# ---------------------------------------------------------------- encoded samples

@dataclass
class TemplateSamples:
    """Samples around one concept at one template.

    ``embeddings`` ``(n, P, d)``: encoder outputs at the concept positions;
    ``anchors`` ``(P, d)``: the anchor prompt's outputs at the partner
    positions (shared by all samples of the template); ``sequences``
    ``(n, S, d)``: the full conditionings; ``anchor_sequence`` ``(S, d)``: the
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
        """``(sequences, anchor sequences)``, both ``(count, S, d)``: erase inputs and targets for noise alignment."""
        import torch

        seqs = [t.sequences for t in self.templates]
        anchors = [t.anchor_sequence.expand_as(t.sequences) for t in self.templates]
        return torch.cat(seqs), torch.cat(anchors)

    def embedding_rows(self) -> "torch.Tensor":
        """Every sample's outputs at its concept positions as ``(rows, d)`` (preserve side of the closed form)."""
        import torch

        return torch.cat([t.embeddings.reshape(-1, t.embeddings.shape[-1]) for t in self.templates])


def encode_concept(text: "TextModel", templates: Sequence[str], concept: str, anchor: str, *,
                   leak_padding: int | None = DEFAULT_LEAK_PADDING) -> MinedSamples:
    """The unperturbed concept (one sample per template, ``rho = 0``) in the same shape as mined samples.

    Used for the concept itself and its synonyms (erase side, paired with the
    anchor) and for explicit preserves (pass ``anchor=concept``: only
    ``embeddings`` matter there), so later stages treat every source alike.
    """
    import torch

    result = MinedSamples(space="none", low=0.0, high=0.0)
    for template in templates:
        aligned = align_with_anchor(text.tokenizer, template, concept, anchor, leak_padding)
        ids = tokenize(text.tokenizer, [aligned.concept.prompt, aligned.anchor.prompt])
        base = encode_ids(text, ids.input_ids, ids.attention_mask).float()
        zero = torch.zeros(1, dtype=torch.float64)
        result.templates.append(TemplateSamples(
            aligned=aligned, embeddings=base[:1, list(aligned.concept_positions)],
            anchors=base[1, list(aligned.anchor_positions)], sequences=base[:1], anchor_sequence=base[1],
            relative_radius=zero,
            cosine=torch.ones(1, dtype=torch.float64), drawn=0, shortfall=0))
    return result


# ---------------------------------------------------------------- the plan's phrases

@dataclass(frozen=True)
class ErasedPhrase:
    """A phrase the plan erases, with its entry's anchor, templates, strength and neighbor settings."""

    entry: int
    phrase: str
    anchor: str
    templates: tuple[str, ...]
    strength: float
    neighbors: Any  # plan.ResolvedNeighbors


def erased_phrases(plan) -> list[ErasedPhrase]:
    """Every concept, synonym and associated word of the plan, in plan order (no repeats per entry)."""
    out = []
    for i, entry in enumerate(plan.erase):
        seen = set()
        for phrase in (entry.concept, *entry.synonyms, *entry.associated):
            if phrase not in seen:
                seen.add(phrase)
                out.append(ErasedPhrase(i, phrase, entry.anchor, tuple(entry.templates), entry.strength,
                                        entry.neighbors))
    return out


def preserve_templates(plan) -> list[str]:
    """Templates the preserves are encoded at: every erase entry's, in first-seen order."""
    return list(dict.fromkeys(t for entry in plan.erase for t in entry.templates))


@dataclass
class ErasePairs(TypedOutput):
    """Erase rows paired with their anchor targets (closed form) and full conditionings (noise alignment).

    ``rows``/``targets`` ``(n, d)`` with weights ``alpha``; ``sequences``/``sequence_targets``
    ``(m, S, d)`` with weights ``sequence_alpha``; ``info``: key numbers for the log.
    """

    rows: "torch.Tensor"
    targets: "torch.Tensor"
    alpha: "torch.Tensor"
    sequences: "torch.Tensor"
    sequence_targets: "torch.Tensor"
    sequence_alpha: "torch.Tensor"
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreserveRows(TypedOutput):
    """Rows that must keep their projection, weights ``beta``, and their full conditionings.

    ``null`` is the empty prompt's conditioning ``(S, d)`` when it is among them.
    """

    rows: "torch.Tensor"
    beta: "torch.Tensor"
    sequences: "torch.Tensor"
    null: "torch.Tensor | None" = None
    info: dict[str, Any] = field(default_factory=dict)


class PairCollector:
    """Accumulates :class:`MinedSamples` into :class:`ErasePairs`."""

    def __init__(self, width: int, length: int):
        self.width, self.length = width, length
        self.rows, self.targets, self.alpha = [], [], []
        self.seqs, self.seq_targets, self.seq_alpha = [], [], []

    def add(self, samples, weight: float) -> None:
        """Append the samples' closed-form pairs and noise-alignment conditionings, each weighing ``weight``."""
        for e, e_star in samples.erase_pairs():
            r = e.reshape(-1, e.shape[-1])
            self.rows.append(r)
            self.targets.append(e_star.reshape(-1, e_star.shape[-1]))
            self.alpha += [weight] * r.shape[0]
        if samples.count:
            s, s_star = samples.conditioning_pairs()
            self.seqs.append(s)
            self.seq_targets.append(s_star)
            self.seq_alpha += [weight] * s.shape[0]

    def pairs(self, info: dict[str, Any] | None = None) -> ErasePairs:
        """Everything added so far, stacked."""
        import torch

        d, seq = (self.width,), (self.length, self.width)
        return ErasePairs(rows=stack(self.rows, d), targets=stack(self.targets, d),
                          alpha=torch.tensor(self.alpha, dtype=torch.float32),
                          sequences=stack(self.seqs, seq), sequence_targets=stack(self.seq_targets, seq),
                          sequence_alpha=torch.tensor(self.seq_alpha, dtype=torch.float32), info=info or {})


def stack(parts: list["torch.Tensor"], tail: tuple[int, ...]) -> "torch.Tensor":
    """``torch.cat(parts)``, or an empty ``(0, *tail)`` tensor when there are none."""
    import torch

    return torch.cat(parts) if parts else torch.zeros(0, *tail)


def text_shape(pipeline) -> tuple[int, int]:
    """``(S, d)``: rows and width of the pipeline's conditionings (:class:`~policykit.models.text.TextModel`)."""
    from policykit.models.text import text_model

    text = text_model(pipeline)
    return text.sequence_length, text.width


def encode_erased(plan, pipeline, leak_padding: int | None) -> ErasePairs:
    """Every erased phrase unperturbed at its templates, weighted by its concept's strength."""
    from policykit.models.text import text_model

    text = text_model(pipeline)
    collector = PairCollector(text.width, text.sequence_length)
    for p in erased_phrases(plan):
        samples = encode_concept(text, p.templates, p.phrase, p.anchor, leak_padding=leak_padding)
        collector.add(samples, p.strength)
    return collector.pairs()


def vocabulary_phrases(tokenizer, count: int, seed: int, exclude: Sequence[str] = (),
                       max_tokens: int = 3) -> list[str]:
    """``count`` phrases of 1 to ``max_tokens`` tokens drawn uniformly from the tokenizer's own vocabulary.

    The model's general vocabulary, which a policy cannot list: decoded token sequences, so pieces
    join into the words they make ("zor" + "vik" is "zorvik"). Special tokens are never drawn;
    ``exclude`` (the plan's erased phrases) and repeats are skipped. Deterministic for a seed.
    """
    import numpy as np

    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = np.array([i for i in range(len(tokenizer)) if i not in special])
    rng = np.random.default_rng([seed, 0x766F6361])  # "voca"
    skip = {" ".join(p.lower().split()) for p in exclude}
    out: list[str] = []
    seen: set[str] = set()
    for _ in range(count * 20):
        if len(out) == count:
            break
        n = int(rng.integers(1, max_tokens + 1))
        phrase = " ".join(tokenizer.decode(rng.choice(ids, n).tolist()).split())
        key = phrase.lower()
        if not phrase or "{" in phrase or "}" in phrase or key in seen or key in skip:
            continue
        seen.add(key)
        out.append(phrase)
    return out


#: Vocabulary phrases whose full conditionings noise alignment's preserve term also sees (it samples
#: preserves uniformly: all of them would outnumber the policy's own preserves).
VOCABULARY_SEQUENCES = 64


def vocabulary_row_weight(weight: float, erase_mass: float, rows: int) -> float:
    """Weight of one vocabulary row: the vocabulary weighs ``weight`` times the erase rows' total weight
    ``erase_mass``, so it keeps pace as a policy erases more concepts."""
    return weight * erase_mass / max(rows, 1)


def encode_vocabulary(text: "TextModel", templates: Sequence[str], phrases: Sequence[str],
                      leak_padding: int | None, batch_size: int = 64) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Preserve rows of ``phrases`` at every template (their span and leak positions), encoded in
    batches, and the full conditionings of the first :data:`VOCABULARY_SEQUENCES` phrases at the first
    template. A phrase that does not fit a template is left out there."""
    import torch

    from policykit.realera.prompts import PromptError, locate_concept

    located = []
    for index, template in enumerate(templates):
        for phrase in phrases:
            try:
                located.append((index, locate_concept(text.tokenizer, template, phrase, leak_padding)))
            except PromptError:
                continue
    rows, first = [], []
    for start in range(0, len(located), batch_size):
        chunk = located[start:start + batch_size]
        encoded = text.encode_prompts([c.prompt for _, c in chunk], batch_size).float()
        for (index, c), e in zip(chunk, encoded):
            rows.append(e[list(c.positions)])
            if index == 0 and len(first) < VOCABULARY_SEQUENCES:
                first.append(e)
    seq_shape = (text.sequence_length, text.width)
    return stack(rows, (text.width,)), torch.stack(first) if first else torch.zeros(0, *seq_shape)


def encode_preserved(plan, pipeline, leak_padding: int | None, regularizer_weight: float,
                     vocabulary: int = 0, vocabulary_weight: float = 2.0, seed: int = 0,
                     erase_mass: float = 0.0) -> PreserveRows:
    """Explicit preserves (their weight), the anchors and the empty prompt (``regularizer_weight``), and
    ``vocabulary`` phrases of the model's own vocabulary (:func:`vocabulary_phrases`) whose rows weigh
    ``vocabulary_weight`` times ``erase_mass`` (the erase rows' total weight) together.

    ``null`` is the unconditional branch of guidance (:meth:`~policykit.models.text.TextModel.unconditional`:
    the encoded empty prompt, or zeros for SDXL).
    """
    import torch

    from policykit.models.text import text_model

    text = text_model(pipeline)
    templates = preserve_templates(plan)
    phrases = [(p.concept, p.weight) for p in plan.preserve]
    phrases += [(a, regularizer_weight) for a in dict.fromkeys(e.anchor for e in plan.erase) if a.strip()]
    rows, beta, seqs = [], [], []
    if vocabulary:
        erased = [p.phrase for p in erased_phrases(plan)]
        words = vocabulary_phrases(text.tokenizer, vocabulary, seed, erased)
        r, s = encode_vocabulary(text, templates, words, leak_padding)
        rows.append(r)
        beta += [vocabulary_row_weight(vocabulary_weight, erase_mass, r.shape[0])] * r.shape[0]
        seqs.append(s)
    for phrase, weight in phrases:
        samples = encode_concept(text, templates, phrase, phrase, leak_padding=leak_padding)
        r = samples.embedding_rows()
        rows.append(r)
        beta += [weight] * r.shape[0]
        seqs.append(torch.cat([t.sequences for t in samples.templates]))
    empty = encode_concept(text, ["{}"], "", "", leak_padding=leak_padding)
    rows.append(empty.embedding_rows())
    beta += [regularizer_weight] * rows[-1].shape[0]
    seqs.append(empty.templates[0].sequences)
    return PreserveRows(rows=torch.cat(rows), beta=torch.tensor(beta, dtype=torch.float32),
                        sequences=torch.cat(seqs), null=text.unconditional()[0])
