"""Prompts from templates, and where a concept sits in a tokenized prompt.

Every later stage reads text-encoder outputs at a concept's *positions*, and
pairs them with the anchor prompt's outputs at *partner positions*. This
module defines both, for any CLIP-style tokenizer (SD 1.x CLIP, SD 2.x
OpenCLIP as shipped in diffusers):

Concept positions
    In ``template.format(concept)`` the concept's *span* is every token whose
    character range overlaps the concept's characters (found with the fast
    tokenizer's offset mapping, so concepts of several tokens anywhere in the
    template work, and a template that glues text onto the concept, as in
    ``"many {}s"``, keeps the token that mixes both in the span). The *leak* positions
    are the EOS token and the ``leak_padding`` positions after it: the causal
    text encoder writes the whole prompt, concept included, into them.
    ``leak_padding=None`` means every position to the end of the sequence
    (what UCE does). The EOS position is the last position the tokenizer's
    attention mask marks as real, which holds whether padding repeats EOS
    (SD 1.x) or uses another id (SD 2.x pads with ``!``, id 0).

Alignment with the anchor (same template)
    Let ``C = span_c + leak_c`` and ``A = span_a + leak_a`` be the position
    lists of the concept prompt and of the anchor prompt, leaks cut to the
    same length. They are paired *right-aligned*: EOS with EOS, padding with
    padding, the concept's last token with the anchor's last token, and so on
    backwards. When the concept has more tokens than the anchor (always so for
    the empty anchor ``""``), its extra leading tokens are all paired with the
    first position of ``A`` (the anchor's first token, or its EOS when the
    anchor is empty), so every concept token is erased, not only the last one.
    When the anchor has more tokens, its extra leading tokens are left out.
    This is the EOS-based alignment of UCE/MACE practice, extended so that the
    first tokens of multi-token concepts ("mickey" in "mickey mouse") are
    mapped too.

Problems (a concept cut off by the tokenizer's maximum length, a tokenizer
without offsets) raise :class:`PromptError`, whose message the stage runner
turns into a Diagnostic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

#: Padding positions after EOS counted as leak positions by default. A few
#: positions carry most of the leaked meaning; all of them (None) make the edit
#: touch positions whose content is mostly the template.
DEFAULT_LEAK_PADDING = 4


class PromptError(ValueError):
    """A concept cannot be located in a prompt (the message says why and what to change)."""


def fill_template(template: str, concept: str) -> str:
    """``template`` with its single ``{}`` replaced by ``concept``.

    An empty concept (the anchor ``""``) leaves no double space behind.
    """
    if template.count("{}") != 1:
        raise PromptError(f"template {template!r} needs exactly one '{{}}' where the concept goes")
    return " ".join(template.replace("{}", concept).split())


def build_prompts(templates: Sequence[str], concept: str) -> list[str]:
    """One prompt per template, in the templates' order."""
    return [fill_template(t, concept) for t in templates]


@dataclass(frozen=True)
class ConceptPositions:
    """Where a concept sits in one tokenized prompt.

    ``span`` are the positions of the concept's own tokens (empty for the empty
    concept), ``leak`` the EOS position followed by the padding positions that
    count as leaked; ``input_ids`` the padded token ids of ``prompt``.
    """

    prompt: str
    input_ids: tuple[int, ...]
    span: tuple[int, ...]
    leak: tuple[int, ...]

    @property
    def eos(self) -> int:
        """Position of the end-of-text token."""
        return self.leak[0]

    @property
    def positions(self) -> tuple[int, ...]:
        """Span then leak positions: every position the concept writes into."""
        return self.span + self.leak


@dataclass(frozen=True)
class AlignedPrompt:
    """A concept prompt and its anchor prompt at the same template, positions paired.

    ``concept_positions[i]`` in the concept prompt is paired with
    ``anchor_positions[i]`` in the anchor prompt (see the module docstring).
    """

    template: str
    concept: ConceptPositions
    anchor: ConceptPositions
    concept_positions: tuple[int, ...]
    anchor_positions: tuple[int, ...]


def tokenize(tokenizer: Any, prompts: Sequence[str]) -> dict:
    """Token ids and attention masks padded to the tokenizer's maximum length, as the SD pipelines do."""
    return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt")


def _last_real_position(attention_mask: Sequence[int]) -> int:
    real = [i for i, m in enumerate(attention_mask) if m]
    return real[-1]


def locate_concept(tokenizer: Any, template: str, concept: str,
                   leak_padding: int | None = DEFAULT_LEAK_PADDING) -> ConceptPositions:
    """Find ``concept``'s span and leak positions in ``template.format(concept)``."""
    if leak_padding is not None and leak_padding < 0:
        raise PromptError(f"leak_padding must be >= 0 or None, got {leak_padding}")
    prompt = fill_template(template, concept)
    max_length = tokenizer.model_max_length
    try:
        encoding = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True,
                             return_offsets_mapping=True)
    except (NotImplementedError, ValueError) as exc:  # slow tokenizers have no offsets
        raise PromptError(f"tokenizer {type(tokenizer).__name__} gives no offset mapping; "
                          "use a fast (tokenizers-backed) CLIP tokenizer") from exc
    ids = list(encoding["input_ids"])
    offsets = [tuple(o) for o in encoding["offset_mapping"]]
    eos = _last_real_position(encoding["attention_mask"])

    span: list[int] = []
    start = _concept_start(template, concept)
    end = start + len(" ".join(concept.split()))
    if end > start:
        span = [i for i, (a, b) in enumerate(offsets[:eos]) if b > a and a < end and b > start]
        if not span or offsets[span[-1]][1] < end:
            raise PromptError(f"concept {concept!r} is cut off in {prompt!r}: the prompt is longer than "
                              f"the tokenizer's {max_length} tokens; use a shorter template")
    last = max_length - 1 if leak_padding is None else min(max_length - 1, eos + leak_padding)
    return ConceptPositions(prompt=prompt, input_ids=tuple(ids), span=tuple(span),
                            leak=tuple(range(eos, last + 1)))


def _concept_start(template: str, concept: str) -> int:
    """Character index where the concept starts in ``fill_template(template, concept)``."""
    before = template.split("{}")[0]
    head = " ".join(before.split())
    # fill_template collapses whitespace; a space survives between prefix and concept
    # only when the template had one there (and the concept is not empty).
    gap = 1 if head and before[-1].isspace() and concept.strip() else 0
    return len(head) + gap


def align_with_anchor(tokenizer: Any, template: str, concept: str, anchor: str,
                      leak_padding: int | None = DEFAULT_LEAK_PADDING) -> AlignedPrompt:
    """Pair the concept's positions with the anchor prompt's positions at the same template.

    Right-aligned pairing; see the module docstring for the rule and why.
    """
    c = locate_concept(tokenizer, template, concept, leak_padding)
    a = locate_concept(tokenizer, template, anchor, leak_padding)
    n_leak = min(len(c.leak), len(a.leak))  # one prompt may run closer to the maximum length
    c_positions = list(c.span) + list(c.leak[:n_leak])
    a_positions = list(a.span) + list(a.leak[:n_leak])
    extra = len(c_positions) - len(a_positions)
    if extra >= 0:
        partners = [a_positions[0]] * extra + a_positions
    else:
        partners = a_positions[-extra:]
    return AlignedPrompt(template=template, concept=c, anchor=a,
                         concept_positions=tuple(c_positions), anchor_positions=tuple(partners))


def align_templates(tokenizer: Any, templates: Sequence[str], concept: str, anchor: str,
                    leak_padding: int | None = DEFAULT_LEAK_PADDING) -> list[AlignedPrompt]:
    """:func:`align_with_anchor` for every template, in order."""
    return [align_with_anchor(tokenizer, t, concept, anchor, leak_padding) for t in templates]
