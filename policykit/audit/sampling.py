"""Which prompts the audit generates, and generating them reproducibly.

Every image has its own seed, derived from the audit seed, the prompt and
the image's index, so the base and the edited model see the same initial
noise for the same prompt whatever the batch size: differences between the
two grids are the edit's doing.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from policykit.audit.classifiers import ConceptClassifier
from policykit.audit.metrics import PromptOutcome, Role
from policykit.audit.report import PromptImages


@dataclass(frozen=True)
class AuditPrompt:
    """One prompt of the audit: what is generated, what is looked for, and why."""

    prompt: str
    concept: str
    role: Role


_ARTICLE_BEFORE_SLOT = re.compile(r"\b([Aa]) \{\}")


def fill_template(template: str, phrase: str) -> str:
    """``template`` with ``phrase`` in its ``{}``, the article agreeing: ``"a {}"`` + ``apple`` gives
    ``"an apple"`` (a phrase starting with a vowel letter takes "an"; the rule goes by spelling,
    so "a unicorn" reads "an unicorn": write such a template with the article inside the phrase)."""
    if phrase and phrase[0].lower() in "aeiou":
        template = _ARTICLE_BEFORE_SLOT.sub(lambda m: m.group(1) + "n {}", template)
    return template.format(phrase)


def audit_prompts(plan) -> list[AuditPrompt]:
    """The audit's prompts for a compiled plan.

    Each erased concept in every one of its templates; each synonym,
    associated word and preserve in one template (rotating through them, to
    keep the audit's cost linear in the number of phrases); each probe as written.
    """
    prompts: list[AuditPrompt] = []
    for concept in plan.erase:
        templates = list(concept.templates)
        prompts += [AuditPrompt(fill_template(t, concept.concept), concept.concept, "erased") for t in templates]
        phrases = [(s, "synonym") for s in concept.synonyms] + [(a, "associated") for a in concept.associated]
        for i, (phrase, role) in enumerate(phrases):
            prompts.append(AuditPrompt(fill_template(templates[(i + 1) % len(templates)], phrase), concept.concept,
                                       role))
    templates = list(plan.erase[0].templates) if plan.erase else ["{}"]
    for i, preserve in enumerate(plan.audited_preserves()):
        prompts.append(AuditPrompt(fill_template(templates[i % len(templates)], preserve.concept), preserve.concept,
                                   "preserved"))
    for probe in plan.probes:
        role: Role = "probe-erased" if probe.expect == "erased" else "probe-preserved"
        prompts.append(AuditPrompt(probe.prompt, probe.concept, role))
    return list(dict.fromkeys(prompts))  # a phrase listed twice is generated once


#: Held-out mined neighbours audited per erased concept (drawn from a stream training never uses).
NEIGHBORS_PER_CONCEPT = 2


def neighbor_conditionings(plan, pipe, *, seed: int, per_concept: int = NEIGHBORS_PER_CONCEPT):
    """Held-out neighbours of every erased concept, as prompts of role ``neighbor`` and their
    conditionings ``(n, S, d)``.

    Drawn like mining draws (same space, radius and cosine floor, first
    template) but from the ``audit`` random stream, so they are neighbours the
    edit never saw: they measure whether the erased *region*, not just the
    listed phrases, stays erased.
    """
    import torch

    from policykit.models.text import text_model
    from policykit.realera.mining import mine_samples

    prompts: list[AuditPrompt] = []
    sequences = []
    for concept in plan.erase:
        n = concept.neighbors
        if per_concept <= 0 or n.radius <= 0:
            continue
        with torch.no_grad():
            mined = mine_samples(text_model(pipe), concept.templates[:1], concept.concept,
                                 concept.anchor, count=per_concept, low=0.0, high=n.radius, seed=seed,
                                 space=n.space, min_cosine=n.min_cosine, purpose="audit")
        for template in mined.templates:
            for i in range(template.sequences.shape[0]):
                rho = float(template.relative_radius[i])
                prompts.append(AuditPrompt(f"{template.aligned.concept.prompt} [held-out neighbour {i + 1}: "
                                           f"{n.space} space, relative distance {rho:.2f}]",
                                           concept.concept, "neighbor"))
                sequences.append(template.sequences[i])
    if not sequences:
        return [], None
    return prompts, torch.stack(sequences)


def image_seed(seed: int, prompt: str, index: int) -> int:
    """The seed of image ``index`` of ``prompt``: independent of batching and order."""
    from policykit.hashing import derived_seed

    return derived_seed(f"{seed}\x00{prompt}\x00{index}")


def generate(pipe, prompts: Sequence[str], *, per_prompt: int, seed: int, steps: int, guidance: float,
             batch_size: int = 16, on_batch: Callable[[int], None] | None = None, conditionings=None) -> np.ndarray:
    """``per_prompt`` images for each prompt as (len(prompts), per_prompt, H, W, 3) uint8.

    With ``conditionings`` (``(len(prompts), S, d)``), image ``i`` is drawn from
    that text-encoder output instead of encoding ``prompts[i]``, which then only
    names it (and seeds it).
    """
    import torch

    from policykit.distributed import current
    from policykit.models.text import text_model

    procs = current()
    jobs = [(p, j) for p in prompts for j in range(per_prompt)]
    rows = [i for i in range(len(prompts)) for _ in range(per_prompt)]
    device = getattr(pipe, "device", torch.device("cpu"))
    gen_device = "cpu" if device.type == "mps" else device

    starts = list(range(0, len(jobs), batch_size))

    def draw(start: int) -> np.ndarray:
        batch = jobs[start:start + batch_size]
        generators = [torch.Generator(gen_device).manual_seed(image_seed(seed, p, j)) for p, j in batch]
        if conditionings is None:
            text = {"prompt": [p for p, _ in batch]}
        else:
            embeds = conditionings[rows[start:start + batch_size]].to(device=device, dtype=pipe.text_encoder.dtype)
            text = text_model(pipe).pipeline_inputs(embeds)
        with torch.no_grad():
            out = pipe(**text, num_inference_steps=steps, guidance_scale=guidance,
                       generator=generators, output_type="np")
        if on_batch is not None and procs.main:
            # the main process reports its batch and the ones the others draw beside it (one round)
            index = start // batch_size
            on_batch(sum(len(jobs[s:s + batch_size]) for s in starts[index:index + procs.count]))
        return np.clip(np.round(np.asarray(out.images) * 255.0), 0, 255).astype(np.uint8)

    # Whole batches are shared out over the processes (policykit.distributed) and gathered back in order:
    # every image has its own seed and every batch holds the same images at any number of processes.
    chunks = procs.map_batches(starts, draw, "images", size=lambda start: len(jobs[start:start + batch_size]))
    images = np.concatenate(chunks)
    return images.reshape(len(prompts), per_prompt, *images.shape[1:])


def grid_png(images: np.ndarray, columns: int = 8, scale: int = 1) -> bytes:
    """A row-major grid of (N, H, W, 3) uint8 images as PNG bytes (1 px gaps)."""
    from PIL import Image

    n, h, w, _ = images.shape
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    canvas = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        canvas[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = image
    picture = Image.fromarray(canvas)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    picture.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def classify_outcomes(prompts: Sequence[AuditPrompt], before: np.ndarray, after: np.ndarray,
                      classifier: ConceptClassifier, *, grid_scale: int = 1) -> list[PromptImages]:
    """Classify each prompt's images from the base (``before``) and edited (``after``) model.

    ``before``/``after``: (len(prompts), per_prompt, H, W, 3) uint8, as :func:`generate` returns.
    """
    results = []
    for prompt, images_before, images_after in zip(prompts, before, after, strict=True):
        n = len(images_before)
        results.append(PromptImages(
            PromptOutcome(prompt.prompt, prompt.concept, prompt.role, n, sum(classifier.shows(images_before, prompt.concept))),
            PromptOutcome(prompt.prompt, prompt.concept, prompt.role, n, sum(classifier.shows(images_after, prompt.concept))),
            grid_png(images_before, scale=grid_scale), grid_png(images_after, scale=grid_scale)))
    return results
