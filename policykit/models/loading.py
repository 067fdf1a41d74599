"""Load a base model as a diffusers pipeline (imports torch and diffusers): the one loader of base models.

A resolved model (:func:`policykit.models.resolve_model`) or a pipeline
directory, loaded offline on the CPU in float32, with no progress bars. The
built-in worlds are ordinary pipeline directories, so the same call loads
them and a real Stable Diffusion. (:func:`policykit.artifact.load.load_pipeline`
is another thing: it loads an *artifact*, verified, with its edit applied.)
"""

from __future__ import annotations

from pathlib import Path

from policykit.models.resolve import ResolvedModel


def load_pipeline(model: "ResolvedModel | str | Path"):
    """The ``StableDiffusionPipeline`` of ``model`` (a resolved model or a directory): offline, CPU, float32."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    path = model.path if isinstance(model, ResolvedModel) else Path(model)
    # Loading a small model takes well under a second: progress bars would only add noise to CLI output.
    bars = [(lib, lib.is_progress_bar_enabled()) for lib in (diffusers_logging, transformers_logging)]
    for lib, _ in bars:
        lib.disable_progress_bar()
    try:
        pipe = StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True)
    finally:
        for lib, enabled in bars:
            if enabled:
                lib.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    return pipe
