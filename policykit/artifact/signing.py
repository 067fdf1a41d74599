"""Signing and verifying artifacts with OpenSSF model-signing (ECDSA P-256).

The bundle is a Sigstore bundle over every file of the artifact directory,
stored beside it as ``<version>.sig``. It can be checked without policykit::

    python -m model_signing verify key ARTIFACT_DIR --signature ARTIFACT_DIR.sig \\
        --public_key KEY.pub --no-ignore-git-paths
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from policykit.hashing import sha256_hex


class SignatureError(ValueError):
    """A signature is missing, malformed or does not match the artifact."""


@dataclass(frozen=True)
class KeyPair:
    """Paths of a generated key pair."""

    private_key: Path
    public_key: Path


def generate_key_pair(out_dir: str | Path, name: str = "policykit-signing") -> KeyPair:
    """Write a new ECDSA P-256 key pair as PEM files into ``out_dir``.

    The private key is created readable by its owner only (0600) and is never
    overwritten: an existing file is an error.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / f"{name}.pem", out / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path} exists; refusing to overwrite a key")
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    public_path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return KeyPair(private_path, public_path)


def public_key_fingerprint(key_path: str | Path) -> str:
    """sha256 of the DER public key (``sha256:<hex>``), for either key of a pair."""
    from cryptography.hazmat.primitives import serialization

    data = Path(key_path).read_bytes()
    try:
        if b"PRIVATE KEY" in data:
            public = serialization.load_pem_private_key(data, password=None).public_key()
        else:
            public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{key_path}: not a PEM key: {exc}") from None
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + sha256_hex(der)


def _hashing_config():
    import model_signing

    # Git files are NOT ignored: every file of an artifact is part of it.
    return model_signing.hashing.Config().set_ignored_paths(paths=[], ignore_git_paths=False)


def sign_directory(directory: str | Path, private_key: str | Path) -> bytes:
    """Sign every file below ``directory``; returns the bundle's bytes."""
    import tempfile

    import model_signing

    key = Path(private_key)
    if not key.is_file():
        raise SignatureError(f"signing key {key} does not exist")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle.sig"
        try:
            (model_signing.signing.Config()
             .use_elliptic_key_signer(private_key=key)
             .set_hashing_config(_hashing_config())
             .sign(Path(directory), bundle))
        except (ValueError, TypeError) as exc:
            raise SignatureError(f"cannot sign with {key}: {exc}") from None
        return bundle.read_bytes()


def verify_directory(directory: str | Path, signature: str | Path, public_key: str | Path) -> None:
    """Check ``signature`` against every file below ``directory``.

    Raises SignatureError naming what does not match (a changed, added or
    removed file, or a key that did not make the signature).
    """
    import model_signing

    sig, key = Path(signature), Path(public_key)
    if not sig.is_file():
        raise SignatureError(f"no signature at {sig}: the artifact is unsigned")
    if not key.is_file():
        raise SignatureError(f"public key {key} does not exist")
    try:
        (model_signing.verifying.Config()
         .use_elliptic_key_verifier(public_key=key)
         .set_hashing_config(_hashing_config())
         .verify(Path(directory), sig))
    except Exception as exc:  # model-signing raises ValueError and library-specific errors
        raise SignatureError(f"signature check failed: {_short(exc)}") from None


def _short(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 400 else text[:400] + "..."
