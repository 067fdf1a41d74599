"""Base-model resolution: which files a policy's ``base_model`` names, and their pin.

``resolve_model`` turns ``builtin:shapes``, a local diffusers directory or a
hub id (looked up in the local Hugging Face cache only) into a
:class:`ResolvedModel`; ``model_sha256`` / ``check_pin`` compute and check the
sha256 pin over its files. None of this imports torch: ``plan`` may call it.
``load_pipeline`` (which does import diffusers) loads what was resolved.
"""

from policykit.models.pin import check_pin, model_sha256
from policykit.models.resolve import BUILTIN_MODELS, ModelNotAvailable, ResolvedModel, resolve_model

__all__ = [
    "BUILTIN_MODELS",
    "ModelNotAvailable",
    "ResolvedModel",
    "check_pin",
    "load_pipeline",
    "model_sha256",
    "resolve_model",
]


def __getattr__(name: str):
    # Lazy: ``load_pipeline`` (policykit.models.loading) imports diffusers only when it is used.
    if name == "load_pipeline":
        from policykit.models.loading import load_pipeline

        return load_pipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
