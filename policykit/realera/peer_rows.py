"""The closed form's rows as the peer methods build them: UCE's and MACE's (docs/method.md, "Presets").

Every closed form here has one shape, solved by
:class:`~policykit.realera.closed_form.ClosedFormSystem`: rows ``e`` mapped to
where the *unedited* layer sends targets ``e*`` (``W' e ~ W e*``, weight
``alpha``), preserve rows kept (``W' p ~ W p``, weight ``beta``), and the
ridge ``lambda ||W' - W||^2``. The methods differ in which prompts they
encode and which positions of them become rows. Positions below are indices
into the padded token sequence: 0 is BOS, then the words, then EOS, then
padding (SD 1.x pads with the EOS id).

UCE (Gandikota et al., WACV 2024; the paper's code, ``edit_model``)
    Each erased phrase is encoded bare (no template), and so is its guide
    (the entry's anchor; ``""`` is encoded as ``" "``, the same tokens). With
    ``k`` the index of a sequence's last word token (``mask.sum() - 2``; 0 for
    the empty prompt) and ``far = max(k_o, k_g)``, the rows are positions
    ``k_o, ..., L-1-(far-k_o)`` of the phrase, paired one for one with
    positions ``k_g, ..., L-1-(far-k_g)`` of the guide: the last word, EOS and
    the padding, trimmed at the end to equal length. Earlier tokens of the
    phrase are not rows. Preserve rows: every position of ``""`` and of each
    policy preserve (bare), all weighing ``preserve_scale`` (default
    ``max(0.1, 1 / (1 + preserves))``, as the authors' script sets it).

MACE (Lu et al., CVPR 2024; ``prepare_k_v`` and ``closed_form_refinement``)
    Each erased phrase and its anchor are filled into the same templates
    (MACE's 30 object or 30 style templates, :data:`MACE_OBJECT_TEMPLATES`).
    Of the two unpadded token lists, the common prefix (BOS, template words
    before the concept) and the common suffix (tokens the concept shares with
    the anchor at its end, template words after it, EOS) are rows, each paired
    with the same-role position of the anchor prompt; the differing middle
    (the concept's own tokens) is left to MACE's LoRA stage. Padding is paired
    EOS-relative, the longer prompt's tail cut. Preserve rows: every position
    of each policy preserve (bare), weight ``preserve_scale`` (MACE's
    ``train_preserve_scale ** 2 * preserve_weight``, see :mod:`.presets`).
    A template whose prompt does not fit the tokenizer is skipped (MACE's
    code would fail on it); the count is reported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from policykit.realera.encoding import ErasePairs, PreserveRows

#: MACE's object templates (its ``prompt_augmentation``, the 30 it samples), used for objects,
#: people and explicit content. The template strings are data from the authors' repository.
MACE_OBJECT_TEMPLATES = (
    "{} in a photo", "{} in a snapshot", "A snapshot of {}", "A photograph showcasing {}", "An illustration of {}",
    "A digital rendering of {}", "A visual representation of {}", "A graphic of {}", "A shot of {}",
    "A photo of {}", "A black and white image of {}", "A depiction in portrait form of {}",
    "A scene depicting {} during a public gathering", "{} captured in an image",
    "A depiction created with oil paints capturing {}", "An image of {}",
    "A drawing capturing the essence of {}", "An official photograph featuring {}", "A detailed sketch of {}",
    "{} during sunset/sunrise", "{} in a detailed portrait", "An official photo of {}", "Historic photo of {}",
    "Detailed portrait of {}", "A painting of {}", "HD picture of {}", "Magazine cover capturing {}",
    "Painting-like image of {}", "Hand-drawn art of {}", "An oil portrait of {}",
)
#: MACE's style templates (the 30 it samples for artistic styles).
MACE_STYLE_TEMPLATES = (
    "An artwork by {}", "Art piece by {}", "A recent creation by {}", "{}'s renowned art",
    "Latest masterpiece by {}", "A stunning image by {}", "An art in {}'s style", "Exhibition artwork of {}",
    "Art display by {}", "a beautiful painting by {}", "An image inspired by {}'s style", "A sketch by {}",
    "Art piece representing {}", "A drawing by {}", "Artistry showcasing {}", "An illustration by {}",
    "A digital art by {}", "A visual art by {}", "A reproduction inspired by {}'s colorful, expressive style",
    "Famous painting of {}", "A famous art by {}", "Artistic style of {}", "{}'s famous piece",
    "Abstract work of {}", "{}'s famous drawing", "Art from {}'s early period", "A portrait by {}",
    "An imitation reflecting the style of {}", "An painting from {}'s collection",
    "Vibrant reproduction of artwork by {}",
)


# ---------------------------------------------------------------- positions (pure token arithmetic)

def uce_positions(phrase_mask: Sequence[int], guide_mask: Sequence[int]) -> tuple[list[int], list[int]]:
    """UCE's paired positions from two padded attention masks (same length ``L``)."""
    length = len(phrase_mask)
    k_o, k_g = sum(phrase_mask) - 2, sum(guide_mask) - 2
    far = max(k_o, k_g)
    return list(range(k_o, length - (far - k_o))), list(range(k_g, length - (far - k_g)))


def mace_positions(phrase_ids: Sequence[int], anchor_ids: Sequence[int], length: int) -> tuple[list[int], list[int]]:
    """MACE's paired positions from two unpadded token lists (BOS ... EOS) and the padded length ``L``."""
    a, b = list(phrase_ids), list(anchor_ids)
    prefix = 0
    while prefix < min(len(a), len(b)) and a[prefix] == b[prefix]:
        prefix += 1
    i, j = len(a) - 1, len(b) - 1
    while i >= prefix and j >= prefix and a[i] == b[j]:
        i, j = i - 1, j - 1
    old = list(range(prefix)) + list(range(i + 1, len(a)))
    new = list(range(prefix)) + list(range(j + 1, len(b)))
    # padding, EOS-relative: the prompt whose EOS sits later runs out of positions first
    eos_old, eos_new = old[-1], new[-1]
    shift = abs(eos_old - eos_new)
    old += list(range(eos_old + 1, length - (shift if eos_old < eos_new else 0)))
    new += list(range(eos_new + 1, length - (shift if eos_new < eos_old else 0)))
    return old, new


# ---------------------------------------------------------------- rows

def _encode(pipeline, prompts: Sequence[str]):
    """``(conditionings (n, S, d), attention masks (n, L), unpadded ids)`` of ``prompts``.

    Token positions are ``< L``; an SDXL conditioning has its pooled row at ``L``
    (:class:`~policykit.models.text.TextModel`), which no rule reads.
    """
    from policykit.models.text import text_model
    from policykit.realera.encoding import encode_ids
    from policykit.realera.prompts import tokenize

    text = text_model(pipeline)
    batch = tokenize(text.tokenizer, prompts)
    embeddings = encode_ids(text, batch.input_ids, batch.attention_mask).float()
    masks = batch.attention_mask.tolist()
    ids = [row[:sum(m)] for row, m in zip(batch.input_ids.tolist(), masks)]
    return embeddings, masks, ids


def fits_tokenizer(pipeline, prompt: str) -> bool:
    """True when ``prompt`` is not cut off by the tokenizer (its EOS is inside the maximum length)."""
    return len(pipeline.tokenizer(prompt, verbose=False).input_ids) <= pipeline.tokenizer.model_max_length


def preserve_rows_bare(pipeline, phrases: Sequence[str], weight: float) -> "PreserveRows":
    """Every position of each phrase (bare), weight ``weight``."""
    import torch

    from policykit.models.text import text_model
    from policykit.realera.encoding import PreserveRows

    text = text_model(pipeline)
    width = text.width
    if not phrases or weight <= 0:
        return PreserveRows(rows=torch.zeros(0, width), beta=torch.zeros(0),
                            sequences=torch.zeros(0, text.sequence_length, width))
    embeddings, _, _ = _encode(pipeline, phrases)
    rows = embeddings[:, :text.length].reshape(-1, width)
    return PreserveRows(rows=rows, beta=torch.full((rows.shape[0],), float(weight)), sequences=embeddings)


def _pairs(pipeline, prompts: list[tuple[str, str, float]], rule: str) -> tuple["ErasePairs", int]:
    """Erase pairs of ``(phrase prompt, anchor prompt, weight)`` under ``rule``; returns them and the
    number of prompt pairs skipped because they do not fit the tokenizer."""
    import torch

    from policykit.models.text import text_model
    from policykit.realera.encoding import ErasePairs

    text = text_model(pipeline)
    length, width = text.length, text.width
    kept = [p for p in prompts if fits_tokenizer(pipeline, p[0]) and fits_tokenizer(pipeline, p[1])]
    rows, targets, alpha = [], [], []
    if kept:
        phrase_emb, phrase_masks, phrase_ids = _encode(pipeline, [p[0] for p in kept])
        anchor_emb, anchor_masks, anchor_ids = _encode(pipeline, [p[1] for p in kept])
        for n, (_, _, weight) in enumerate(kept):
            if rule == "uce":
                old, new = uce_positions(phrase_masks[n], anchor_masks[n])
            else:
                old, new = mace_positions(phrase_ids[n], anchor_ids[n], length)
            rows.append(phrase_emb[n, old])
            targets.append(anchor_emb[n, new])
            alpha += [weight] * len(old)
    empty = torch.zeros(0, text.sequence_length, width)
    cat = lambda parts: torch.cat(parts) if parts else torch.zeros(0, width)  # noqa: E731
    return ErasePairs(rows=cat(rows), targets=cat(targets), alpha=torch.tensor(alpha, dtype=torch.float32),
                      sequences=empty, sequence_targets=empty, sequence_alpha=torch.zeros(0)), len(prompts) - len(kept)


def uce_rows(plan, pipeline, settings) -> tuple["ErasePairs", "PreserveRows"]:
    """UCE's rows for every erased phrase of the plan (see the module docstring)."""
    from policykit.realera.encoding import erased_phrases

    prompts = [(p.phrase, p.anchor.strip() or " ", p.strength) for p in erased_phrases(plan)]
    erase, skipped = _pairs(pipeline, prompts, "uce")
    retain = [""] + [p.concept for p in plan.preserve]
    scale = settings.preserve_scale if settings.preserve_scale is not None else max(0.1, 1 / len(retain))
    preserve = preserve_rows_bare(pipeline, retain, scale)
    erase.info = preserve.info = {"skipped_prompts": skipped}
    return erase, preserve


def mace_templates(plan) -> tuple[str, ...]:
    """MACE's templates for a plan: its style templates when every entry is a style, else its object ones."""
    styles = plan.erase and all(e.category == "style" for e in plan.erase)
    return MACE_STYLE_TEMPLATES if styles else MACE_OBJECT_TEMPLATES


def mace_rows(plan, pipeline, settings) -> tuple["ErasePairs", "PreserveRows"]:
    """MACE's closed-form rows for every erased phrase of the plan (see the module docstring)."""
    from policykit.realera.encoding import erased_phrases
    from policykit.realera.prompts import fill_template

    templates = mace_templates(plan)
    prompts = [(fill_template(t, p.phrase), fill_template(t, p.anchor), p.strength)
               for p in erased_phrases(plan) for t in templates]
    erase, skipped = _pairs(pipeline, prompts, "mace")
    if not erase.rows.shape[0]:
        raise ValueError("no MACE template fits the tokenizer's maximum length for these concepts")
    preserve = preserve_rows_bare(pipeline, [p.concept for p in plan.preserve], settings.preserve_scale or 0.0)
    erase.info = preserve.info = {"skipped_prompts": skipped}
    return erase, preserve


def with_vocabulary(preserve: "PreserveRows", plan, pipeline, settings, erase_mass: float) -> "PreserveRows":
    """``preserve`` plus the settings' vocabulary phrases (:func:`.encoding.vocabulary_phrases`), bare,
    every position (the peer rules' way of preserving a phrase), weighing ``vocabulary_weight`` times
    ``erase_mass`` together (:func:`.encoding.vocabulary_row_weight`)."""
    import torch

    from policykit.models.text import text_model
    from policykit.realera.encoding import PreserveRows, erased_phrases, vocabulary_phrases, vocabulary_row_weight

    words = vocabulary_phrases(text_model(pipeline).tokenizer, settings.vocabulary_prompts, settings.seed,
                               [p.phrase for p in erased_phrases(plan)])
    length = text_model(pipeline).length
    extra = preserve_rows_bare(pipeline, words, vocabulary_row_weight(settings.vocabulary_weight, erase_mass,
                                                                      len(words) * length))
    return PreserveRows(rows=torch.cat([preserve.rows, extra.rows]), beta=torch.cat([preserve.beta, extra.beta]),
                        sequences=preserve.sequences, null=preserve.null, info=preserve.info)


def build(rule: str, plan, pipeline, settings) -> tuple["ErasePairs", "PreserveRows"]:
    """``(erase pairs, preserve rows)`` under the ``uce`` or ``mace`` rule."""
    builders = {"uce": uce_rows, "mace": mace_rows}
    if rule not in builders:
        raise ValueError(f"unknown row rule {rule!r} (known: {', '.join(builders)})")
    return builders[rule](plan, pipeline, settings)
