"""``policykit generate ARTIFACT "PROMPT" -n 4 --out DIR``: images from an edited model."""

from __future__ import annotations

import sys
from pathlib import Path

from policykit.cli import EXIT_ERROR, EXIT_OK


def run(args) -> int:
    """Load the artifact under the loading rule, generate, save PNGs.

    The pipeline is of the base model's class (``StableDiffusionPipeline`` or
    ``StableDiffusionXLPipeline``) and is called with prompts only, as the
    audit calls it: SDXL's second text encoder, pooled embedding and size
    conditions are filled in by the pipeline itself, at the model's own resolution.
    """
    from policykit.artifact.load import ArtifactRefused, build_pipeline, open_artifact
    from policykit.audit.run import sampling_for
    from policykit.audit.sampling import generate
    from policykit.models import ModelNotAvailable

    try:
        verified = open_artifact(args.artifact, public_key=args.public_key, allow_unsigned=args.allow_unsigned,
                                 allow_failed_audit=args.allow_failed_audit)
        pipe = build_pipeline(verified, device=args.device)
    except ArtifactRefused as exc:
        print(f"policykit generate: {exc.cli_message}", file=sys.stderr)
        return EXIT_ERROR
    except (ModelNotAvailable, OSError, ValueError) as exc:
        print(f"policykit generate: {exc}", file=sys.stderr)
        return EXIT_ERROR
    from PIL import Image

    sampling = sampling_for(verified.manifest["base_model"]["id"])
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
