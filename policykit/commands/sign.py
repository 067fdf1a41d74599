"""``policykit sign ARTIFACT --key KEY``: sign an artifact that is already published.

``apply`` signs what it builds; this signs an artifact published without a
key (``apply`` never changes a published artifact, so it points here), or
replaces a signature with ``--force``.

The artifact is checked first: every file must match its manifest and the
manifest's statements must hold (``verify`` without a key); anything else is
refused. What is signed is exactly the bytes that were checked (a private
copy), so a file changed on disk meanwhile cannot slip into the signature.
The signature is written as ``<version>.sig.tmp`` and renamed over
``<version>.sig`` (``os.replace``): a reader sees no signature or a whole one.
An existing signature is kept unless ``--force``.

Exit codes: 0 signed; 1 refused or error (nothing changed).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from policykit.cli import EXIT_ERROR, EXIT_OK

SIGN_FORMAT_VERSION = 1


class SignRefused(ValueError):
    """The artifact was not signed; the message says why and what to do."""


@dataclass(frozen=True)
class SignOutcome:
    """A signature that is now in place."""

    path: Path
    signature: Path
    fingerprint: str
    replaced: bool


@contextmanager
def public_key_of(private_key: str | Path) -> Iterator[Path]:
    """The public half of a PEM private key, as a temporary ``.pub`` file (removed afterwards).

    Raises ValueError when the file is not an unencrypted PEM private key.
    """
    from cryptography.hazmat.primitives import serialization

    path = Path(private_key)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ValueError(f"cannot read the key {path}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} is not an unencrypted PEM private key ({exc}); sign with the .pem file "
                         "`policykit keygen` wrote, not the .pub") from None
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with tempfile.TemporaryDirectory(prefix="policykit-key-") as tmp:
        public = Path(tmp) / "signer.pub"
        public.write_bytes(pem)
        yield public


@contextmanager
def _policy_lock(lock: Path) -> Iterator[None]:
    """The lock ``apply`` holds while it writes a version of this policy (see ArtifactWriter)."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise SignRefused(f"another policykit process is writing to {lock.parent}; wait for it") from None
            raise
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def sign_artifact(artifact: str | Path, key: str | Path, *, force: bool = False) -> SignOutcome:
    """Sign the published artifact directory ``artifact`` with the private key ``key``.

    Raises :class:`SignRefused` (nothing changed) when the artifact fails verification, is already
    signed and ``force`` is not set, or the key cannot sign.
    """
    from policykit.artifact.layout import ArtifactLocation
    from policykit.artifact.signing import SignatureError, public_key_fingerprint, sign_directory, verify_directory
    from policykit.artifact.snapshot import read_tree
    from policykit.artifact.verify import verify_artifact

    path, key = Path(artifact), Path(key)
    if not path.is_dir() or path.is_symlink():
        raise SignRefused(f"{path} is not an artifact directory")
    if not key.is_file():
        raise SignRefused(f"signing key {key} does not exist or is not a regular file (create one with "
                          "`policykit keygen`)")
    location = ArtifactLocation.from_path(path)
    signature = location.signature
    with _policy_lock(location.lock):
        replaced = os.path.lexists(signature)
        if replaced and not force:
            raise SignRefused(f"{path} is already signed ({signature}); pass --force to replace its signature")
        report = verify_artifact(path)
        if not report.ok:
            raise SignRefused(f"{path} fails verification, so it is not signed: " + "; ".join(report.problems[:5]))
        files = getattr(report, "files", None)
        if files is None:
            files = read_tree(path)
        try:
            fingerprint = public_key_fingerprint(key)
            with tempfile.TemporaryDirectory(prefix="policykit-sign-") as tmp:  # 0700: only we can write it
                copy = Path(tmp) / location.version
                copy.mkdir()
                for rel, data in files.items():
                    target = copy / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                bundle = sign_directory(copy, key)
                # the bundle must verify over the checked bytes before it replaces anything
                check = Path(tmp) / (location.version + ".sig")
                check.write_bytes(bundle)
                with public_key_of(key) as public:
                    verify_directory(copy, check, public)
        except (SignatureError, ValueError, OSError) as exc:
            raise SignRefused(f"cannot sign {path} with {key}: {exc}") from None
        try:
            _replace_atomically(signature, bundle)
        except OSError as exc:
            raise SignRefused(f"cannot write {signature}: {exc} (any signature that was there is unchanged)") from None
    return SignOutcome(path, signature, fingerprint, replaced)


def _replace_atomically(target: Path, data: bytes) -> None:
    """Write ``target.tmp``, flush it to disk, and rename it over ``target``."""
    tmp = target.with_name(target.name + ".tmp")
    if os.path.lexists(tmp):
        tmp.unlink()  # a leftover of a killed signer (we hold the lock): never write through a link
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def run(args) -> int:
    """Run ``policykit sign``; returns the exit code."""
    as_json = args.format == "json"
    try:
        outcome = sign_artifact(args.artifact, args.key, force=args.force)
    except SignRefused as exc:
        if as_json:
            print(json.dumps({"format_version": SIGN_FORMAT_VERSION, "status": "error", "message": str(exc)}))
        else:
            print(f"policykit sign: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if as_json:
        print(json.dumps({"format_version": SIGN_FORMAT_VERSION, "status": "signed", "path": str(outcome.path),
                          "signature": str(outcome.signature), "fingerprint": outcome.fingerprint,
                          "replaced": outcome.replaced}, indent=2))
    else:
        verb = "re-signed" if outcome.replaced else "signed"
        print(f"{verb} {outcome.path}: signature {outcome.signature} (key {outcome.fingerprint})")
        print(f"check it with: policykit verify {outcome.path} --public-key KEY.pub")
    return EXIT_OK
