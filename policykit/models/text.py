"""The text conditioning of a pipeline, one interface for SD 1.x, SD 2.x and SDXL.

Every stage that encodes text or calls the U-Net goes through a
:class:`TextModel`, so that the stages never ask which architecture they run on:

``encode_ids(ids, mask, token_offset)`` -> a *conditioning* ``(B, S, d)``
    SD 1.x / 2.x: the text encoder's last hidden state, ``S = L`` (the
    tokenizer's maximum length), ``d`` its width.
    SDXL: both encoders' penultimate hidden states concatenated along the
    width (768 + 1280 = 2048 in SDXL), as ``StableDiffusionXLPipeline.encode_prompt``
    computes them, plus **one extra row** at position ``L`` holding the second
    encoder's pooled, projected embedding (1280 wide, zero-padded to ``d``).
    ``S = L + 1``. Carrying the pooled embedding as a row of the same tensor
    lets every stage cache, index, concatenate and pair conditionings exactly
    as for SD 1.x; only the U-Net call and the pipeline call unpack it
    (:meth:`TextModel.unet_inputs`, :meth:`TextModel.pipeline_inputs`).
    Closed-form rows are taken at token positions ``< L`` only, never at the
    pooled row, so the edit sees the 2048-wide rows the cross-attention reads.

Token space (mining and the radius decoder)
    The rows of the token-embedding tables. SDXL has two tables (768 and 1280
    wide) indexed by the same vocabulary; :meth:`TextModel.token_table` puts
    them side by side (``(V, 2048)``), so one perturbation moves a token in
    both encoders' spaces at once, with its radius measured in the joint
    space, and :meth:`encode_ids` splits a ``token_offset`` between the two.

The SDXL tokenizers differ only in padding (the second pads with ``!``, id 0);
ids are made with the first and the second encoder's ids are derived from them
by re-padding, which is exact when the vocabularies are equal (checked at
construction: a model whose vocabularies differ is refused).

The unconditional branch of classifier-free guidance is the encoded empty
prompt, except where the pipeline zeroes it (SDXL's ``force_zeros_for_empty_prompt``):
:meth:`TextModel.unconditional`.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

if TYPE_CHECKING:
    import torch


class TextModelError(ValueError):
    """The pipeline's text encoders cannot be used as one conditioning (a message says why)."""


@dataclass(eq=False)
class TextModel:
    """One or two (tokenizer, text encoder) pairs and how the U-Net reads their outputs."""

    tokenizers: tuple[Any, ...]
    encoders: tuple[Any, ...]
    #: SDXL: the penultimate hidden states (no final layer norm) instead of the last hidden state.
    penultimate: bool = False
    #: SDXL: the last encoder's pooled projection rides as an extra row, read as ``text_embeds``.
    pooled: bool = False
    #: SDXL's ``force_zeros_for_empty_prompt``: the unconditional branch is all zeros.
    zero_unconditional: bool = False
    #: SDXL's micro-conditioning resolution (original size = target size, no crop).
    resolution: int | None = None

    # -- shape

    @property
    def tokenizer(self):
        """The tokenizer that makes every id and position (the first one)."""
        return self.tokenizers[0]

    @property
    def length(self) -> int:
        """``L``: token positions per prompt."""
        return int(self.tokenizer.model_max_length)

    @property
    def sequence_length(self) -> int:
        """``S``: rows per conditioning (``L``, plus the pooled row for SDXL)."""
        return self.length + (1 if self.pooled else 0)

    @property
    def widths(self) -> tuple[int, ...]:
        """Each encoder's hidden width."""
        return tuple(int(e.config.hidden_size) for e in self.encoders)

    @property
    def width(self) -> int:
        """``d``: the width of a conditioning row (the encoders' widths summed)."""
        return sum(self.widths)

    @property
    def pooled_width(self) -> int:
        """Width of the pooled embedding (0 when there is none)."""
        if not self.pooled:
            return 0
        config = self.encoders[-1].config
        return int(getattr(config, "projection_dim", None) or config.hidden_size)

    @property
    def device(self) -> "torch.device":
        return next(self.encoders[0].parameters()).device

    @property
    def dtype(self) -> "torch.dtype":
        return next(self.encoders[0].parameters()).dtype

    # -- token space

    def token_tables(self) -> list["torch.Tensor"]:
        """Each encoder's token-embedding table (live parameters, not copies)."""
        return [e.get_input_embeddings().weight for e in self.encoders]

    def token_table(self) -> "torch.Tensor":
        """The joint token space ``(V, sum of table widths)``, float64 on the CPU, detached."""
        import torch

        return torch.cat([t.detach().to("cpu", torch.float64) for t in self.token_tables()], dim=1)

    @property
    def token_width(self) -> int:
        """Width of the joint token space."""
        return sum(int(t.shape[1]) for t in self.token_tables())

    def token_rows(self, ids: "torch.Tensor") -> "torch.Tensor":
        """Rows of the joint token space for ``ids`` (any shape), in the encoders' dtype and device."""
        import torch

        return torch.cat([t[ids.to(t.device)].detach() for t in self.token_tables()], dim=-1)

    # -- encoding

    def _ids_for(self, index: int, input_ids: "torch.Tensor") -> "torch.Tensor":
        """The ids encoder ``index`` reads: the first tokenizer's, re-padded with its own pad token."""
        import torch

        if index == 0:
            return input_ids
        first, own = self.tokenizers[0], self.tokenizers[index]
        if own.pad_token_id == first.pad_token_id:
            return input_ids
        # Everything after the first end-of-text id is padding in both tokenizers.
        is_eos = input_ids == first.eos_token_id
        after = torch.cumsum(is_eos.int(), dim=1) - is_eos.int() > 0
        return torch.where(after, torch.full_like(input_ids, own.pad_token_id), input_ids)

    def encode_ids(self, input_ids: "torch.Tensor", attention_mask: "torch.Tensor | None" = None,
                   token_offset: "torch.Tensor | None" = None) -> "torch.Tensor":
        """The conditioning ``(B, S, d)`` of token ids made by :attr:`tokenizer` (no gradients).

        The attention mask is passed only to an encoder whose config asks for
        it, as the SD pipelines do. ``token_offset`` ``(B, L, token_width)`` is
        added to the input token embeddings, split between the encoders.
        """
        import torch

        device = self.device
        offsets = [None] * len(self.encoders)
        if token_offset is not None:
            offsets = list(torch.split(token_offset, [int(t.shape[1]) for t in self.token_tables()], dim=-1))
        parts, pooled = [], None
        with torch.no_grad():
            for i, encoder in enumerate(self.encoders):
                mask = None
                if attention_mask is not None and getattr(encoder.config, "use_attention_mask", False):
                    mask = attention_mask.to(device)
                ids = self._ids_for(i, input_ids).to(device)
                with _token_embedding_offset(encoder, offsets[i]):
                    out = encoder(ids, attention_mask=mask, output_hidden_states=self.penultimate)
                parts.append(out.hidden_states[-2] if self.penultimate else out[0])
                if self.pooled and i == len(self.encoders) - 1:
                    pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
        sequences = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
        if not self.pooled:
            return sequences
        row = torch.zeros(sequences.shape[0], 1, sequences.shape[-1], dtype=sequences.dtype, device=sequences.device)
        row[:, 0, :pooled.shape[-1]] = pooled.to(sequences.dtype)
        return torch.cat([sequences, row], dim=1)

    def encode_prompts(self, prompts: Sequence[str], batch_size: int = 64) -> "torch.Tensor":
        """Conditionings ``(len(prompts), S, d)`` in float32 on the encoders' device."""
        import torch

        from policykit.realera.prompts import tokenize

        out = []
        for i in range(0, len(prompts), batch_size):
            batch = tokenize(self.tokenizer, prompts[i:i + batch_size])
            out.append(self.encode_ids(batch.input_ids, batch.attention_mask).float())
        return torch.cat(out) if out else torch.zeros(0, self.sequence_length, self.width)

    def unconditional(self) -> "torch.Tensor":
        """The unconditional branch of classifier-free guidance ``(1, S, d)``, float32."""
        import torch

        if self.zero_unconditional:
            return torch.zeros(1, self.sequence_length, self.width, device=self.device)
        return self.encode_prompts([""])

    # -- what the U-Net and the pipeline read

    def time_ids(self, batch: int, device=None, dtype=None) -> "torch.Tensor":
        """SDXL's micro-conditioning ``(batch, 6)``: original size, crop (0, 0), target size."""
        import torch

        r = float(self.resolution or 0)
        return torch.tensor([[r, r, 0.0, 0.0, r, r]], device=device, dtype=dtype).expand(batch, -1)

    def unet_inputs(self, conditioning: "torch.Tensor") -> dict[str, Any]:
        """Keyword arguments of a ``UNet2DConditionModel`` call for a conditioning ``(B, S, d)``."""
        if not self.pooled:
            return {"encoder_hidden_states": conditioning}
        n = conditioning.shape[0]
        return {"encoder_hidden_states": conditioning[:, :self.length],
                "added_cond_kwargs": {"text_embeds": conditioning[:, self.length, :self.pooled_width],
                                      "time_ids": self.time_ids(n, conditioning.device, conditioning.dtype)}}

    def pipeline_inputs(self, conditioning: "torch.Tensor") -> dict[str, Any]:
        """Keyword arguments of a pipeline call that draws from the conditioning ``(B, S, d)``.

        The negative prompt is left to the pipeline's own default (the empty
        prompt, or zeros for SDXL), as a call with ``prompt=`` gets it.
        """
        if not self.pooled:
            return {"prompt_embeds": conditioning}
        return {"prompt_embeds": conditioning[:, :self.length],
                "pooled_prompt_embeds": conditioning[:, self.length, :self.pooled_width]}


@contextmanager
def _token_embedding_offset(encoder, offset: "torch.Tensor | None") -> Iterator[None]:
    """Add ``offset`` ``(B, L, d_tok)`` to ``encoder``'s token embeddings for the passes inside the block.

    CLIPTextModel in transformers 5.x takes no ``inputs_embeds``, so the offset
    goes in through a forward hook on the input-embedding module.
    """
    if offset is None:
        yield
        return
    module = encoder.get_input_embeddings()
    handle = module.register_forward_hook(lambda _m, _i, out: out + offset.to(dtype=out.dtype, device=out.device))
    try:
        yield
    finally:
        handle.remove()


def _vocabularies_agree(tokenizers: Sequence[Any]) -> bool:
    first = tokenizers[0].get_vocab()
    return all(t.get_vocab() == first for t in tokenizers[1:])


def _build(tokenizers: Sequence[Any], encoders: Sequence[Any], *, sdxl: bool, resolution: int | None = None,
           zero_unconditional: bool = False) -> TextModel:
    if sdxl:
        if len(encoders) != 2 or any(e is None for e in encoders) or any(t is None for t in tokenizers):
            raise TextModelError("an SDXL pipeline needs both text encoders and both tokenizers")
        if not _vocabularies_agree(tokenizers):
            raise TextModelError("the SDXL tokenizers have different vocabularies: policykit derives the second "
                                 "encoder's ids from the first tokenizer's and cannot do so here")
        return TextModel(tuple(tokenizers), tuple(encoders), penultimate=True, pooled=True,
                         zero_unconditional=zero_unconditional, resolution=resolution)
    return TextModel((tokenizers[0],), (encoders[0],))


_CACHE: "weakref.WeakKeyDictionary[Any, TextModel]" = weakref.WeakKeyDictionary()


def text_model(pipeline) -> TextModel:
    """The :class:`TextModel` of a diffusers pipeline (SD 1.x, SD 2.x or SDXL); one per pipeline."""
    cached = _CACHE.get(pipeline)
    if cached is not None and cached.encoders[0] is pipeline.text_encoder:
        return cached
    sdxl = getattr(pipeline, "text_encoder_2", None) is not None or type(pipeline).__name__.startswith(
        "StableDiffusionXL")
    resolution, zeros = None, False
    if sdxl:
        resolution = int(pipeline.unet.config.sample_size) * int(pipeline.vae_scale_factor)
        zeros = bool(getattr(pipeline.config, "force_zeros_for_empty_prompt", False))
    model = _build((pipeline.tokenizer, getattr(pipeline, "tokenizer_2", None)),
                   (pipeline.text_encoder, getattr(pipeline, "text_encoder_2", None)), sdxl=sdxl,
                   resolution=resolution, zero_unconditional=zeros)
    _CACHE[pipeline] = model
    return model


def single_encoder(text_encoder, tokenizer) -> TextModel:
    """A :class:`TextModel` of one CLIP text encoder and its tokenizer (SD 1.x / 2.x)."""
    return TextModel((tokenizer,), (text_encoder,))


def load_text_model(path) -> TextModel:
    """The tokenizers and text encoders of the diffusers pipeline directory at ``path`` (offline, CPU, eval).

    No U-Net or VAE weights are read (``plan``'s model check and ``neighbors``
    need only the text side); the SDXL resolution is read from the configs.
    """
    import json
    from pathlib import Path

    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    root = Path(path)
    index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))
    sdxl = "text_encoder_2" in index and index.get("text_encoder_2", [None, None])[1] is not None
    tokenizers = [AutoTokenizer.from_pretrained(str(root / "tokenizer"), local_files_only=True)]
    encoders = [CLIPTextModel.from_pretrained(str(root / "text_encoder"), local_files_only=True).eval()]
    if not sdxl:
        return TextModel(tuple(tokenizers), tuple(encoders))
    tokenizers.append(AutoTokenizer.from_pretrained(str(root / "tokenizer_2"), local_files_only=True))
    encoders.append(CLIPTextModelWithProjection.from_pretrained(str(root / "text_encoder_2"),
                                                                local_files_only=True).eval())
    unet = json.loads((root / "unet" / "config.json").read_text(encoding="utf-8"))
    vae = json.loads((root / "vae" / "config.json").read_text(encoding="utf-8"))
    resolution = int(unet.get("sample_size", 128)) * 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
    return _build(tokenizers, encoders, sdxl=True, resolution=resolution,
                  zero_unconditional=bool(index.get("force_zeros_for_empty_prompt", False)))

