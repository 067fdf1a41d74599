"""Atomic, locked publication of an artifact version.

An artifact is built in a staging directory beside its final place and
renamed into place in one ``rename``: a reader sees either no artifact or a
complete one, whatever happens to the writer (crash, kill, Ctrl-C). The
signature is moved into place *before* the rename, so a published artifact
is never momentarily unsigned. A lock file stops two writers of the same
policy at once; staging leftovers of a killed writer are removed by the next.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
from pathlib import Path

from policykit.artifact.layout import STAGING_PREFIX, ArtifactLocation
from policykit.artifact.manifest import read_manifest


class ArtifactLocked(RuntimeError):
    """Another process is writing a version of the same policy."""


class VersionExists(RuntimeError):
    """The version is already published with different content."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(Path(dirpath) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


class ArtifactWriter:
    """Context manager that owns one artifact version while it is written.

    ::

        with ArtifactWriter(location) as writer:
            if writer.existing is not None: ...        # already published
            build files in writer.staging
            writer.commit(signature=bundle_bytes)    # atomic publish

    Leaving the block without ``commit`` (an exception, Ctrl-C) removes the
    staging directory and publishes nothing.
    """

    def __init__(self, location: ArtifactLocation):
        self.location = location
        self.staging: Path | None = None
        self.committed = False
        self._lock_fd: int | None = None

    @property
    def existing(self) -> dict | None:
        """The manifest of the already-published version, if there is one."""
        if not self.location.path.exists():
            return None
        return read_manifest(self.location.path)

    def __enter__(self) -> "ArtifactWriter":
        policy_dir = self.location.policy_dir
        policy_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.location.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise ArtifactLocked(
                    f"another policykit process is writing to {policy_dir} "
                    f"(lock {self.location.lock}); wait for it to finish") from None
            raise
        self._lock_fd = fd
        # We hold the lock, so any staging directory left here is a dead writer's.
        for stale in policy_dir.glob(STAGING_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        self.staging = policy_dir / f"{STAGING_PREFIX}{self.location.version}-{os.getpid()}-{secrets.token_hex(4)}"
        self.staging.mkdir()
        return self

    def commit(self, signature: bytes | None = None) -> Path:
        """Publish the staging directory as the version (and its signature).

        Raises VersionExists if the version appeared meanwhile (it cannot while
        the lock is held, unless someone writes by hand).
        """
        assert self.staging is not None, "commit() outside the with block"
        final = self.location.path
        if final.exists():
            raise VersionExists(f"{final} already exists")
        _fsync_tree(self.staging)
        sig = self.location.signature
        if signature is not None:
            tmp_sig = sig.with_name(sig.name + ".tmp")
            tmp_sig.write_bytes(signature)
            os.replace(tmp_sig, sig)
        elif sig.exists():
            sig.unlink()  # a signature left by an earlier, unpublished attempt
        os.rename(self.staging, final)
        _fsync_dir(self.location.policy_dir)
        self.committed = True
        self.staging = None
        return final

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self.staging is not None:
                shutil.rmtree(self.staging, ignore_errors=True)
                self.staging = None
        finally:
            if self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = None
