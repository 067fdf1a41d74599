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
    stores and :func:`apply_weights` loads.

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

if TYPE_CHECKING:  # torch stays out of `import policykit`
    import torch

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
    ``preserve = sum beta p p^T``; ``d`` is the text hidden size.
    """

    d: int
    device: "torch.device | str" = "cpu"
    cross: "torch.Tensor" = field(init=False)
    erase: "torch.Tensor" = field(init=False)
    preserve: "torch.Tensor" = field(init=False)
    n_erase: int = field(init=False, default=0)
    n_preserve: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        import torch

        zeros = lambda: torch.zeros(self.d, self.d, dtype=torch.float64, device=self.device)  # noqa: E731
        self.cross, self.erase, self.preserve = zeros(), zeros(), zeros()

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

        if lam <= 0:
            raise ValueError(f"lambda must be > 0 (it keeps the system solvable), got {lam}")
        eye = torch.eye(self.d, dtype=torch.float64, device=self.device)
        left = lam * eye + self.cross + self.preserve
        right = lam * eye + self.erase + self.preserve
        # R = left @ right^-1  <=>  R^T = right^-1 @ left^T  (right is symmetric positive definite).
        factor, info = torch.linalg.cholesky_ex(right)
        if int(info) != 0:
            raise ValueError("the closed-form system is not positive definite; raise lambda")
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


def refine_weights(projections: Mapping[str, "torch.nn.Linear"], right_factor: "torch.Tensor") -> dict:
    """``W R`` for every projection, computed in float64 and cast back to the layer's dtype.

    Returns ``{"<name>.weight": tensor}``; the model is not modified.
    """
    import torch

    edited = {}
    with torch.no_grad():
        for name, linear in projections.items():
            w = linear.weight
            factor = right_factor.to(device=w.device, dtype=torch.float64)
            edited[f"{name}.weight"] = (w.to(torch.float64) @ factor).to(w.dtype)
    return edited


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
    return refine_weights(projections, system.right_factor(lam))


def apply_weights(module, weights: Mapping[str, "torch.Tensor"]) -> None:
    """Copy ``weights`` (``state_dict`` keys) into ``module`` in place.

    Works on a peft-wrapped U-Net too: ``a.to_k.weight`` also finds
    ``a.to_k.base_layer.weight``. Raises ``KeyError`` for a name the module lacks.
    """
    import torch

    params = dict(module.named_parameters())
    with torch.no_grad():
        for key, value in weights.items():
            target = params.get(key)
            if target is None:
                target = params.get(key.rsplit(".", 1)[0] + ".base_layer.weight")
            if target is None:
                raise KeyError(f"{key} is not a parameter of {type(module).__name__}")
            target.copy_(value.to(device=target.device, dtype=target.dtype))
