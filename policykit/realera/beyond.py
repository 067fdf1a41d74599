"""Stage 2: beyond-concept regularization (BCR), docs/method.md.

Widening the erase region hurts concepts just outside it. BCR samples a shell
beyond the radius, ``radius < rho / ||t|| <= beyond_radius``, around every
erased phrase (with :func:`policykit.realera.mining.mine_samples`, the same
sampler and spaces as mining, its own seeded stream), and adds the samples to
the preserve set of the closed form and of noise alignment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from policykit.realera.mining import MinedSamples, mine_samples
from policykit.realera.prompts import DEFAULT_LEAK_PADDING

if TYPE_CHECKING:
    from policykit.models.text import TextModel


def mine_beyond(text: "TextModel", templates: Sequence[str], concept: str, anchor: str, *, count: int,
                radius: float, beyond_radius: float | None, seed: int, space: str = "token",
                min_cosine: float | None = None, leak_padding: int | None = DEFAULT_LEAK_PADDING, batch_size: int = 32) -> MinedSamples:
    """Stage 2: ``count`` shell samples per template with ``radius < rho/||t|| <= beyond_radius`` (default 2 x radius)."""
    beyond = 2 * radius if beyond_radius is None else beyond_radius
    if beyond <= radius:
        raise ValueError(f"beyond_radius ({beyond}) must be larger than radius ({radius})")
    return mine_samples(text, templates, concept, anchor, count=count, low=radius, high=beyond,
                        seed=seed, space=space, min_cosine=min_cosine, leak_padding=leak_padding,
                        batch_size=batch_size, purpose="beyond")


def run(plan, pipeline, settings, *, leak_padding: int | None, shell_weight: float, batch_size: int = 32):
    """Stage 2 on a plan: the shell samples of every erased phrase as preserve rows.

    ``settings`` is the plan's :class:`~policykit.realera.settings.ShellSettings`; each entry's radius,
    beyond radius, samples and space are its own. All of one phrase's shell samples at one template
    weigh together ``shell_weight`` (each ``shell_weight / beyond_samples``). Returns
    :class:`~policykit.realera.encoding.PreserveRows`.
    """
    import torch

    from policykit.models.text import text_model
    from policykit.realera.encoding import PreserveRows, erased_phrases, stack

    text = text_model(pipeline)
    length, width = text.sequence_length, text.width
    rows, seqs, beta = [], [], []
    drawn = accepted = 0
    for p in erased_phrases(plan):
        n = p.neighbors
        samples = mine_beyond(text, p.templates, p.phrase, p.anchor,
                              count=n.beyond_samples, radius=n.radius, beyond_radius=n.beyond_radius,
                              seed=settings.seed, space=n.space, leak_padding=leak_padding, batch_size=batch_size)
        if samples.count:
            rows.append(samples.embedding_rows())
            beta += [shell_weight / max(1, n.beyond_samples)] * rows[-1].shape[0]
            seqs.append(samples.conditioning_pairs()[0])
        drawn, accepted = drawn + samples.drawn, accepted + samples.count
    shell = PreserveRows(rows=stack(rows, (width,)), beta=torch.tensor(beta, dtype=torch.float32),
                         sequences=stack(seqs, (length, width)))
    shell.info = {"shell_samples": accepted, "preserve_rows": int(shell.rows.shape[0]),
                  "acceptance_rate": round(accepted / drawn, 4) if drawn else 1.0}
    return shell
