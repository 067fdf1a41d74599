"""``policykit export ARTIFACT --format diffusers --out DIR``: a full model for other tools."""

from __future__ import annotations

import sys

from policykit.cli import EXIT_ERROR, EXIT_OK


def run(args) -> int:
    """Export under the loading rule (verified, signed, audit passed unless waived)."""
    from policykit.artifact.export import export_diffusers
    from policykit.artifact.load import ArtifactRefused
    from policykit.models import ModelNotAvailable

    if args.format != "diffusers":
        print("policykit export: only --format diffusers is available in this version; single-file "
              "(original Stable Diffusion checkpoint layout) is planned", file=sys.stderr)
        return EXIT_ERROR
    try:
        out = export_diffusers(args.artifact, args.out, public_key=args.public_key,
                               allow_unsigned=args.allow_unsigned, allow_failed_audit=args.allow_failed_audit)
    except (ArtifactRefused, ModelNotAvailable, FileExistsError, OSError, ValueError) as exc:
        print(f"policykit export: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"exported {args.artifact} to {out} (StableDiffusionPipeline.from_pretrained({str(out)!r}))")
    return EXIT_OK
