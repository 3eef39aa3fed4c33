"""The exception tree of `unpacked`.

Every error the library raises on purpose is an ``UnpackedError``; third-party
exceptions (httpx, OSError from tar streams, YAML errors) are translated at the
boundary where they occur, so callers and the CLI only ever see this tree::

    UnpackedError
    ├── InvalidReferenceError          a reference string that cannot be parsed
    ├── RegistryError                  anything that went wrong talking to a registry
    │   ├── RegistryConnectionError    network failure or timeout, after retries
    │   │   └── RegistryUnreachableError  no connection at all (refused, no route, DNS,
    │   │                                 connect timeout, untrusted certificate)
    │   ├── AuthenticationError        401/403, or the token service refused us
    │   ├── NotFoundError              unknown manifest, blob, repository or tag
    │   ├── RateLimitedError           429 that did not clear within our patience
    │   └── RegistryProtocolError      a response we cannot accept (bad media type,
    │                                  size over the cap, malformed JSON, ...)
    ├── VerificationError              bytes that do not match their digest or size
    ├── WishlistError                  a wish list cannot be used (every problem, with lines)
    ├── LayerError                     a layer cannot be applied
    │   ├── UnsafeLayerError           an entry tries to leave the target directory
    │   └── LayerTooLargeError         a layer decompresses to more than its size limit
    ├── PublishError                   a repository transaction failed (nothing was published);
    │   │                              may carry the command, exit status and stderr behind it
    │   ├── RepositoryLockedError      another process holds the repository lock too long
    │   └── RepositoryFullError        the repository's file system is full (or over quota)
    ├── CommandError                   a program we ran (``process.run``) did not do its job
    │   ├── CommandNotStarted          it could not be started (missing, not executable)
    │   ├── CommandFailed              it exited with a status we did not accept
    │   └── CommandTimedOut            it ran past its timeout and was killed
    └── ConfigError                    bad configuration (auth file, options)

Each error's message names the culprit (the reference, the blob digest, the
layer, the path) so that it can be shown to a person as it is.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass


class UnpackedError(Exception):
    """Base class of every error raised on purpose by `unpacked`."""


class InvalidReferenceError(UnpackedError, ValueError):
    """A string is not a valid image reference."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"invalid image reference {text!r}: {reason}")
        self.text = text
        self.reason = reason


class ConfigError(UnpackedError):
    """Configuration (options, auth files) is malformed."""


class RegistryError(UnpackedError):
    """A registry request failed."""


class RegistryConnectionError(RegistryError):
    """The registry could not be reached (connection, TLS, timeout) after retries."""


class RegistryUnreachableError(RegistryConnectionError):
    """Not even a connection to the registry could be made: it is down for every request,
    not failing one of them."""


class AuthenticationError(RegistryError):
    """The registry or its token service refused our credentials."""


class NotFoundError(RegistryError):
    """The registry does not know the manifest, blob, repository or tag."""


class RateLimitedError(RegistryError):
    """The registry kept answering 429 Too Many Requests."""


class RegistryProtocolError(RegistryError):
    """The registry answered something we cannot accept."""


class VerificationError(UnpackedError):
    """Content does not match the digest or size it was announced with."""


class LayerError(UnpackedError):
    """A layer cannot be read or applied."""


class UnsafeLayerError(LayerError):
    """A layer entry would create, change or follow something outside the target."""


class LayerTooLargeError(LayerError):
    """A layer decompresses to more than the limit set for it (a decompression bomb?)."""


class UnpackWorkerDied(LayerError):
    """The worker process unpacking a layer ended without an answer (killed, crashed)."""


class BlobAbandoned(LayerError):
    """The download a layer was being unpacked from, as it grew, restarted or failed: the
    layer is unpacked again from the finished blob, if there is one."""


class LowerLayersNeeded(LayerError):
    """A layer unpacked before its lower layers were ready needs them in the middle of its tar.

    Raised only when the caller asked to defer the lower tree (``defer_lower``); the
    caller unpacks the layer again, in order, with the lower tree.
    """


def _command_details(command: str | None, exit_code: int | None, stderr: str | None) -> str:
    """What a message adds about a command: ``[command: ..., exit status N]`` and stderr."""
    facts = []
    if command is not None:
        facts.append(f"command: {command}")
    if exit_code is not None:
        facts.append(f"exit status {exit_code}")
    text = f" [{', '.join(facts)}]" if facts else ""
    lines = (stderr or "").strip().splitlines()
    if lines:
        text += "\n" + "\n".join(f"  stderr: {line}" for line in lines)
    return text


class PublishError(UnpackedError):
    """A repository transaction could not be completed; the published tree is unchanged.

    ``command``, ``exit_code`` and ``stderr`` say which program failed and how, when a
    backend drives one (``cvmfs_server``, ...); the message shows them.
    """

    def __init__(
        self,
        message: str,
        *,
        command: str | None = None,
        exit_code: int | None = None,
        stderr: str | None = None,
    ) -> None:
        super().__init__(message + _command_details(command, exit_code, stderr))
        self.command = command
        self.exit_code = exit_code
        self.stderr = stderr

    @classmethod
    def from_command(cls, message: str, error: CommandError) -> PublishError:
        """``message``, with what ``error`` knows of the command (raise it ``from error``)."""
        return cls(
            f"{message}: {error.reason}",
            command=error.command,
            exit_code=error.exit_code,
            stderr=error.stderr or None,
        )


class RepositoryLockedError(PublishError):
    """Another process held the repository lock for longer than we were willing to wait."""


class RepositoryFullError(PublishError):
    """The repository's file system ran out of space or quota; nothing was published."""


class CommandError(UnpackedError):
    """A program run through ``unpacked.process.run`` did not do its job.

    ``argv`` is what was run, ``command`` the same as one shell-quoted line;
    ``exit_code`` its exit status (None if it never ended by itself); ``stderr`` the
    end of what it wrote there (bounded); ``reason`` what went wrong, in a few words.
    """

    def __init__(
        self, argv: Sequence[str], reason: str, *, exit_code: int | None = None, stderr: str = ""
    ) -> None:
        self.argv = tuple(argv)
        self.command = shlex.join(self.argv)
        self.reason = reason
        self.exit_code = exit_code
        self.stderr = stderr
        super().__init__(
            f"{self.argv[0] if argv else '?'}: {reason}"
            + _command_details(self.command, exit_code, stderr)
        )

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword arguments do not survive the default pickling of exceptions.
        return (_rebuild, (type(self), self.argv, self.reason, self.exit_code, self.stderr))


def _rebuild(
    cls: type[CommandError], argv: tuple[str, ...], reason: str, code: int | None, stderr: str
) -> CommandError:
    return cls(argv, reason, exit_code=code, stderr=stderr)


class CommandNotStarted(CommandError):
    """The program could not be started (not found, not executable, bad directory)."""


class CommandFailed(CommandError):
    """The program exited with a status the caller does not accept."""


class CommandTimedOut(CommandError):
    """The program ran past its timeout; it was killed (with its process group)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or suspicious) in a wish list, located as precisely as we can."""

    source: str
    line: int | None
    entry: str | None  # "input[3] 'ubuntu:22.04 x'", "platforms[1] 'linux'", a key, ...
    message: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return (
            f"{where}: {self.entry}: {self.message}" if self.entry else f"{where}: {self.message}"
        )


class WishlistError(UnpackedError):
    """A wish list cannot be used; ``problems`` lists everything wrong with it, in file order."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(sorted(problems, key=lambda problem: problem.line or 0))
        super().__init__("\n".join(str(problem) for problem in self.problems))
