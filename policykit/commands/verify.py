"""``policykit verify ARTIFACT [--public-key KEY]``: check hashes, statements and signature."""

from __future__ import annotations

import json

from policykit.cli import EXIT_ERROR, EXIT_OK


def run(args) -> int:
    """Exit 0 when every check passed, 1 otherwise (problems listed)."""
    from policykit.artifact.verify import UNAUTHENTICATED_NOTE, verify_artifact

    report = verify_artifact(args.artifact, args.public_key)
    if args.format == "json":
        print(json.dumps({"format_version": 1, **report.to_dict()}, indent=2))
        return EXIT_OK if report.ok else EXIT_ERROR
    if report.ok:
        if report.signature_checked:
            print(f"verified {report.path}: signature, place and all file hashes match")
            print(f"signer: {report.signer_fingerprint}")
        else:
            print(f"integrity only: every file of {report.path} matches its manifest.json")
            print(f"UNAUTHENTICATED: {UNAUTHENTICATED_NOTE}")
        if report.status == "failed":
            print("note: this artifact FAILED its audit; loading it needs --allow-failed-audit")
        return EXIT_OK
    print(f"verification FAILED for {report.path}:")
    for problem in report.problems:
        print(f"  - {problem}")
    return EXIT_ERROR
