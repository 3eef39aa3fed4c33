"""``process.run``: real programs, their exit status, stderr and timeouts."""

from __future__ import annotations

import os
import pickle
import sys
import time
from pathlib import Path

import pytest

from unpacked import process
from unpacked.errors import (
    CommandError,
    CommandFailed,
    CommandNotStarted,
    CommandTimedOut,
    PublishError,
)


def test_output_input_environment_and_directory(tmp_path: Path) -> None:
    done = process.run(
        ["sh", "-c", 'cat; printf "%s %s" "$PWD" "$MARK"; echo warn >&2'],
        timeout=30,
        input=b"in ",
        env={"PATH": os.environ["PATH"], "MARK": "m"},
        cwd=tmp_path,
    )
    assert done.stdout == f"in {tmp_path} m".encode()
    assert done.stderr == "warn\n"
    assert (done.argv[0], done.exit_code) == ("sh", 0)


def test_a_failure_carries_command_exit_status_and_stderr() -> None:
    with pytest.raises(CommandFailed) as caught:
        process.run(["sh", "-c", "echo x >&2; exit 3"], timeout=30)
    error = caught.value
    assert (error.exit_code, error.stderr, error.argv) == (
        3,
        "x\n",
        ("sh", "-c", "echo x >&2; exit 3"),
    )
    assert error.command == "sh -c 'echo x >&2; exit 3'"
    assert "exited with status 3" in str(error)
    assert "stderr: x" in str(error) and error.command in str(error)


def test_accepted_exit_codes_are_not_errors() -> None:
    done = process.run(["sh", "-c", "exit 22"], timeout=30, ok_exit_codes=(0, 22))
    assert done.exit_code == 22


def test_a_timeout_kills_the_program_and_what_it_started() -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimedOut, match=r"still running after 0\.2 s") as caught:
        # The shell's child holds the pipes: killing the shell alone would leave us waiting.
        process.run(["sh", "-c", "echo started >&2; sleep 5; true"], timeout=0.2)
    assert time.monotonic() - started < 4
    assert caught.value.exit_code is None
    assert caught.value.stderr == "started\n"


def test_a_missing_program_is_an_error_naming_it() -> None:
    with pytest.raises(CommandNotStarted, match="no-such-program-here") as caught:
        process.run(["/nonexistent/no-such-program-here"], timeout=30)
    assert caught.value.exit_code is None


def test_a_signal_is_a_negative_exit_status() -> None:
    with pytest.raises(CommandFailed, match="killed by signal 9") as caught:
        process.run(["sh", "-c", "kill -9 $$"], timeout=30)
    assert caught.value.exit_code == -9


def test_stderr_keeps_only_its_end() -> None:
    script = f"import sys; sys.stderr.write('a' * {3 * process.STDERR_TAIL} + 'END'); sys.exit(1)"
    with pytest.raises(CommandFailed) as caught:
        process.run([sys.executable, "-c", script], timeout=30)
    stderr = caught.value.stderr
    assert stderr.startswith("[...]") and stderr.endswith("END")
    assert len(stderr) <= process.STDERR_TAIL + len("[...]")


def test_big_input_and_output_do_not_block() -> None:
    data = os.urandom(1 << 20)
    done = process.run(["cat"], timeout=30, input=data)
    assert done.stdout == data


def test_a_publish_error_wraps_a_command_error() -> None:
    with pytest.raises(CommandError) as caught:
        process.run(["sh", "-c", "echo 'not in a transaction' >&2; exit 1"], timeout=30)
    error = PublishError.from_command("cvmfs:repo: cannot publish", caught.value)
    assert (error.command, error.exit_code) == (caught.value.command, 1)
    assert error.stderr == "not in a transaction\n"
    text = str(error)
    assert text.startswith("cvmfs:repo: cannot publish: exited with status 1 [command: sh -c")
    assert text.endswith("exit status 1]\n  stderr: not in a transaction")
    # Errors travel between processes (the unpacking workers pickle theirs).
    again = pickle.loads(pickle.dumps(caught.value))
    assert (type(again), str(again), again.stderr) == (
        CommandFailed,
        str(caught.value),
        "not in a transaction\n",
    )
    again_publish = pickle.loads(pickle.dumps(error))
    assert (str(again_publish), again_publish.exit_code) == (text, 1)


def test_a_plain_publish_error_reads_as_before() -> None:
    assert str(PublishError("dir:/r: cannot write x: Permission denied")) == (
        "dir:/r: cannot write x: Permission denied"
    )
