"""Writing the Apptainer sandbox files into a flat tree, without ever following a symlink.

Every directory is reached by ``openat(O_DIRECTORY | O_NOFOLLOW)`` from an fd of
the root, and every entry is created with ``*at`` calls relative to its
parent's fd, so no symlink in the image (``etc -> /etc``, ``var/tmp -> /tmp``)
can make us touch anything outside the root. What may already be in the
image is handled in one of three ways:

- ``.singularity.d`` and its ``actions``, ``env``, ``libs`` directories are
  Apptainer's: a symlink or file the image has there is removed and replaced
  by a directory (``replaced``), and our files overwrite the image's through a
  rename, which replaces a symlink or hard link instead of writing through it.
  A directory where one of our files must go cannot be resolved safely and
  raises ``SandboxError``.
- Bind points, ``etc/hosts``, ``etc/resolv.conf`` and the top-level links are
  conveniences: created when missing, otherwise left exactly as the image has
  them (``kept``), dangling symlinks included. If a parent on the way is a
  symlink or not a directory, the entry is not created (``skipped``, logged).
- Everything else in the image is never touched.

Created directories get mode 0755 and files the mode Apptainer gives them
(0755 scripts, 0644 data), set explicitly so the umask does not matter.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from unpacked.apptainer._files import DATA_MODE, apptainer_files
from unpacked.errors import UnpackedError
from unpacked.manifest import ImageConfig

logger = logging.getLogger(__name__)

BIND_POINTS = ("dev", "proc", "sys", "tmp", "var/tmp", "home", "root", "etc", "cvmfs", "srv")
"""Directories Apptainer and sites bind host paths onto (``makeDirs``, plus cvmfs and srv)."""

METADATA_DIRS = (
    ".singularity.d",
    ".singularity.d/actions",
    ".singularity.d/env",
    ".singularity.d/libs",
)
"""Apptainer's own directories; ``libs`` stays empty (the runtime binds GPU libraries there)."""

LINKS = {
    "singularity": ".singularity.d/runscript",
    ".run": ".singularity.d/actions/run",
    ".exec": ".singularity.d/actions/exec",
    ".test": ".singularity.d/actions/test",
    ".shell": ".singularity.d/actions/shell",
    "environment": ".singularity.d/env/90-environment.sh",
}
"""Top-level symlinks of an Apptainer sandbox (``makeSymlinks``), relative like Apptainer's."""

PLACEHOLDERS = ("etc/hosts", "etc/resolv.conf")
"""Empty files the runtime binds the host's over; created only when the image has none."""

DIR_MODE = 0o755
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class SandboxError(UnpackedError):
    """A flat tree cannot be made into an Apptainer sandbox (the message names the path)."""


@dataclass(frozen=True)
class SandboxReport:
    """What ``prepare_sandbox`` did; paths are relative to the root."""

    written: tuple[str, ...]
    """``.singularity.d`` files written (new, or replacing what the image had there)."""
    created: tuple[str, ...]
    """Directories, links and placeholder files that were missing and were created."""
    kept: tuple[str, ...]
    """Bind points, links and placeholders the image already has, left as they are."""
    replaced: tuple[str, ...]
    """Symlinks or files the image had where Apptainer needs a directory; now directories."""
    skipped: tuple[tuple[str, str], ...]
    """``(path, reason)`` of entries not created because of what the image has on the way."""


@dataclass
class _Collector:
    written: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def skip(self, path: str, reason: str) -> None:
        logger.info("apptainer sandbox: %s not created: %s", path, reason)
        self.skipped.append((path, reason))

    def report(self) -> SandboxReport:
        return SandboxReport(
            written=tuple(self.written),
            created=tuple(self.created),
            kept=tuple(self.kept),
            replaced=tuple(self.replaced),
            skipped=tuple(self.skipped),
        )


class _Blocked(Exception):
    """A component on the way is a symlink or not a directory."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def prepare_sandbox(root: Path, config: ImageConfig) -> SandboxReport:
    """Make the flat tree at ``root`` run under Apptainer as a ``build --sandbox`` result would.

    Writes ``apptainer_files(config)``, creates the missing bind points, links
    and placeholders, and never follows a symlink (see the module docstring).
    Raises ``SandboxError`` naming the path when the tree cannot be written.
    """
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SandboxError(f"{root}: cannot open the flat tree: {exc.strerror}") from None
    done = _Collector()
    try:
        sandbox = _Sandbox(root, root_fd, done)
        sandbox.bind_points()
        sandbox.metadata(apptainer_files(config))
        sandbox.links()
        sandbox.placeholders()
    finally:
        os.close(root_fd)
    report = done.report()
    logger.debug(
        "apptainer sandbox %s: %d written, %d created, %d kept, %d replaced, %d skipped",
        root,
        len(report.written),
        len(report.created),
        len(report.kept),
        len(report.replaced),
        len(report.skipped),
    )
    return report


class _Sandbox:
    def __init__(self, root: Path, root_fd: int, done: _Collector) -> None:
        self.root = root
        self.root_fd = root_fd
        self.done = done

    @contextmanager
    def _errors(self, path: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise SandboxError(f"{self.root}: {path}: {exc.strerror or exc}") from None

    def bind_points(self) -> None:
        for path in BIND_POINTS:
            parent, name = _split(path)
            try:
                with self._directory(parent, create=True) as dir_fd, self._errors(path):
                    self._ensure_bind_point(dir_fd, name, path)
            except _Blocked as blocked:
                self.done.skip(path, f"{blocked.path} {blocked.reason}")

    def _ensure_bind_point(self, dir_fd: int, name: str, path: str) -> None:
        mode = _lstat_mode(dir_fd, name)
        if mode is None:
            _make_dir(dir_fd, name)
            self.done.created.append(path)
        elif stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
            # The image's symlink (var/tmp -> /tmp) is the image's business:
            # the runtime resolves it inside the container.
            self.done.kept.append(path)
        else:
            self.done.skip(path, "exists and is not a directory")

    def metadata(self, files: dict[str, tuple[bytes, int]]) -> None:
        for path in METADATA_DIRS:
            self._ensure_metadata_dir(path)
        for path, (content, mode) in files.items():
            parent, name = _split(path)
            with self._metadata_directory(parent) as dir_fd, self._errors(path):
                _replace_file(dir_fd, name, content, mode, f"{self.root}: {path}")
            self.done.written.append(path)

    def _ensure_metadata_dir(self, path: str) -> None:
        parent, name = _split(path)
        with self._metadata_directory(parent) as dir_fd, self._errors(path):
            mode = _lstat_mode(dir_fd, name)
            if mode is not None and stat.S_ISDIR(mode):
                return
            if mode is not None:
                logger.warning(
                    "apptainer sandbox %s: replacing the image's %s at %s with a directory",
                    self.root,
                    _kind(mode),
                    path,
                )
                os.unlink(name, dir_fd=dir_fd)
                self.done.replaced.append(path)
            _make_dir(dir_fd, name)
            self.done.created.append(path)

    def links(self) -> None:
        for name, target in LINKS.items():
            with self._errors(name):
                try:
                    os.symlink(target, name, dir_fd=self.root_fd)
                except FileExistsError:
                    self.done.kept.append(name)
                else:
                    self.done.created.append(name)

    def placeholders(self) -> None:
        for path in PLACEHOLDERS:
            parent, name = _split(path)
            try:
                with self._directory(parent) as dir_fd, self._errors(path):
                    created = _create_empty(dir_fd, name, DATA_MODE)
            except _Blocked as blocked:
                self.done.skip(path, f"{blocked.path} {blocked.reason}")
                continue
            (self.done.created if created else self.done.kept).append(path)

    @contextmanager
    def _metadata_directory(self, path: str) -> Iterator[int]:
        # Ensured just before; only a concurrent change could block the way now.
        try:
            with self._directory(path) as fd:
                yield fd
        except _Blocked as blocked:
            raise SandboxError(f"{self.root}: {blocked}") from None

    @contextmanager
    def _directory(self, path: str, *, create: bool = False) -> Iterator[int]:
        """An fd of directory ``path``, reached without following symlinks.

        Missing directories on the way are created if ``create``; otherwise, and
        for a symlink or non-directory on the way, ``_Blocked`` is raised.
        """
        fd = os.dup(self.root_fd)
        walked: list[str] = []
        try:
            for part in filter(None, path.split("/")):
                walked.append(part)
                child = self._step(fd, part, "/".join(walked), create=create)
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def _step(self, fd: int, name: str, path: str, *, create: bool) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _Blocked(path, f"is a {_kind(_lstat_mode(fd, name))}") from None
            if exc.errno != errno.ENOENT:
                raise SandboxError(f"{self.root}: {path}: {exc.strerror}") from None
        if not create:
            raise _Blocked(path, "is missing")
        with self._errors(path):
            _make_dir(fd, name)
            self.done.created.append(path)
            return os.open(name, _DIR_FLAGS, dir_fd=fd)


def _split(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition("/")
    return parent, name


def _lstat_mode(dir_fd: int, name: str) -> int | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return None


def _kind(mode: int | None) -> str:
    if mode is None:
        return "missing entry"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    return "special file"


def _make_dir(dir_fd: int, name: str) -> None:
    os.mkdir(name, DIR_MODE, dir_fd=dir_fd)
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        os.fchmod(fd, DIR_MODE)
    finally:
        os.close(fd)


def _create_empty(dir_fd: int, name: str, mode: int) -> bool:
    """Create an empty file unless something (even a dangling symlink) is there already."""
    try:
        fd = os.open(name, _NEW_FILE_FLAGS, mode, dir_fd=dir_fd)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return True


def _replace_file(dir_fd: int, name: str, content: bytes, mode: int, where: str) -> None:
    existing = _lstat_mode(dir_fd, name)
    if existing is not None and stat.S_ISDIR(existing):
        raise SandboxError(f"{where} is a directory in the image; Apptainer needs a file there")
    temporary = f".{name}.unpacked-new"
    with suppress(FileNotFoundError):
        os.unlink(temporary, dir_fd=dir_fd)
    fd = os.open(temporary, _NEW_FILE_FLAGS, mode, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    # rename() replaces a symlink or hard link at ``name`` instead of writing through it.
    os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
