"""``policykit keygen``: write an ECDSA P-256 key pair for signing artifacts."""

from __future__ import annotations

import json
import sys

from policykit.cli import EXIT_ERROR, EXIT_OK


def run(args) -> int:
    """Generate the pair; the private key is created 0600 and never overwritten."""
    from policykit.artifact.signing import generate_key_pair, public_key_fingerprint

    try:
        pair = generate_key_pair(args.out, args.name)
    except (FileExistsError, OSError) as exc:
        print(f"policykit keygen: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    fingerprint = public_key_fingerprint(pair.public_key)
    if args.format == "json":
        print(json.dumps({"format_version": 1, "private_key": str(pair.private_key),
                          "public_key": str(pair.public_key), "fingerprint": fingerprint}, indent=2))
    else:
        print(f"private key: {pair.private_key}  (keep it secret: mode 0600)")
        print(f"public key:  {pair.public_key}  (give it to whoever verifies artifacts)")
        print(f"fingerprint: {fingerprint}")
        print(f"sign new artifacts with `policykit apply POLICY --sign-key {pair.private_key}`, and one already "
              f"published with `policykit sign ARTIFACT --key {pair.private_key}`")
    return EXIT_OK
