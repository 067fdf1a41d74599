"""Method presets: which stages each runs and with which defaults (torch-free; the compiler reads it).

=================  ======  ====  ==================  ===================  =====================
preset             mining  BCR   closed form (rows)  noise alignment      fine-tuning
=================  ======  ====  ==================  ===================  =====================
realera            yes     yes   policykit's rules   LoRA, anchor target  -
realera-no-bcr     yes     no    policykit's rules   LoRA, anchor target  -
realera-cf         yes     yes   policykit's rules   -                    -
uce                no      no    UCE's rows          -                    -
mace               no      no    MACE's rows         -                    MACE's LoRAs, fused
esd                no      no    -                   -                    ESD-x (cross-attention)
esd-u              no      no    -                   -                    ESD-u (all but cross-attention)
=================  ======  ====  ==================  ===================  =====================

A peer preset is that paper's method at its authors' defaults (docs/method.md,
"Presets", gives each one's rows and defaults with the equations and where in
the authors' code they come from). A setting the policy writes explicitly
overrides the preset's default; one it leaves out takes the preset's, so
``method: uce`` alone is UCE as its authors run it.
"""

from __future__ import annotations

from typing import Any, Sequence

from policykit.realera.settings import (AUDIT, BEYOND_CONCEPT_REGULARIZATION, CLOSED_FORM_REFINEMENT, ESD_FINETUNE,
                                        MACE_LORA, MINE_NEIGHBORS, NOISE_ALIGNMENT)

#: Stages each method preset runs (before disabled stages are dropped).
METHOD_STAGES: dict[str, tuple[str, ...]] = {
    "realera": (MINE_NEIGHBORS, BEYOND_CONCEPT_REGULARIZATION, CLOSED_FORM_REFINEMENT, NOISE_ALIGNMENT, AUDIT),
    "realera-no-bcr": (MINE_NEIGHBORS, CLOSED_FORM_REFINEMENT, NOISE_ALIGNMENT, AUDIT),
    "realera-cf": (MINE_NEIGHBORS, BEYOND_CONCEPT_REGULARIZATION, CLOSED_FORM_REFINEMENT, AUDIT),
    "uce": (CLOSED_FORM_REFINEMENT, AUDIT),
    "mace": (CLOSED_FORM_REFINEMENT, MACE_LORA, AUDIT),
    "esd": (ESD_FINETUNE, AUDIT),
    "esd-u": (ESD_FINETUNE, AUDIT),
}

#: UCE (Gandikota et al., WACV 2024), the paper's ``edit_model`` (rohitgandikota/unified-concept-editing
#: train-scripts/train_erase.py): lambda 0.5 as its script calls it, erase scale 1, and the preserve
#: scale ``max(0.1, 1 / (1 + preserves))`` (``preserve_scale: None`` here), the script's default.
UCE_DEFAULTS = {"rows": "uce", "lambda": 0.5, "erase_scale": 1.0, "preserve_scale": None, "vocabulary_prompts": 0}

#: MACE (Lu et al., CVPR 2024), Shilin-LU/MACE, one config per kind of concept (configs/*.yaml):
#: lambda, train_preserve_scale (tps), preserve_weight (pw) of the domain cache by number of concepts,
#: and the LoRA stage's learning rate, steps and timestep sampling. The closed form weighs each
#: preserve row tps^2 * pw (MACE applies tps twice), the fusion fps * pw (fps = tps in every config).
MACE_CONFIGS = {
    #           lambda  tps    pw (1, 10, 100 concepts)      lr     steps  importance sampling
    "object":   (1e3,   0.0,   (0.0, 0.0, 0.0),              1e-5,  50,    True),   # erase_ship.yaml
    "person":   (0.0,   1e-4,  (8e3, 8e4, 2e5),              1e-4,  50,    True),   # erase_cele_{1,10,100}.yaml
    "style":    (0.0,   1e-4,  (8e4, 8e4, 8e4),              1e-4,  50,    True),   # erase_art_100.yaml
    "nsfw":     (0.0,   7e-7,  (0.0, 0.0, 0.0),              1e-5,  120,   False),  # erase_explicit_content.yaml
}
#: Which MACE config a policy category takes (brands and characters are objects to MACE).
MACE_CONFIG_FOR = {"object": "object", "brand": "object", "character": "object", "person": "person",
                   "style": "style", "nsfw": "nsfw"}


def mace_config(categories: Sequence[str]) -> str:
    """The MACE config of a plan: that of its most common category (the first one on a tie)."""
    kinds = [MACE_CONFIG_FOR.get(c, "object") for c in categories] or ["object"]
    return max(dict.fromkeys(kinds), key=kinds.count)


def preset_defaults(method: str, stage: str, categories: Sequence[str] = ()) -> dict[str, Any]:
    """The preset's defaults for one stage (empty when it keeps the policy's). ``categories``: the
    plan's erase entries' categories (MACE's defaults depend on the kind and number of concepts)."""
    if method == "uce" and stage == CLOSED_FORM_REFINEMENT:
        return dict(UCE_DEFAULTS)
    if method == "mace":
        lam, tps, weights, lr, steps, importance = MACE_CONFIGS[mace_config(categories)]
        n = len(categories)
        pw = weights[0] if n <= 1 else weights[1] if n <= 10 else weights[2]
        if stage == CLOSED_FORM_REFINEMENT:
            return {"rows": "mace", "lambda": lam, "erase_scale": 1.0, "preserve_scale": tps * tps * pw,
                    "vocabulary_prompts": 0}
        if stage == MACE_LORA:
            return {"rank": 1, "learning_rate": lr, "steps": steps, "batch_size": 1,
                    "timesteps": "mace" if importance else "uniform", "lambda": lam, "fuse_preserve_scale": tps * pw}
    if stage == ESD_FINETUNE and method in ("esd", "esd-u"):
        return {"train": "xattn" if method == "esd" else "noxattn"}
    return {}
