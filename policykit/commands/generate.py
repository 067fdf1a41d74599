"""``policykit generate ARTIFACT "PROMPT" -n 4 --out DIR``: images from an edited model."""

from __future__ import annotations

import sys
from pathlib import Path

from policykit.cli import EXIT_ERROR, EXIT_OK


def run(args) -> int:
    """Load the artifact under the loading rule, generate, save PNGs."""
    from policykit.audit.run import sampling_for
    from policykit.artifact.load import ArtifactRefused, load_pipeline
    from policykit.audit.sampling import generate
    from policykit.models import ModelNotAvailable

    try:
        pipe = load_pipeline(args.artifact, public_key=args.public_key, allow_unsigned=args.allow_unsigned,
                             allow_failed_audit=args.allow_failed_audit, device=args.device)
    except (ArtifactRefused, ModelNotAvailable, OSError, ValueError) as exc:
        print(f"policykit generate: {exc}", file=sys.stderr)
        return EXIT_ERROR
    from PIL import Image

    from policykit.artifact.manifest import read_manifest

    sampling = sampling_for(read_manifest(Path(args.artifact))["base_model"]["id"])
    images = generate(pipe, [args.prompt], per_prompt=args.n, seed=args.seed,
                      steps=args.steps or sampling["steps"], guidance=args.guidance or sampling["guidance"])[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "-".join(args.prompt.lower().split())[:60] or "image"
    for i, image in enumerate(images):
        path = out / f"{stem}-{args.seed}-{i}.png"
        Image.fromarray(image).save(path)
        print(path)
    return EXIT_OK
