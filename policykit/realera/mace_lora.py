"""MACE's LoRA stage, the second half of the ``mace`` preset (Lu et al., CVPR 2024; docs/method.md, "MACE").

After MACE's closed form (:mod:`.peer_rows`, rule ``mace``) has mapped what a
concept shares with its anchor, one rank-1 LoRA per concept, on the
cross-attention ``to_k`` / ``to_v`` of the refined U-Net, learns to take the
attention off the concept's own tokens::

    L_i = sum over cross-attention layers l  || A_l(z_t, c_i)[:, pixels, P_i] ||_F

``A_l`` the softmax attention probabilities (heads x pixels x tokens) of one
image, ``P_i`` the positions of the concept's tokens in the prompt plus every
position holding the end-of-text id (EOS and, for SD 1.x tokenizers, all
padding). The norm is MACE's: not squared, not averaged. ``pixels`` is the
concept's segmentation mask in MACE (GroundingDINO + SAM); without an external
segmenter it is every pixel, MACE's own ``use_gsam_mask: false`` branch.
Each step: one of ``images_per_concept`` latents the *base* model drew for
``"a photo of the {concept}"``, one of the concept's MACE templates, a
timestep from MACE's importance window ``p(t) ~ sigmoid(0.05 (t - 200)) -
sigmoid(0.05 (t - 400))``, AdamW (weight decay 0.01), gradients clipped at
1.0. The LoRA's down vector starts ``N(0, 1/r)``, its up vector at zero.

Then the LoRAs are fused by a closed form over all concepts at once::

    W* = (lambda W_cfr + sum_i W_i G_i + s W G_P) (lambda I + sum_i G_i + s G_P)^-1

``W_i = W_cfr + B_i A_i`` the concept's LoRA-fused layer, ``G_i`` the Gram
matrix of every position of the concept's template prompts, ``G_P`` that of
the policy's preserves (every position, bare) weighing ``s =
fuse_preserve_scale``, ``W`` the base layer. The stage returns ``W* - W_cfr``.

Not reproduced: MACE re-encodes the generated images through the VAE after
normalising them with ImageNet statistics; here the base model's latents are
used as drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from policykit.realera.closed_form import WeightDelta
from policykit.realera.settings import MaceLoraSettings

if TYPE_CHECKING:
    import torch


def mace_timestep_weights(num_train_timesteps: int = 1000) -> "torch.Tensor":
    """MACE's importance sampling: ``sigmoid(0.05 (t - 200)) - sigmoid(0.05 (t - 400))``, normalised."""
    import torch

    t = torch.arange(num_train_timesteps, dtype=torch.float64)
    w = torch.sigmoid(0.05 * (t - 200)) - torch.sigmoid(0.05 * (t - 400))
    return w / w.sum()


def attention_positions(tokenizer, prompt: str, concept: str) -> list[int]:
    """Positions of ``concept``'s tokens in ``prompt`` (padded) plus every end-of-text position."""
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    own = tokenizer(concept, add_special_tokens=False).input_ids
    span: list[int] = []
    for start in range(1, len(ids) - len(own) + 1):
        if own and ids[start:start + len(own)] == own:
            span = list(range(start, start + len(own)))
            break
    eos = [i for i, token in enumerate(ids) if token == tokenizer.eos_token_id]
    return sorted(set(span) | set(eos))


@dataclass
class _Concept:
    phrase: str
    prompts: list[str]
    conditionings: "torch.Tensor"   # (m, S, d): TextModel conditionings
    positions: list[list[int]]
    latents: "torch.Tensor"         # (n, C, h, w)


def _concepts(plan, pipeline, settings: MaceLoraSettings) -> list[_Concept]:
    from policykit.models.text import text_model
    from policykit.realera.encoding import encode_prompts, erased_phrases
    from policykit.realera.noise_alignment import generate_training_latents
    from policykit.realera.peer_rows import fits_tokenizer, mace_templates
    from policykit.realera.prompts import fill_template

    text = text_model(pipeline)
    out = []
    for i, p in enumerate(erased_phrases(plan)):
        prompts = [q for q in (fill_template(t, p.phrase) for t in mace_templates(plan)) if fits_tokenizer(pipeline, q)]
        if not prompts:
            raise ValueError(f"no MACE template fits the tokenizer's maximum length for {p.phrase!r}")
        latents = generate_training_latents(
            pipeline, [f"a photo of the {p.phrase}"], per_prompt=settings.images_per_concept,
            steps=settings.image_steps, guidance_scale=settings.image_guidance, resolution=settings.resolution,
            seed=settings.seed * 7919 + i)
        out.append(_Concept(p.phrase, prompts, encode_prompts(text, prompts),
                            [attention_positions(text.tokenizer, q, p.phrase) for q in prompts], latents))
    return out


class _RankOneLoras:
    """A LoRA ``W + B A`` on each given Linear, as forward hooks (the U-Net's modules stay plain)."""

    def __init__(self, projections: dict, rank: int, generator: "torch.Generator"):
        import torch

        self.down, self.up, self.handles = {}, {}, []
        for name, linear in projections.items():
            device = linear.weight.device
            self.down[name] = (torch.randn(rank, linear.in_features, generator=generator, dtype=torch.float64)
                               / rank).float().to(device).requires_grad_(True)  # N(0, 1/r): std 1/r
            self.up[name] = torch.zeros(linear.out_features, rank, device=device, requires_grad=True)
            self.handles.append(linear.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def add(_module, inputs, output):
            return output + ((inputs[0].float() @ self.down[name].T) @ self.up[name].T).to(output.dtype)
        return add

    def parameters(self) -> list:
        return list(self.down.values()) + list(self.up.values())

    def product(self, name: str) -> "torch.Tensor":
        """``B A`` of one layer (float64, detached)."""
        return (self.up[name].detach().double() @ self.down[name].detach().double())

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def train_concept(unet, scheduler, concept: _Concept, projections: dict, settings: MaceLoraSettings,
                  generator: "torch.Generator", layers: Sequence[str], text=None) -> tuple[dict, list[float]]:
    """One concept's LoRA: ``{layer: B A}`` (float64) and the losses.

    ``text`` (a :class:`~policykit.models.text.TextModel`) unpacks the conditionings for the U-Net
    (SDXL's added conditions); without it they are passed as the hidden states.
    """
    import torch

    from policykit.realera.noise_alignment import AttentionRecorder, timestep_weights

    device, dtype = next(unet.parameters()).device, next(unet.parameters()).dtype
    weights = (mace_timestep_weights(scheduler.config.num_train_timesteps) if settings.timesteps == "mace"
               else timestep_weights(scheduler.config.num_train_timesteps, "uniform"))
    loras = _RankOneLoras(projections, settings.rank, generator)
    optimizer = torch.optim.AdamW(loras.parameters(), lr=settings.learning_rate, weight_decay=0.01)
    recorder = AttentionRecorder(unet, layers)
    losses = []
    try:
        with recorder.installed():
            for _ in range(settings.steps):
                n = settings.batch_size
                z_idx = torch.randint(concept.latents.shape[0], (n,), generator=generator)
                p_idx = torch.randint(len(concept.prompts), (n,), generator=generator)
                latents = concept.latents[z_idx].float()
                noise = torch.randn(latents.shape, generator=generator)
                t = torch.multinomial(weights, n, replacement=True, generator=generator)
                noisy = scheduler.add_noise(latents, noise, t).to(device, dtype)
                with recorder.recording(slice(0, 1)) as maps:
                    conditioning = concept.conditionings[p_idx].to(device, dtype)
                    unet(noisy, t.to(device), **(text.unet_inputs(conditioning) if text is not None
                                                 else {"encoder_hidden_states": conditioning}))
                    maps = dict(maps)
                positions = concept.positions[int(p_idx[0])]
                loss = sum(m[0][..., positions].float().norm() for m in maps.values())  # first image, MACE's norm
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(loras.parameters(), 1.0)
                optimizer.step()
                losses.append(float(loss.detach()))
        return {name: loras.product(name) for name in projections}, losses
    finally:
        loras.remove()


def run(plan, pipeline, settings: MaceLoraSettings, *, delta: dict, progress: bool = True) -> WeightDelta:
    """MACE's LoRA stage on a plan: train one LoRA per erased phrase on the refined U-Net (``delta``, the
    closed form's edit, on for the stage), fuse them, return ``W* - W_cfr`` for each projection."""
    import torch
    from diffusers import DDPMScheduler
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from policykit.models.text import text_model
    from policykit.realera.closed_form import find_cross_attention_projections
    from policykit.realera.edit import temporary_edit
    from policykit.realera.peer_rows import preserve_rows_bare

    unet, text = pipeline.unet, text_model(pipeline)
    concepts = _concepts(plan, pipeline, settings)   # drawn by the base model, before the edit
    projections = find_cross_attention_projections(unet)
    layers = sorted({name.rsplit(".", 1)[0] for name in projections})
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    generator = torch.Generator().manual_seed(settings.seed)
    base = {name: linear.weight.detach().double().clone() for name, linear in projections.items()}
    unet.requires_grad_(False)
    products, first, last = [], [], []
    with temporary_edit(unet, delta), Progress(TextColumn("MACE LoRAs"), BarColumn(), MofNCompleteColumn(),
                                               transient=True, disable=not progress) as bar:
        task = bar.add_task("mace", total=len(concepts))
        refined = {name: linear.weight.detach().double().clone() for name, linear in projections.items()}
        for concept in concepts:
            product, losses = train_concept(unet, scheduler, concept, projections, settings, generator, layers,
                                            text)
            products.append(product)
            first.append(losses[0])
            last.append(sum(losses[-5:]) / len(losses[-5:]))
            bar.update(task, advance=1)

    # the fusion: one right-hand matrix shared by every layer, a left-hand one per layer
    d = next(iter(projections.values())).in_features
    right = settings.lambda_ * torch.eye(d, dtype=torch.float64)
    left = {name: settings.lambda_ * refined[name] for name in projections}
    for concept, product in zip(concepts, products):
        rows = concept.conditionings[:, :text.length].reshape(-1, d).double().cpu()
        gram = rows.T @ rows
        right += gram
        for name in projections:
            left[name] += (refined[name].cpu() + product[name].cpu()) @ gram
    preserve = preserve_rows_bare(pipeline, [p.concept for p in plan.preserve], settings.fuse_preserve_scale)
    if preserve.rows.shape[0]:
        rows = preserve.rows.double().cpu()
        gram = rows.T @ (rows * preserve.beta.double()[:, None])
        right += gram
        for name in projections:
            left[name] += base[name].cpu() @ gram
    factor, info = torch.linalg.cholesky_ex(right)
    if int(info) != 0:
        raise ValueError(f"MACE's fusion system is not positive definite at lambda {settings.lambda_}")
    out = {}
    for name in projections:
        fused = torch.cholesky_solve(left[name].T.contiguous(), factor).T  # left @ right^-1 (right symmetric)
        out[f"{name}.weight"] = (fused - refined[name].cpu()).float()
    info_out = {"concepts": len(concepts), "steps_per_concept": settings.steps,
                "loss_first": round(sum(first) / len(first), 6), "loss": round(sum(last) / len(last), 6)}
    return WeightDelta(delta=out, info=info_out)
