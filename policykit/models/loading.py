"""Load a resolved model as a diffusers pipeline (imports torch and diffusers)."""

from __future__ import annotations

from policykit.models.resolve import ResolvedModel


def load_pipeline(model: ResolvedModel):
    """A ``StableDiffusionPipeline`` from the model's directory, offline, CPU, float32, no progress bars."""
    from policykit.shapes.sampling import load_pipeline as load_quietly

    # One loader for every source: builtin:shapes is an ordinary pipeline directory.
    return load_quietly(model.path)
