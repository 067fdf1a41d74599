"""The RealEra method (docs/method.md): prompts and token positions, neighbor mining,
closed-form cross-attention refinement, LoRA noise alignment.

Importing this package is light; every submodule imports torch & co. lazily or
is only imported by the commands that need a model.
"""
