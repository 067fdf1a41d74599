"""What an erase radius covers, and the preserved concepts it swallows.

Operators must see what a radius erases (docs/method.md, stage 1, step 4).
:func:`radius_coverage` decodes one concept's radius into the vocabulary
tokens one substitution away from it and the known phrases (synonyms,
preserves, probes) inside it, with their relative distances; it is what
``policykit neighbors`` prints, what the engine stores for the audit, and
what :func:`find_conflicts` reads.

Conflicts
    A preserved concept inside an erase concept's radius is a contradiction
    the policy text cannot show: the mined neighbors will sample around it
    (erase) while the preserve term holds it in place. :func:`find_conflicts`
    reports each one as a ``conflicts-with`` edge of the concept graph plus a
    **warning** ``preserve-inside-radius`` at the preserve entry. A warning and
    not an error because the check depends on the base model being present on
    the machine that runs ``plan``: the same policy must not pass in CI
    without the model and fail on a laptop with it. The audit is where a
    swallowed preserve fails hard (specificity threshold).

Distances follow :func:`phrase_distances`, measured at
the concept's first template (token space does not depend on the template;
text space does, and the first template is the one ``plan`` shows).

Decoding a radius (for the audit and ``plan``)
    :func:`tokens_within_radius` lists vocabulary tokens that, put in place of
    one of the concept's tokens, stay inside the radius (token space).
    :func:`phrase_distances` gives the relative distance of known phrases
    (synonyms, preserves, probes) from the concept, in either space: in token
    space the two token blocks are right-aligned and the shorter is padded with
    zero rows (an extra token costs its whole norm); in text space the phrase
    prompt's outputs are taken at the partner positions of the anchor
    alignment.

Every function takes the model's :class:`~policykit.models.text.TextModel`
(for SDXL the token space is both encoders' tables side by side); ``load_text_model``
loads only the tokenizers and text encoders of a resolved model, which is all
``plan`` and ``neighbors`` need.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from policykit.realera.encoding import SPACES, encode_prompts
from policykit.realera.prompts import DEFAULT_LEAK_PADDING, ConceptPositions, align_with_anchor, locate_concept

if TYPE_CHECKING:
    from policykit.models.text import TextModel

#: Vocabulary tokens listed per concept unless asked otherwise.
DEFAULT_TOKEN_LIMIT = 20
PRESERVE_INSIDE_RADIUS = "preserve-inside-radius"


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


def tokens_within_radius(text: "TextModel", located: ConceptPositions, radius: float,
                         min_cosine: float | None = None, limit: int = 50) -> list[CoveredToken]:
    """Vocabulary tokens one substitution away from the concept inside ``radius`` (nearest first).

    The concept's own tokens and the special tokens are left out.
    """
    import torch

    tokenizer = text.tokenizer
    table = text.token_table()
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


def phrase_distances(text: "TextModel", template: str, concept: str, phrases: Sequence[str], radius: float,
                     space: str = "token", leak_padding: int | None = DEFAULT_LEAK_PADDING) -> list[PhraseDistance]:
    """Relative distance of each phrase from the concept at ``template``, and whether it is inside ``radius``."""
    import torch

    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    out = []
    if space == "token":
        table = text.token_table()
        c = locate_concept(text.tokenizer, template, concept, leak_padding)
        t = table[[c.input_ids[i] for i in c.span]]
        for phrase in phrases:
            p = locate_concept(text.tokenizer, template, phrase, leak_padding)
            q = table[[p.input_ids[i] for i in p.span]]
            n = max(len(t), len(q))
            pad = lambda x: torch.cat([x.new_zeros(n - len(x), x.shape[1]), x])  # noqa: E731 - right-align
            rel = float((pad(q) - pad(t)).norm() / t.norm())
            out.append(PhraseDistance(phrase, rel, rel <= radius))
        return out
    for phrase in phrases:
        aligned = align_with_anchor(text.tokenizer, template, concept, phrase, leak_padding)
        enc = encode_prompts(text, [aligned.concept.prompt, aligned.anchor.prompt]).double()
        t = enc[0, list(aligned.concept_positions)]
        q = enc[1, list(aligned.anchor_positions)]
        rel = float((q - t).norm() / t.norm())
        out.append(PhraseDistance(phrase, rel, rel <= radius))
    return out


@dataclass(frozen=True)
class RadiusCoverage:
    """What one concept's radius covers, in one space."""

    concept: str
    template: str
    radius: float
    space: str
    min_cosine: float | None
    #: ``{"token", "token_id", "span_index", "distance"}`` nearest first (token space
    #: only: text-space neighbours are not vocabulary tokens).
    tokens: list[dict[str, Any]] = field(default_factory=list)
    #: ``{"phrase", "role", "distance", "inside"}`` for every known phrase, nearest first.
    phrases: list[dict[str, Any]] = field(default_factory=list)

    def inside(self) -> list[dict[str, Any]]:
        """The phrases inside the radius."""
        return [p for p in self.phrases if p["inside"]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return asdict(self)


def radius_coverage(text: "TextModel", concept: str, *, radius: float, space: str = "token",
                    template: str = "{}", phrases: Sequence[tuple[str, str]] = (),
                    min_cosine: float | None = None, token_limit: int = DEFAULT_TOKEN_LIMIT) -> RadiusCoverage:
    """Decode ``concept``'s radius: nearest vocabulary tokens and the distance of each ``(phrase, role)``."""
    from policykit.realera.prompts import locate_concept

    tokens = []
    if space == "token":
        located = locate_concept(text.tokenizer, template, concept)
        for t in tokens_within_radius(text, located, radius, min_cosine, limit=token_limit):
            tokens.append({"token": t.token, "token_id": t.token_id, "span_index": t.span_index,
                           "distance": round(t.relative_distance, 6)})
    unique: dict[str, str] = {}
    for phrase, role in phrases:
        if phrase.strip() and phrase != concept:
            unique.setdefault(phrase, role)
    found = []
    if unique:
        for d in phrase_distances(text, template, concept, list(unique), radius, space):
            found.append({"phrase": d.phrase, "role": unique[d.phrase], "distance": round(d.relative_distance, 6),
                          "inside": bool(d.inside)})
    found.sort(key=lambda p: (p["distance"], p["phrase"]))
    return RadiusCoverage(concept=concept, template=template, radius=radius, space=space, min_cosine=min_cosine,
                          tokens=tokens, phrases=found)


def plan_phrases(plan, index: int) -> list[tuple[str, str]]:
    """The phrases of a plan worth measuring against erase entry ``index``: its synonyms and
    associated words, every preserve, every probe's concept, and the other erase entries."""
    entry = plan.erase[index]
    phrases = [(s, "synonym") for s in entry.synonyms] + [(a, "associated") for a in entry.associated]
    phrases += [(p.concept, "preserve") for p in plan.preserve]
    phrases += [(p.concept, "probe") for p in plan.probes]
    phrases += [(e.concept, "erase") for i, e in enumerate(plan.erase) if i != index]
    return phrases


def plan_coverage(plan, text: "TextModel", token_limit: int = DEFAULT_TOKEN_LIMIT) -> list[RadiusCoverage]:
    """:func:`radius_coverage` for every erase entry of a compiled plan (its own radius, space and first template)."""
    out = []
    for i, entry in enumerate(plan.erase):
        n = entry.neighbors
        out.append(radius_coverage(text, entry.concept, radius=n.radius, space=n.space,
                                   template=entry.templates[0], phrases=plan_phrases(plan, i),
                                   min_cosine=n.min_cosine, token_limit=token_limit))
    return out


def find_conflicts(loaded, graph, plan, text: "TextModel") -> list:
    """Add a ``preserve-inside-radius`` conflict to ``graph`` for every preserve inside an erase radius.

    ``loaded`` places each diagnostic at the preserve entry; returns the new diagnostics.
    """
    from policykit.policy.schema import normalize_concept

    diagnostics = []
    preserve_index = {p.concept: k for k, p in enumerate(plan.preserve)}
    for i, coverage in enumerate(plan_coverage(plan, text, token_limit=0)):
        for hit in coverage.inside():
            if hit["role"] != "preserve":
                continue
            k = preserve_index[hit["phrase"]]
            file, line, col = loaded.position(("preserve", k, "concept"))
            message = (f"preserved {hit['phrase']!r} lies inside the erase radius of {coverage.concept!r} "
                       f"(erase[{i}]): relative distance {hit['distance']:.3g} <= radius {coverage.radius:g} "
                       f"in {coverage.space} space; mined neighbors will erase around it. Lower "
                       f"erase[{i}].neighbors.radius below {hit['distance']:.3g} or drop the preserve")
            diagnostics.append(graph.add_conflict(normalize_concept(hit["phrase"]), normalize_concept(coverage.concept),
                                                  code=PRESERVE_INSIDE_RADIUS, message=message, severity="warning",
                                                  location=(str(file), line, col)))
    return diagnostics


def load_text_model(path: str | Path) -> "TextModel":
    """The :class:`~policykit.models.text.TextModel` of the diffusers pipeline directory at ``path``
    (tokenizers and text encoders only; offline, CPU, eval).

    Cached per process: ``plan`` over many policies naming one model loads it once.
    """
    return _load_text_model(str(Path(path).resolve()))


@lru_cache(maxsize=4)
def _load_text_model(path: str) -> "TextModel":
    from transformers.utils import logging as transformers_logging

    from policykit.models.text import load_text_model as load

    transformers_logging.disable_progress_bar()  # plan's stderr is for diagnostics, not loading bars
    return load(path)
