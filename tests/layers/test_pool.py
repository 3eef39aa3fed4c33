"""``UnpackPool``: layers unpacked by worker processes, and completed in the parent."""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from support.oci import TarEntry, tar_bytes
from support.tree import assert_trees_equal
from unpacked.digest import Digest
from unpacked.errors import LayerError, LowerLayersNeeded, VerificationError
from unpacked.layers import Target, UnpackPool, apply_layer, complete_layer, unpack_layer

T = TarEntry
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
STOP_TIMEOUT = 10.0


def _blob(tmp_path: Path, name: str, entries: list[TarEntry]) -> tuple[Path, Digest]:
    tar = tar_bytes(entries)
    path = tmp_path / f"{name}.tar.gz"
    path.write_bytes(gzip.compress(tar))
    return path, Digest.parse("sha256:" + hashlib.sha256(tar).hexdigest())


LOWER = [T.dir("etc", mode=0o750, uid=7), T.file("etc/passwd", b"root\n"), T.file("keep")]
UPPER = [
    T.file("etc/group", b"root:x:0:\n"),  # etc/ only implicit: takes the lower metadata
    T.file(".wh..wh..opq"),  # opaque root: spelled out against the lower root
    T.file("only", b"upper"),
]


@pytest.mark.skipif(os.geteuid() != 0, reason="whiteout devices need root")
def test_worker_then_completion_equals_unpacking_in_order(tmp_path: Path) -> None:
    lower_blob, lower_id = _blob(tmp_path, "lower", LOWER)
    upper_blob, upper_id = _blob(tmp_path, "upper", UPPER)
    lower = tmp_path / "lower"
    lower.mkdir()
    with lower_blob.open("rb") as stream:
        unpack_layer(stream, GZIP, lower_id, lower, target=Target.FLAT, name="lower")
    in_order, ahead = tmp_path / "in-order", tmp_path / "ahead"
    in_order.mkdir()
    ahead.mkdir()
    with upper_blob.open("rb") as stream:
        expected = unpack_layer(
            stream, GZIP, upper_id, in_order, target=Target.LAYERFS, lower=lower, name="upper"
        )
    with UnpackPool(2) as pool:
        report = pool.submit(upper_blob, GZIP, upper_id, ahead, name="upper").result(60)
    assert report.pending.implicit_dirs == (("etc",),)
    assert report.pending.root_opaque
    assert complete_layer(ahead, lower, report.pending, name="upper") == ()
    assert_trees_equal(in_order, ahead, mtimes=True)
    assert (report.entries, report.diff_size) == (expected.entries, expected.diff_size)
    etc = (ahead / "etc").stat()
    assert (etc.st_mode & 0o7777, etc.st_uid) == (0o750, 7)
    assert os.major((ahead / "keep").lstat().st_rdev) == 0  # whited out


def test_errors_come_back_with_their_type(tmp_path: Path) -> None:
    blob, diff_id = _blob(tmp_path, "layer", [T.file("a", b"a")])
    link, link_id = _blob(tmp_path, "link", [T.hardlink("b", "from/a/lower/layer")])
    wrong = Digest.parse("sha256:" + "0" * 64)
    with UnpackPool(2) as pool:
        mismatch = pool.submit(blob, GZIP, wrong, _empty(tmp_path / "x"), name="L1")
        lower_needed = pool.submit(link, GZIP, link_id, _empty(tmp_path / "y"), name="L2")
        with pytest.raises(VerificationError, match="L1"):
            mismatch.result(60)
        with pytest.raises(LowerLayersNeeded, match="L2"):
            lower_needed.result(60)
        # The workers are still there for more.
        done = pool.submit(blob, GZIP, diff_id, _empty(tmp_path / "z"), name="L3").result(60)
    assert done.entries == 1
    assert (tmp_path / "z" / "a").read_bytes() == b"a"


def _empty(path: Path) -> Path:
    path.mkdir()
    return path


def test_a_worker_that_dies_is_a_layer_error(tmp_path: Path) -> None:
    fifo = tmp_path / "blob"
    os.mkfifo(fifo)  # the worker blocks opening it: it is busy until killed
    with UnpackPool(1) as pool:
        future = pool.submit(fifo, GZIP, Digest.parse("sha256:" + "0" * 64), tmp_path, name="L9")
        worker = _wait_for_worker(os.getpid())
        os.kill(worker, signal.SIGKILL)
        with pytest.raises(LayerError, match=r"L9.*died"):
            future.result(STOP_TIMEOUT)


def test_workers_leave_sigterm_and_sigint_to_their_parent(tmp_path: Path) -> None:
    """systemd sends SIGTERM to the whole service; ``loop`` finishes its image first."""
    blob, diff_id = _blob(tmp_path, "layer", [T.file("a", b"a")])
    with UnpackPool(1) as pool:
        # One layer first: after it, the worker is surely past its start-up.
        pool.submit(blob, GZIP, diff_id, _empty(tmp_path / "first"), name="L0").result(60)
        worker = _wait_for_worker(os.getpid())
        os.kill(worker, signal.SIGTERM)
        os.kill(worker, signal.SIGINT)
        report = pool.submit(blob, GZIP, diff_id, _empty(tmp_path / "out"), name="L1").result(60)
    assert report.entries == 1
    assert (tmp_path / "out" / "a").read_bytes() == b"a"


PARENT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from unpacked.digest import Digest
    from unpacked.layers import UnpackPool
    pool = UnpackPool(1)
    pool.submit(Path(sys.argv[1]), "application/vnd.oci.image.layer.v1.tar",
                Digest.parse("sha256:" + "0" * 64), Path(sys.argv[2]), name="L")
    print("submitted", flush=True)
    sys.stdin.read()
    """
)


def test_workers_die_with_a_killed_parent(tmp_path: Path) -> None:
    """A worker busy with a layer must not go on writing after its conversion was killed."""
    fifo = tmp_path / "blob"
    os.mkfifo(fifo)  # never opened for writing: the worker stays busy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    with subprocess.Popen(
        [sys.executable, "-c", PARENT, str(fifo), str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    ) as parent:
        try:
            assert parent.stdout is not None
            assert parent.stdout.readline() == b"submitted\n"
            worker = _wait_for_worker(parent.pid)
        finally:
            parent.kill()
            parent.wait(STOP_TIMEOUT)
    deadline = time.monotonic() + STOP_TIMEOUT
    while _alive(worker):
        assert time.monotonic() < deadline, f"worker {worker} outlived its killed parent"
        time.sleep(0.02)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()]


def _wait_for_worker(parent: int) -> int:
    deadline = time.monotonic() + STOP_TIMEOUT
    while True:
        for child in _children(parent):
            if b"unpacked.layers._worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
        assert time.monotonic() < deadline, "no worker process started"
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def test_apply_layer_rejects_lower_and_defer_together(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothing to defer"):
        apply_layer(
            gzip.GzipFile(fileobj=None, mode="rb", filename=os.devnull),
            tmp_path,
            target=Target.LAYERFS,
            lower=tmp_path,
            defer_lower=True,
        )


def test_closed_pool_lets_its_workers_exit_before_the_pool_ends(tmp_path: Path) -> None:
    blob, diff_id = _blob(tmp_path, "layer", [T.file("a", b"a")])
    with UnpackPool(2) as pool:
        pool.submit(blob, GZIP, diff_id, _empty(tmp_path / "x"), name="L1").result(60)
        processes = [worker.process for worker in pool._workers]
        pool.close()
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [p.poll() for p in processes] == [0, 0], "both exit on their own, cleanly"
        with pytest.raises(RuntimeError):  # no more layers once closed
            pool.submit(blob, GZIP, diff_id, _empty(tmp_path / "y"), name="L2")
