"""Stage 3: closed-form cross-attention refinement (CFR), docs/method.md.

For every edited projection ``W`` (``out x d``, applied to text embeddings)::

    W' = argmin  sum alpha ||W' e - W e*||^2 + sum beta ||W' p - W p||^2 + lambda ||W' - W||_F^2
       = W (lambda I + sum alpha e* e^T + sum beta p p^T) (lambda I + sum alpha e e^T + sum beta p p^T)^-1
       = W R

The right factor ``R`` (``d x d``) does not depend on the layer: it is solved
once, in float64, with a Cholesky factorization of the symmetric positive
definite right-hand matrix, and every layer is then one matrix product. The
Gram matrices are accumulated pair by pair in :class:`ClosedFormSystem`, so
hundreds of concepts enter one solve without ever holding all their
embeddings at once.

Conventions
    Embeddings are rows: ``e``, ``e*``, ``p`` are ``(n, d)`` tensors (flatten
    ``(batch, positions, d)`` first with :func:`rows`). ``alpha``/``beta`` are a
    scalar or one weight per row. Weights are returned as a dict
    ``"<module name>.weight" -> tensor`` in the layer's own dtype and device:
    the keys of the U-Net's ``state_dict``, which is what the delta artifact
    stores and :func:`policykit.realera.edit.apply_weights` loads.

Which layers
    :func:`find_cross_attention_projections` takes every diffusers ``Attention``
    module that attends to the text (``is_cross_attention``) and whose
    ``to_k``/``to_v`` input width is the text encoder's hidden size. That finds
    ``attn2`` in SD 1.x/2.x U-Nets of any width and depth without relying on
    module names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from policykit.realera.runner import TypedOutput

if TYPE_CHECKING:  # torch stays out of `import policykit`
    import torch

    from policykit.realera.encoding import ErasePairs, PreserveRows

#: Projections the closed form may edit: the ones applied to text embeddings.
EDITABLE_PROJECTIONS = ("to_k", "to_v")


def rows(embeddings: "torch.Tensor") -> "torch.Tensor":
    """``(..., d)`` embeddings as ``(n, d)`` rows."""
    return embeddings.reshape(-1, embeddings.shape[-1])


def find_cross_attention_projections(unet, text_hidden_size: int | None = None,
                                     targets: Sequence[str] = EDITABLE_PROJECTIONS) -> dict:
    """The text-facing ``Linear`` projections of every cross-attention layer, by module name.

    ``text_hidden_size`` defaults to the U-Net's ``cross_attention_dim``.
    Raises ``ValueError`` for an unknown target or a U-Net with no such layer.
    """
    from diffusers.models.attention_processor import Attention

    unknown = [t for t in targets if t not in EDITABLE_PROJECTIONS]
    if unknown:
        raise ValueError(f"closed form can edit only {EDITABLE_PROJECTIONS}, not {unknown}")
    if text_hidden_size is None:
        text_hidden_size = _cross_attention_dim(unet)
    found = {}
    for name, module in unet.named_modules():
        if not isinstance(module, Attention) or not getattr(module, "is_cross_attention", False):
            continue
        for target in targets:
            linear = getattr(module, target, None)
            if linear is not None and _base_linear(linear).in_features == text_hidden_size:
                found[f"{name}.{target}"] = _base_linear(linear)
    if not found:
        raise ValueError(f"no cross-attention {list(targets)} projections with input width {text_hidden_size} "
                         "in this U-Net")
    return found


def _cross_attention_dim(unet) -> int:
    dim = unet.config.cross_attention_dim
    if isinstance(dim, (list, tuple)):
        if len(set(dim)) != 1:
            raise ValueError(f"U-Net has several cross_attention_dim values {dim}; pass text_hidden_size")
        dim = dim[0]
    return int(dim)


def _base_linear(module):
    # A peft-wrapped projection keeps the original Linear as `base_layer`.
    return getattr(module, "base_layer", module)


#: Rows converted to float64 at a time when accumulating the Gram matrices.
CHUNK_ROWS = 16384


@dataclass
class ClosedFormSystem:
    """The three Gram matrices of the closed form, accumulated in float64.

    ``cross = sum alpha e* e^T``, ``erase = sum alpha e e^T``,
    ``preserve = sum beta p p^T``, and ``target = sum alpha e* e*^T`` (only for
    :meth:`residuals`); ``d`` is the text hidden size.
    """

    d: int
    device: "torch.device | str" = "cpu"
    cross: "torch.Tensor" = field(init=False)
    erase: "torch.Tensor" = field(init=False)
    preserve: "torch.Tensor" = field(init=False)
    target: "torch.Tensor" = field(init=False)
    n_erase: int = field(init=False, default=0)
    n_preserve: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        import torch

        zeros = lambda: torch.zeros(self.d, self.d, dtype=torch.float64, device=self.device)  # noqa: E731
        self.cross, self.erase, self.preserve, self.target = zeros(), zeros(), zeros(), zeros()

    def add_erase(self, embeddings: "torch.Tensor", targets: "torch.Tensor", alpha=1.0) -> None:
        """Add pairs: rows ``embeddings[i]`` must map to where ``targets[i]`` maps now, weight ``alpha``.

        Rows are taken :data:`CHUNK_ROWS` at a time, so the float64 copies stay small
        whatever the number of concepts (1,000 concepts are ~360,000 rows).
        """
        e, e_star = rows(embeddings), rows(targets)
        if e.shape != e_star.shape:
            raise ValueError(f"erase embeddings {tuple(e.shape)} and targets {tuple(e_star.shape)} differ in shape")
        self._check_width(e)
        weights = self._weights(alpha, e.shape[0])
        for start in range(0, e.shape[0], CHUNK_ROWS):
            stop = start + CHUNK_ROWS
            chunk, target = self._float64(e[start:stop]), self._float64(e_star[start:stop])
            weighted = chunk * weights[start:stop, None]
            self.cross += target.T @ weighted
            self.erase += chunk.T @ weighted
            self.target += target.T @ (target * weights[start:stop, None])
            del chunk, target, weighted  # free this chunk's copies before the next one is made
        self.n_erase += e.shape[0]

    def add_preserve(self, embeddings: "torch.Tensor", beta=1.0) -> None:
        """Add rows that must keep their projection, weight ``beta`` (in chunks, like :meth:`add_erase`)."""
        p = rows(embeddings)
        self._check_width(p)
        weights = self._weights(beta, p.shape[0])
        for start in range(0, p.shape[0], CHUNK_ROWS):
            chunk = self._float64(p[start:start + CHUNK_ROWS])
            self.preserve += chunk.T @ (chunk * weights[start:start + CHUNK_ROWS, None])
            del chunk
        self.n_preserve += p.shape[0]

    def right_factor(self, lam: float) -> "torch.Tensor":
        """``R`` (float64, ``d x d``) with ``W' = W R`` for every layer."""
        import torch

        if lam < 0:
            raise ValueError(f"lambda must be >= 0, got {lam}")
        eye = torch.eye(self.d, dtype=torch.float64, device=self.device)
        left = lam * eye + self.cross + self.preserve
        right = lam * eye + self.erase + self.preserve
        # R = left @ right^-1  <=>  R^T = right^-1 @ left^T  (right is symmetric positive definite).
        factor, info = torch.linalg.cholesky_ex(right)
        if int(info) != 0:
            raise ValueError(f"the closed-form system is not positive definite at lambda {lam}; raise lambda")
        return torch.cholesky_solve(left.T.contiguous(), factor).T

    def _check_width(self, x: "torch.Tensor") -> None:
        if x.shape[-1] != self.d:
            raise ValueError(f"embeddings have width {x.shape[-1]}, the system {self.d}")

    def _float64(self, x: "torch.Tensor") -> "torch.Tensor":
        import torch

        return x.to(device=self.device, dtype=torch.float64)

    def _weights(self, weight, n: int) -> "torch.Tensor":
        import torch

        w = torch.as_tensor(weight, dtype=torch.float64, device=self.device)
        if w.ndim == 0:
            w = w.expand(n)
        if w.shape != (n,):
            raise ValueError(f"expected a scalar or {n} weights, got shape {tuple(w.shape)}")
        if bool((w < 0).any()):
            raise ValueError("weights must be >= 0")
        return w


    def residuals(self, weights: Mapping[str, "torch.Tensor"], edited: Mapping[str, "torch.Tensor"]) -> dict[str, float]:
        """How well the solve did, from the Gram matrices (no rows kept), summed over layers.

        ``weights``/``edited``: each layer's ``W`` and ``W'`` by the same key.
        ``erase_residual_before`` / ``erase_residual``: ``sqrt(sum alpha ||W e - W e*||^2 / sum alpha ||W e*||^2)``
        with the base and the refined ``W``; ``preserve_drift``: ``sqrt(sum beta ||(W' - W) p||^2 / sum beta ||W p||^2)``.
        """
        import torch

        def quad(a, gram, b):  # sum over rows x of (a x) . (b x) = tr(a G b^T)
            return float(((a @ gram) * b).sum())

        before = after = scale = drift = kept = 0.0
        cross_t = self.cross.T  # sum alpha e e*^T
        for key, weight in weights.items():
            w = weight.to(self.device, torch.float64)
            w2 = edited[key].to(self.device, torch.float64)
            scale += quad(w, self.target, w)
            before += quad(w, self.erase, w) - 2 * quad(w, cross_t, w) + quad(w, self.target, w)
            after += quad(w2, self.erase, w2) - 2 * quad(w2, cross_t, w) + quad(w, self.target, w)
            diff = w2 - w
            drift += quad(diff, self.preserve, diff)
            kept += quad(w, self.preserve, w)
        ratio = lambda a, b: round(max(a, 0.0) ** 0.5 / max(b, 1e-300) ** 0.5, 6)  # noqa: E731
        return {"erase_residual_before": ratio(before, scale), "erase_residual": ratio(after, scale),
                "preserve_drift": ratio(drift, kept)}

def refine_weights(projections: Mapping[str, "torch.nn.Linear"], right_factor: "torch.Tensor") -> dict:
    """``W R`` for every projection, in float64 on ``right_factor``'s device (the model is not modified).

    Returns ``{"<name>.weight": tensor}``. Kept in float64: the stage stores ``W R - W`` taken from
    these, since a delta taken after casting ``W R`` back to a half-precision layer would carry that
    rounding into every later stage.
    """
    import torch

    with torch.no_grad():
        return {f"{name}.weight": linear.weight.detach().to(right_factor.device, torch.float64) @ right_factor
                for name, linear in projections.items()}


def closed_form_refine(unet, erase: Iterable[tuple], preserve: Iterable[tuple], lam: float,
                       targets: Sequence[str] = EDITABLE_PROJECTIONS, device=None) -> dict:
    """Solve the closed form for ``unet`` and return the edited weights (the U-Net is not modified).

    ``erase`` yields ``(embeddings, anchor_embeddings, alpha)`` and ``preserve``
    yields ``(embeddings, beta)``; every tensor is ``(..., d)``. ``device``
    (default: the U-Net's) is where the float64 solve runs.
    """
    projections = find_cross_attention_projections(unet, targets=targets)
    d = next(iter(projections.values())).in_features
    system = ClosedFormSystem(d, device=device or next(unet.parameters()).device)
    for e, e_star, alpha in erase:
        system.add_erase(e, e_star, alpha)
    for p, beta in preserve:
        system.add_preserve(p, beta)
    edited = refine_weights(projections, system.right_factor(lam))
    return {k: v.to(projections[k[:-len(".weight")]].weight.dtype) for k, v in edited.items()}


# ---------------------------------------------------------------- the stage

@dataclass
class WeightDelta(TypedOutput):
    """An edit of U-Net weights: ``delta`` is ``W' - W`` (float32, CPU) by ``state_dict`` key."""

    delta: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def run(plan, pipeline, settings, *, erase: "ErasePairs", preserve: "PreserveRows",
        mined: "ErasePairs | None" = None, shell: "PreserveRows | None" = None) -> WeightDelta:
    """Stage 3 on a plan: ONE solve for every concept, applied to every edited projection.

    ``settings`` is the plan's :class:`~policykit.realera.settings.ClosedFormSettings`. The rows are
    built by the caller under ``settings.rows`` (``erase``/``preserve``: the plan's phrases under
    policykit's rules, :mod:`.encoding`, or a peer's, :mod:`.peer_rows`); ``mined`` and ``shell``
    (stages 1 and 2) join them when the settings say so. Added in this order, always: the erase
    pairs, the mined pairs, the preserves, the shell (the float64 sums are then reproducible).
    """
    import torch

    projections = find_cross_attention_projections(pipeline.unet, targets=settings.targets)
    d = next(iter(projections.values())).in_features
    system = ClosedFormSystem(d, device=next(pipeline.unet.parameters()).device)
    for pairs in (erase, mined if settings.use_mined_neighbors else None):
        if pairs is not None and pairs.rows.shape[0]:
            system.add_erase(pairs.rows, pairs.targets, pairs.alpha * settings.erase_scale)
    for rows in (preserve, shell if settings.use_beyond_concept else None):
        if rows is not None and rows.rows.shape[0]:
            system.add_preserve(rows.rows, rows.beta)
    right = system.right_factor(settings.lambda_)
    edited = refine_weights(projections, right)
    weights = {f"{name}.weight": linear.weight.detach() for name, linear in projections.items()}
    delta = {k: (edited[k] - weights[k].to(right.device, torch.float64)).float().cpu() for k in edited}
    info = {"erase_rows": system.n_erase, "preserve_rows": system.n_preserve, "layers": len(projections),
            **system.residuals(weights, edited)}
    return WeightDelta(delta=delta, info=info)
