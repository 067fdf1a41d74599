"""``policykit export ARTIFACT --format diffusers|single-file --out PATH``: a full model for other tools."""

from __future__ import annotations

import sys

from policykit.cli import EXIT_ERROR, EXIT_OK


def run(args) -> int:
    """Export under the loading rule (verified, signed, audit passed unless waived)."""
    from policykit.artifact.export import export_diffusers
    from policykit.artifact.load import ArtifactRefused
    from policykit.models import ModelNotAvailable

    if args.format == "single-file":
        return _run_single_file(args)
    try:
        out = export_diffusers(args.artifact, args.out, public_key=args.public_key,
                               allow_unsigned=args.allow_unsigned, allow_failed_audit=args.allow_failed_audit)
    except ArtifactRefused as exc:
        print(f"policykit export: {exc.cli_message}", file=sys.stderr)
        return EXIT_ERROR
    except (ModelNotAvailable, FileExistsError, OSError, ValueError) as exc:
        print(f"policykit export: {exc}", file=sys.stderr)
        return EXIT_ERROR
    from policykit.models.loading import pipeline_class_name

    print(f"exported {args.artifact} to {out} ({pipeline_class_name(out)}.from_pretrained({str(out)!r}))")
    return EXIT_OK


def _run_single_file(args) -> int:
    """One .safetensors in the original Stable Diffusion layout (AUTOMATIC1111, ComfyUI, from_single_file)."""
    from policykit.artifact.load import ArtifactRefused
    from policykit.artifact.single_file import SingleFileUnsupported, export_single_file
    from policykit.models import ModelNotAvailable

    try:
        out = export_single_file(args.artifact, args.out, public_key=args.public_key,
                                 allow_unsigned=args.allow_unsigned, allow_failed_audit=args.allow_failed_audit)
    except ArtifactRefused as exc:
        print(f"policykit export: {exc.cli_message}", file=sys.stderr)
        return EXIT_ERROR
    except (ModelNotAvailable, SingleFileUnsupported, FileExistsError, OSError, ValueError) as exc:
        print(f"policykit export: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"exported {args.artifact} to {out} (original Stable Diffusion checkpoint layout; diffusers reads it "
          f"with {_single_file_class(out)}.from_single_file(FILE, config=BASE_MODEL_DIR))")
    return EXIT_OK


def _single_file_class(path) -> str:
    """The diffusers class that reads a single-file export back: SDXL's when the file holds its second encoder."""
    from safetensors import safe_open

    from policykit.artifact.single_file import SDXL_OPEN_CLIP_PREFIX

    with safe_open(str(path), "pt") as handle:
        sdxl = any(k.startswith(SDXL_OPEN_CLIP_PREFIX) for k in handle.keys())
    return "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline"
