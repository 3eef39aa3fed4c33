"""What a new user types first: wish lists on pipes and standard input, odd arguments.

Every command that takes a wish list reads it from any existing path (a regular file, a
FIFO, ``/dev/stdin``, a shell's ``<(...)``) and from standard input written as ``-``;
``loop``, which reads its list again every cycle, refuses what cannot be read twice.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from support.registry import RegistryServer
from support.samples import SampleImages
from unpacked.cli import EXIT_BROKEN_PIPE, EXIT_INPUT, EXIT_OK, EXIT_USAGE, main
from unpacked.publish import open_publisher
from unpacked.registry._credentials import discover_auth_file

UNPACKED = Path(sys.executable).with_name("unpacked")
TIMEOUT = 60.0
"""Seconds any command of this module may take (interpreter start-up included)."""
GOOD = "ubuntu:22.04\n# a comment\nghcr.io/org/app:1.2\n"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run(
    *argv: str, stdin: str = "", pass_fds: tuple[int, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(UNPACKED), *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        pass_fds=pass_fds,
        check=False,
    )


@contextmanager
def feeding(monkeypatch: pytest.MonkeyPatch, text: str) -> Iterator[None]:
    """``text`` as the process's standard input."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    yield


@contextmanager
def fifo_with(tmp_path: Path, text: str) -> Iterator[Path]:
    """A FIFO that a thread writes ``text`` into once a reader opens it."""
    path = tmp_path / "wishes.fifo"
    os.mkfifo(path)

    def write() -> None:
        with contextlib.suppress(BrokenPipeError), path.open("w") as pipe:
            pipe.write(text)  # the open blocks until the command opens the FIFO

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        yield path
    finally:
        if writer.is_alive():
            # Nobody read it: open the other end so the writer's open returns.
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(timeout=TIMEOUT)
        assert not writer.is_alive()


# --- check-image-syntax -------------------------------------------------------------------


def test_check_image_syntax_reads_a_fifo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with fifo_with(tmp_path, GOOD) as fifo:
        code, out, err = cli(capsys, "check-image-syntax", str(fifo))
    assert (code, err) == (EXIT_OK, "")
    assert out == f"ok   {fifo}: 2 images\n"


def test_check_image_syntax_reads_dash_as_standard_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with feeding(monkeypatch, GOOD):
        code, out, _ = cli(capsys, "check-image-syntax", "-", "debian:12")
    assert code == EXIT_OK
    assert out.splitlines() == [
        "ok   -: 2 images",
        "ok   debian:12: registry.hub.docker.com/library/debian:12",
    ]


def test_check_image_syntax_reads_dev_stdin_and_process_substitution() -> None:
    result = run("check-image-syntax", "/dev/stdin", stdin="ubuntu\nnot a reference\n")
    assert result.returncode == EXIT_INPUT, result.stderr
    assert "/dev/stdin:2: " in result.stdout
    assert "Traceback" not in result.stderr

    # bash's <(...) hands the command /dev/fd/N, the read end of a pipe.
    read, write = os.pipe()
    try:
        os.write(write, GOOD.encode())
        os.close(write)
        result = run("check-image-syntax", f"/dev/fd/{read}", pass_fds=(read,))
    finally:
        os.close(read)
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    assert result.stdout == f"ok   /dev/fd/{read}: 2 images\n"


def test_a_directory_named_like_an_image_is_not_a_wish_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ubuntu").mkdir()
    code, out, _ = cli(capsys, "check-image-syntax", "ubuntu")
    assert code == EXIT_OK
    assert out == "ok   ubuntu: registry.hub.docker.com/library/ubuntu:latest\n"


@pytest.mark.parametrize(
    "reference",
    [
        "a" * 300 + ":1",  # a path component over NAME_MAX (the first: no ENOENT before)
        "registry.example.org/" + "a" * 300 + ":1",
        "registry.example.org/" + "/".join(["b" * 200] * 25) + ":1",  # a path over PATH_MAX
        "ubuntu\0:1",  # no path at all
    ],
    ids=["long-component", "long-component-below", "long-path", "nul"],
)
def test_a_reference_too_long_for_a_path_is_judged_as_a_reference(
    reference: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "check-image-syntax", reference, "--json")
    assert code in (EXIT_OK, EXIT_INPUT), err
    assert "Traceback" not in err
    assert reference in out or "invalid image reference" in out


# --- the other commands that take a wish list ------------------------------------------


def test_convert_dry_run_reads_standard_input(
    registry: RegistryServer,
    sample_images: SampleImages,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with feeding(monkeypatch, sample_images.simple.ref(registry) + "\n"):
        code, out, err = cli(capsys, "convert", "-", "--dry-run")
    assert code == EXIT_OK, out + err
    assert (
        out == f"ok   line 1: {sample_images.simple.ref(registry)}: {sample_images.simple.digest}\n"
    )


def test_a_bad_wish_list_on_standard_input_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with feeding(monkeypatch, "ubuntu\nnot a reference\n"):
        code, out, err = cli(capsys, "convert", "-", "--repo", f"dir:{tmp_path / 'repo'}")
    assert code == EXIT_INPUT
    assert "<stdin>:2: " in err
    assert out == ""
    assert not (tmp_path / "repo").exists()


def test_prune_and_gc_read_the_wish_list_from_standard_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    open_publisher(f"dir:{repo}")
    with feeding(monkeypatch, "ubuntu\n"):
        code, out, err = cli(
            capsys, "prune", "--wishlist", "-", "--repo", f"dir:{repo}", "--dry-run"
        )
    assert code == EXIT_OK, out + err
    with fifo_with(tmp_path, "bad reference\n") as fifo:
        code, out, err = cli(
            capsys,
            "garbage-collection",
            "--repo",
            f"dir:{repo}",
            "--wishlist",
            str(fifo),
            "--dry-run",
        )
    assert code == EXIT_INPUT, out + err
    assert f"{fifo}:1: " in err


# --- loop ----------------------------------------------------------------------------------


def test_loop_refuses_standard_input_and_pipes(tmp_path: Path) -> None:
    repo = f"dir:{tmp_path / 'repo'}"
    result = run("loop", "-", "--repo", repo, "--interval", "1", stdin="ubuntu\n")
    assert result.returncode == EXIT_INPUT, result.stderr
    assert "not standard input" in result.stderr

    fifo = tmp_path / "wishes.fifo"
    os.mkfifo(fifo)
    result = run("loop", str(fifo), "--repo", repo, "--interval", "1")
    assert result.returncode == EXIT_INPUT, result.stderr
    assert f"{fifo}: loop reads its wish list again every cycle" in result.stderr
    assert "regular file" in result.stderr
    assert not (tmp_path / "repo").exists()


# --- other first-day stumbles ----------------------------------------------------------------


def test_zero_attempts_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wishlist = tmp_path / "w.txt"
    wishlist.write_text("127.0.0.1:1/nothing:1\n")
    code, out, err = cli(
        capsys, "convert", str(wishlist), "--repo", f"dir:{tmp_path / 'r'}", "--attempts", "0"
    )
    assert code == EXIT_USAGE
    assert "--attempts: expected a positive whole number, not '0'" in err
    assert out == ""
    assert not (tmp_path / "r").exists()


def test_a_bare_repository_path_gets_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wishlist = tmp_path / "w.txt"
    wishlist.write_text("ubuntu\n")
    code, _, err = cli(capsys, "convert", str(wishlist), "--repo", str(tmp_path / "r"))
    assert code == EXIT_INPUT
    assert f"(for a plain directory: dir:{tmp_path / 'r'})" in err
    assert not (tmp_path / "r").exists()


def test_a_reader_that_leaves_early_is_no_error() -> None:
    # `unpacked ... | head -1`: exit as a shell expects (128 + SIGPIPE), no traceback.
    references = [f"img{i}:1" for i in range(3000)]  # far more than a pipe buffer holds
    process = subprocess.Popen(
        [str(UNPACKED), "check-image-syntax", *references],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline().startswith(b"ok   img0:1: ")
        process.stdout.close()
        assert process.wait(timeout=TIMEOUT) == EXIT_BROKEN_PIPE
        assert process.stderr.read() == b""
    finally:
        process.kill()
        process.wait(timeout=TIMEOUT)
        if process.stderr is not None:
            process.stderr.close()


def test_a_wildcard_that_matches_nothing_says_so(
    registry: RegistryServer, sample_images: SampleImages, capsys: pytest.CaptureFixture[str]
) -> None:
    pattern = sample_images.many_tags.ref(registry, "nothing-like-this-*")
    code, out, err = cli(capsys, "expand-wildcard", pattern)
    assert code == EXIT_OK
    assert out.strip() == ""
    assert f"WARNING: {pattern} matches no tag of {sample_images.many_tags.repository} now" in err

    code, out, err = cli(capsys, "expand-wildcard", sample_images.many_tags.ref(registry, "v00?"))
    assert (code, err) == (EXIT_OK, "")
    assert len(out.split()) == 10


def test_an_auth_file_location_that_cannot_be_looked_into_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # As `su` keeps HOME=/root for a service user: stat() fails with EACCES. Root may look
    # anywhere, so a name too long stands in for it (also an OSError, from the same call).
    home = tmp_path / ("h" * 300)
    with caplog.at_level(logging.WARNING):
        assert discover_auth_file({"HOME": str(home)}) is None
    assert f"cannot look for a registry auth file at {home}/.docker/config.json" in caplog.text

    (tmp_path / ".docker").mkdir()
    (tmp_path / ".docker" / "config.json").write_text('{"auths": {}}')
    found = discover_auth_file({"DOCKER_CONFIG": str(home), "HOME": str(tmp_path)})
    assert found == tmp_path / ".docker" / "config.json"
