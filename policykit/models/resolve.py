"""Find a base model's files on this machine, offline first.

Three kinds of reference, tried in this order:

- ``builtin:NAME``: a model shipped inside policykit (``builtin:shapes``);
- a local diffusers directory (absolute, or relative to ``base_dir``, usually
  the policy file's folder): it must hold ``model_index.json``;
- a hub id ``org/name``: resolved from the local Hugging Face cache only
  (never downloaded here); missing means :class:`ModelNotAvailable` saying
  how to fetch it on a machine that may.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from policykit.diagnostics import Diagnostic

ModelSource = Literal["builtin", "local", "hub"]

_PACKAGE = Path(__file__).resolve().parents[1]
#: Built-in models: name -> pipeline directory inside the package, and how to rebuild it.
BUILTIN_MODELS: dict[str, tuple[Path, str]] = {
    "shapes": (_PACKAGE / "shapes" / "model",
               "reinstall policykit, or rebuild it with `python -m policykit.shapes.train --out policykit/shapes/model`"),
    "emblems": (_PACKAGE / "emblems" / "model",
                "reinstall policykit, or rebuild it with `python -m policykit.emblems.train --out policykit/emblems/model`"),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: The file every diffusers pipeline directory has.
PIPELINE_INDEX = "model_index.json"


class ModelNotAvailable(Exception):
    """The model a policy names is not on this machine; ``hint`` says what to do."""

    def __init__(self, ref: str, reason: str, hint: str) -> None:
        super().__init__(f"model {ref!r} is not available: {reason}. {hint}")
        self.ref, self.reason, self.hint = ref, reason, hint

    def to_diagnostic(self, file: str = "<input>", line: int = 0, col: int = 0) -> Diagnostic:
        """The problem as a Diagnostic (code ``model-not-available``) for the CLI to render."""
        return Diagnostic("model-not-available", str(self), file=file, line=line, col=col)


@dataclass(frozen=True)
class ResolvedModel:
    """A model found on disk: where, from which kind of reference, and its files."""

    ref: str
    path: Path
    source: ModelSource
    revision: str | None = None

    @property
    def files(self) -> tuple[str, ...]:
        """The model's files as sorted POSIX paths relative to ``path`` (hidden files and caches left out)."""
        found = []
        for file in self.path.rglob("*"):
            relative = file.relative_to(self.path)
            if any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
                continue
            if file.is_file():
                found.append(relative.as_posix())
        return tuple(sorted(found))

    def architecture(self):
        """The Stable Diffusion architecture its configs describe (:mod:`policykit.models.architecture`)."""
        from policykit.models.architecture import detect_architecture

        return detect_architecture(self.path)

    def sha256(self) -> str:
        """The pin of this model: sha256 over its files (see :func:`policykit.models.model_sha256`)."""
        from policykit.models.pin import model_sha256

        return model_sha256(self.path, self.files)


def resolve_model(ref: str, revision: str | None = None, base_dir: str | Path | None = None) -> ResolvedModel:
    """Resolve a ``base_model.id`` to files on this machine, or raise :class:`ModelNotAvailable`."""
    ref = ref.strip()
    if ref.startswith("builtin:"):
        return _resolve_builtin(ref)
    candidate = Path(ref).expanduser()
    if not candidate.is_absolute() and base_dir is not None:
        candidate = Path(base_dir) / candidate
    if candidate.exists():
        return _resolve_directory(ref, candidate)
    if _HUB_ID.match(ref) and not ref.startswith((".", "/", "~")):
        return _resolve_hub(ref, revision)
    raise ModelNotAvailable(ref, f"no directory {candidate} and not a hub id (org/name)",
                            "Give `builtin:NAME`, a diffusers directory, or a Hugging Face id like `org/name`.")


def _resolve_builtin(ref: str) -> ResolvedModel:
    name = ref.removeprefix("builtin:")
    if name not in BUILTIN_MODELS:
        known = ", ".join(f"builtin:{n}" for n in sorted(BUILTIN_MODELS))
        raise ModelNotAvailable(ref, f"there is no built-in model {name!r}", f"Built-in models: {known}.")
    path, rebuild = BUILTIN_MODELS[name]
    if not (path / PIPELINE_INDEX).is_file():
        raise ModelNotAvailable(ref, f"its weights are missing from {path}", rebuild[0].upper() + rebuild[1:] + ".")
    return ResolvedModel(ref, path, "builtin")


def _resolve_directory(ref: str, path: Path) -> ResolvedModel:
    if not (path / PIPELINE_INDEX).is_file():
        raise ModelNotAvailable(ref, f"{path} is not a diffusers pipeline directory (no {PIPELINE_INDEX})",
                                "Point base_model.id at a folder saved with `DiffusionPipeline.save_pretrained`.")
    return ResolvedModel(ref, path.resolve(), "local")


def hub_download_command(hub_version: str | None = None) -> str:
    """The download command of the installed huggingface_hub: ``hf download`` (0.34 and newer), else the old CLI.

    huggingface_hub 1.0 removed ``huggingface-cli``; naming a command the
    operator does not have would send them looking for the wrong tool.
    """
    if hub_version is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            hub_version = version("huggingface_hub")
        except PackageNotFoundError:  # pragma: no cover - it comes with diffusers
            return "hf download"
    numbers = [int(part) for part in re.findall(r"[0-9]+", hub_version)[:2]] + [0, 0]
    return "hf download" if tuple(numbers[:2]) >= (0, 34) else "huggingface-cli download"


def _resolve_hub(ref: str, revision: str | None) -> ResolvedModel:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub comes with diffusers
        raise ModelNotAvailable(ref, "huggingface_hub is not installed", "Install diffusers (it brings huggingface_hub).") from None
    try:
        # local_files_only: resolution never downloads; fetching is the operator's explicit step.
        folder = snapshot_download(ref, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as error:
        download = f"{hub_download_command()} {ref}" + (f" --revision {revision}" if revision else "")
        raise ModelNotAvailable(
            ref, f"it is not in the local Hugging Face cache ({type(error).__name__})",
            f"policykit never downloads models at run time: on a machine with access run `{download}` "
            "and copy the cache here, or point base_model.id at a local diffusers directory.",
        ) from None
    path = Path(folder)
    if not (path / PIPELINE_INDEX).is_file():
        raise ModelNotAvailable(ref, f"the cached snapshot {path} has no {PIPELINE_INDEX}",
                                "Download the full pipeline, not single files.")
    return ResolvedModel(ref, path, "hub", revision)
