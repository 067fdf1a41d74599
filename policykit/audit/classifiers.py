"""Classifiers the audit trusts to say whether an image shows a concept.

- ``builtin:pixel-truth`` for ``builtin:shapes``: colour and shape measured
  from pixels (policykit.shapes.classify), the ground truth of that world.
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


class PixelTruthClassifier:
    """Ground truth in the shapes world: colour and shape read from pixels."""

    name = PIXEL_TRUTH

    def __init__(self):
        from policykit.shapes.world import load_world

        self.world = load_world()

    def shows(self, images: np.ndarray, concept: str) -> list[bool]:
        """True where the pixels show exactly the colour and shape ``concept`` means."""
        from policykit.shapes.classify import classify_images

        target = self.world.meaning(concept)
        if target is None:
            raise ClassifierError(f"{concept!r} means nothing in the shapes world; the pixel-truth "
                                  "classifier can only judge its colour-and-shape phrases")
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
        if base_model_id == "builtin:shapes":
            return PixelTruthClassifier()
        raise ClassifierError(f"no audit classifier for {base_model_id}: set audit.classifier (or "
                              "--classifier) to a local CLIP directory, e.g. openai/clip-vit-large-patch14 "
                              "saved with save_pretrained")
    if spec == PIXEL_TRUTH:
        if base_model_id != "builtin:shapes":
            raise ClassifierError("builtin:pixel-truth only judges images of builtin:shapes")
        return PixelTruthClassifier()
    return ClipZeroShotClassifier(spec, labels)
