"""A dev probe, not a method: erase names in the *text encoder* with a LoRA, leaving the U-Net as it is.

The question it answers: is the 100-name limit one of the edit's place (a
linear map of each token's state, the cross-attention projections) rather than
of the world? The text encoder is non-linear and contextual, so it can in
principle move "zorbax" without moving "zorlin".

Training, with the base text encoder as teacher (its outputs computed once):

* erase rows: every template with each erased name; the name's positions, its
  end-of-text and the padding after it are pulled to the states of the same
  template with the anchor (the empty prompt) in the name's place: name
  positions and end-of-text to the anchor sentence's end-of-text, later
  positions to the anchor's positions shifted by the name's length. The
  positions before the name are left out: a causal encoder cannot change
  them.
* keep rows: every template with each listed preserve, the world's objects,
  and ``vocabulary`` random token phrases (the same draw as the closed form's
  vocabulary preservation, erased names excluded), held to the base states at
  every position.

Used by ``closed_form_variants.py`` (variant key ``text_encoder``).
"""
from __future__ import annotations

from contextlib import contextmanager


def _states(te, ids):
    import torch

    with torch.no_grad():
        return te(input_ids=ids).last_hidden_state


def _tokens(tok, prompts):
    return tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids


def _eos(ids, eos_id):
    return int((ids == eos_id).nonzero()[0, 0])


def build_rows(pipe, task, vocabulary: int = 512, seed: int = 0, catalog: bool = False):
    """(erase ids, erase targets, erase mask, keep ids, keep targets) for ``task``."""
    import torch

    from policykit.emblems.world import load_world
    from policykit.realera.encoding import vocabulary_phrases

    tok, te = pipe.tokenizer, pipe.text_encoder
    eos_id = tok.eos_token_id
    names = [e.concept for e in task.erase]
    erase_prompts, anchor_prompts = [], []
    for n in names:
        for t in task.templates:
            erase_prompts.append(t.format(n))
            anchor_prompts.append(" ".join(t.format("").split()))
    e_ids, a_ids = _tokens(tok, erase_prompts), _tokens(tok, anchor_prompts)
    anchors = _states(te, a_ids)
    L = e_ids.shape[1]
    targets = torch.zeros(len(erase_prompts), L, anchors.shape[-1])
    mask = torch.zeros(len(erase_prompts), L)
    for r in range(len(erase_prompts)):
        s, f = _eos(a_ids[r], eos_id), _eos(e_ids[r], eos_id)
        shift = f - s
        for i in range(s, L):
            targets[r, i] = anchors[r, s] if i <= f else anchors[r, i - shift]
            mask[r, i] = 1.0
    world = load_world()
    keep_concepts = list(task.preserve) + [world.object_phrase(c, s) for c in world.colours for s in world.shapes]
    keep_concepts += vocabulary_phrases(tok, vocabulary, seed, exclude=names)
    if catalog:  # every entity the task never judges (emblem_tasks.catalog_names), as the closed form's catalog
        import emblem_tasks

        keep_concepts += list(emblem_tasks.catalog_names(task))
    keep_prompts = [t.format(c) for c in keep_concepts for t in task.templates]
    k_ids = _tokens(tok, keep_prompts)
    return e_ids, targets, mask, k_ids, _states(te, k_ids)


@contextmanager
def text_encoder_edit(pipe, task, *, steps: int = 400, rank: int = 8, lr: float = 1e-3, batch: int = 32,
                      keep_weight: float = 1.0, vocabulary: int = 512, seed: int = 0, catalog: bool = False,
                      log=print):
    """Train a LoRA on a copy of ``pipe.text_encoder`` for ``task``; the pipeline uses the copy inside the
    block and its own text encoder again after."""
    import copy

    import torch
    from peft import LoraConfig, inject_adapter_in_model

    original = pipe.text_encoder
    e_ids, e_tgt, e_mask, k_ids, k_tgt = build_rows(pipe, task, vocabulary, seed, catalog)
    te = copy.deepcopy(original)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        te = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True,
                                                target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1",
                                                                "fc2"]), te, adapter_name="erase")
    params = [p for n, p in te.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    te.train()
    try:
        for step in range(1, steps + 1):
            ei = torch.randint(len(e_ids), (batch,), generator=g)
            ki = torch.randint(len(k_ids), (batch,), generator=g)
            out_e = te(input_ids=e_ids[ei]).last_hidden_state
            out_k = te(input_ids=k_ids[ki]).last_hidden_state
            m = e_mask[ei][..., None]
            erase = (((out_e - e_tgt[ei]) ** 2) * m).sum() / (m.sum() * out_e.shape[-1])
            keep = ((out_k - k_tgt[ki]) ** 2).mean()
            loss = erase + keep_weight * keep
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step == 1 or step % 100 == 0:
                log(f"  text encoder step {step}: erase {erase.item():.4g} keep {keep.item():.4g}")
        te.eval()
        for p in params:
            p.requires_grad_(False)
        pipe.text_encoder = te
        yield
    finally:
        pipe.text_encoder = original
