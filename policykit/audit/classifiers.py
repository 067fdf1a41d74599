"""Classifiers the audit trusts to say whether an image shows a concept.

- ``builtin:pixel-truth`` for the built-in worlds: for ``builtin:shapes``
  colour and shape measured from pixels (policykit.shapes.classify), for
  ``builtin:emblems`` shape, fill colour, pattern and background
  (policykit.emblems.classify); the ground truth of each world.
- CLIP zero-shot for real models: a local CLIP directory (nothing is
  downloaded); an image shows a concept when, among the audit's labels (every
  concept, anchor and preserve of the plan), the concept's label scores highest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

PIXEL_TRUTH = "builtin:pixel-truth"


class ClassifierError(ValueError):
    """The classifier cannot be built or cannot judge the concept asked for."""


class ConceptClassifier(Protocol):
    """Says, per image, whether it shows a concept."""

    name: str

    def shows(self, images: np.ndarray, concept: str) -> list[bool]:
        """``images``: (N, H, W, 3) uint8. One answer per image."""
        ...


#: The built-in worlds pixel truth can judge.
PIXEL_TRUTH_WORLDS = ("builtin:shapes", "builtin:emblems")


class PixelTruthClassifier:
    """Ground truth in a built-in world: what it draws, read from pixels (``builtin:shapes`` by default)."""

    name = PIXEL_TRUTH

    def __init__(self, world: str = "builtin:shapes"):
        if world not in PIXEL_TRUTH_WORLDS:
            raise ClassifierError(f"builtin:pixel-truth only judges images of {' and '.join(PIXEL_TRUTH_WORLDS)}")
        self.world_id = world
        if world == "builtin:emblems":
            from policykit.emblems.world import load_world
        else:
            from policykit.shapes.world import load_world
        self.world = load_world()

    def meaning(self, concept: str):
        """What an image must show to count as showing ``concept`` (the world's meaning; None if nothing)."""
        return self.world.meaning(concept)

    def shows(self, images: np.ndarray, concept: str) -> list[bool]:
        """True where the pixels show what ``concept`` means (every attribute it fixes)."""
        target = self.meaning(concept)
        if target is None:
            raise ClassifierError(f"{concept!r} means nothing in {self.world_id}; the pixel-truth classifier can "
                                  "only judge the phrases of its world")
        if self.world_id == "builtin:emblems":
            from policykit.emblems.classify import classify_images

            wanted = target.attributes()
            return [all(getattr(r, a) == v for a, v in wanted.items()) for r in classify_images(self.world, images)]
        from policykit.shapes.classify import classify_images

        return [reading.concept == target for reading in classify_images(self.world, images)]


class ClipZeroShotClassifier:
    """Zero-shot CLIP over a closed set of labels, from a local directory."""

    def __init__(self, path: str | Path, labels: Sequence[str], template: str = "a photo of {}",
                 device: str | None = None):
        import torch
        from transformers import CLIPModel, CLIPProcessor

        path = Path(path)
        if not path.is_dir():
            raise ClassifierError(f"CLIP classifier directory {path} does not exist (nothing is downloaded: "
                                  "point audit.classifier or --classifier at a local CLIP model)")
        self.name = f"clip:{path.name}"
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.model = CLIPModel.from_pretrained(str(path), local_files_only=True).to(self.device).eval()
            self.processor = CLIPProcessor.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ClassifierError(f"cannot load a CLIP model and processor from {path}: {exc}") from None
        self.labels = list(dict.fromkeys(labels))
        if len(self.labels) < 2:
            raise ClassifierError("zero-shot classification needs at least two labels")
        with torch.no_grad():
            text = self.processor(text=[template.format(label) for label in self.labels],
                                  return_tensors="pt", padding=True).to(self.device)
            features = _projected(self.model.get_text_features(**text))
            self.text_features = torch.nn.functional.normalize(features, dim=-1)

    def predict(self, images: np.ndarray) -> list[str]:
        """The best label for each image."""
        import torch

        with torch.no_grad():
            pixels = self.processor(images=list(images), return_tensors="pt").to(self.device)
            features = torch.nn.functional.normalize(_projected(self.model.get_image_features(**pixels)), dim=-1)
            best = (features @ self.text_features.T).argmax(dim=-1).tolist()
        return [self.labels[i] for i in best]

    def shows(self, images: np.ndarray, concept: str) -> list[bool]:
        """True where ``concept`` is the best of the labels."""
        if concept not in self.labels:
            raise ClassifierError(f"{concept!r} is not among the classifier's labels")
        return [label == concept for label in self.predict(images)]


def _projected(output):
    # transformers 5 returns a model output whose pooler_output is the projected
    # embedding; transformers 4 returned the tensor itself.
    return output if hasattr(output, "norm") else output.pooler_output


def build_classifier(spec: str | None, base_model_id: str, labels: Sequence[str]) -> ConceptClassifier:
    """The classifier a policy asks for (``audit.classifier``), or the default for its model.

    ``builtin:shapes`` defaults to pixel truth; any other model needs a local
    CLIP directory, and gets a clear error without one.
    """
    if spec is None:
        if base_model_id in PIXEL_TRUTH_WORLDS:
            return PixelTruthClassifier(base_model_id)
        raise ClassifierError(f"no audit classifier for {base_model_id}: set audit.classifier (or "
                              "--classifier) to a local CLIP directory, e.g. openai/clip-vit-large-patch14 "
                              "saved with save_pretrained")
    if spec == PIXEL_TRUTH:
        return PixelTruthClassifier(base_model_id)
    return ClipZeroShotClassifier(spec, labels)
