"""Load a base model as a diffusers pipeline (imports torch and diffusers): the one loader of base models.

A resolved model (:func:`policykit.models.resolve_model`) or a pipeline
directory, loaded offline on the CPU in float32, with no progress bars, as
the pipeline class its ``model_index.json`` names: ``StableDiffusionPipeline``
(SD 1.x and 2.x, and the built-in worlds) or ``StableDiffusionXLPipeline``
(SDXL); any other class is refused with a ValueError. The built-in worlds are
ordinary pipeline directories, so the same call loads them and a real Stable
Diffusion. (:func:`policykit.artifact.load.load_pipeline` is another thing:
it loads an *artifact*, verified, with its edit applied.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from policykit.models.resolve import PIPELINE_INDEX, ResolvedModel

#: The diffusers pipeline classes policykit loads, edits and writes.
PIPELINE_CLASSES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
#: The class assumed where none is given (SD 1.x / 2.x: what policykit supported first).
DEFAULT_PIPELINE_CLASS = "StableDiffusionPipeline"


def pipeline_class_name(model: "ResolvedModel | str | Path") -> str:
    """The pipeline class ``model_index.json`` of ``model`` (a resolved model or a directory) names.

    A missing index is an OSError (not a pipeline directory); an unreadable
    one, or a class not in :data:`PIPELINE_CLASSES`, a ValueError.
    """
    path = model.path if isinstance(model, ResolvedModel) else Path(model)
    index = path / PIPELINE_INDEX
    if not index.is_file():
        raise FileNotFoundError(f"{path} is not a diffusers pipeline directory: it has no {PIPELINE_INDEX}")
    try:
        doc = json.loads(index.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{index}: not valid JSON: {exc}") from None
    name = doc.get("_class_name") if isinstance(doc, dict) else None
    if name not in PIPELINE_CLASSES:
        raise ValueError(f"{index} names the pipeline class {name!r}; policykit loads "
                         f"{' and '.join(PIPELINE_CLASSES)} only")
    return name


def pipeline_class(spec: Any = None) -> type:
    """The diffusers pipeline class for ``spec``: a class name, a pipeline class, a pipeline, or None
    (:data:`DEFAULT_PIPELINE_CLASS`). Anything but (a subclass of) :data:`PIPELINE_CLASSES` is a ValueError."""
    import diffusers

    supported = [getattr(diffusers, name) for name in PIPELINE_CLASSES]
    if spec is None:
        spec = DEFAULT_PIPELINE_CLASS
    if isinstance(spec, str):
        if spec not in PIPELINE_CLASSES:
            raise ValueError(f"{spec!r} is not a pipeline class policykit supports ({', '.join(PIPELINE_CLASSES)})")
        return getattr(diffusers, spec)
    cls = spec if isinstance(spec, type) else type(spec)
    if not any(issubclass(cls, base) for base in supported):
        raise ValueError(f"{cls.__name__} is not a pipeline class policykit supports ({', '.join(PIPELINE_CLASSES)})")
    return cls


def load_pipeline(model: "ResolvedModel | str | Path"):
    """The pipeline of ``model`` (a resolved model or a directory), of the class its ``model_index.json``
    names (``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``): offline, CPU, float32."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    path = model.path if isinstance(model, ResolvedModel) else Path(model)
    cls = pipeline_class(pipeline_class_name(path))
    # Loading a small model takes well under a second: progress bars would only add noise to CLI output.
    bars = [(lib, lib.is_progress_bar_enabled()) for lib in (diffusers_logging, transformers_logging)]
    for lib, _ in bars:
        lib.disable_progress_bar()
    try:
        pipe = cls.from_pretrained(str(path), local_files_only=True)
    finally:
        for lib, enabled in bars:
            if enabled:
                lib.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    return pipe
