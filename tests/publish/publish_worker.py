"""Subprocess side of the publish tests: transactions run in a process of their own.

Run as ``python publish_worker.py <command> <root> [args]``; also imported by the tests
for ``build_old`` and ``run_new`` (the crash test's "old" and "new" states). Every
wait here is bounded, so a worker the test forgot cannot hang around for long.

Commands (each prints marker lines, flushed, that the tests wait for):

- ``crash ROOT``: run the "new" transaction on ROOT; prints ``staging`` once the
  transaction is open, ``committing`` at the end of its body, ``committed`` after.
- ``count ROOT N NAME``: N transactions that each increment ``counter`` (slowly, to
  collide), after ``ready`` and once ``ROOT/../go`` exists; prints the seconds spent
  waiting for the lock.
- ``hold ROOT``: open a transaction, print ``holding``, commit when stdin closes.
- ``awkward ROOT``: publish and remove trees with 0555 directories and 000 files,
  and abandon a transaction staging one; prints a JSON report. Run unprivileged.
- ``watch LINK FILE STOP``: read LINK and FILE in a loop until STOP exists; prints
  ``watching``, ``missing`` at the first moment either is absent, then a JSON report.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from pathlib import Path, PurePosixPath

from unpacked.publish import Transaction, open_publisher

P = PurePosixPath
LIMIT = 60.0  # seconds any wait of a worker may take

OLD_TREE = P(".flat/00/old")
STALE_TREE = P(".flat/11/stale")
NEW_TREE = P(".flat/33/new")
NEW_LAYERS = (P(".layers/44/l-a/layerfs"), P(".layers/55/l-b/layerfs"))
OLD_LAYER = P(".layers/22/l-old/layerfs")
PUBLIC = P("reg/img:1")
NEW_PUBLIC = P("reg/new:1")
STALE_PUBLIC = P("reg/stale:1")
DIR_BECOMES_FILE = P("dirfile")
METADATA_FILES = 300
NEW_METADATA_DIRS = 30


def marker(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def fill(directory: Path, files: int, *, label: str, subdirs: int = 10) -> None:
    for index in range(files):
        sub = directory / f"d{index % subdirs}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{index}").write_bytes(f"{label} {index}\n".encode() * 8)


def build_old(transaction: Transaction) -> None:
    """The "old" state: an image, a stale image, metadata, public links."""
    old = transaction.new_dir(OLD_TREE)
    fill(old, 50, label="old", subdirs=5)
    locked = old / "locked"
    locked.mkdir()
    (locked / "secret").write_bytes(b"no access")
    os.chmod(locked / "secret", 0o000)
    os.chmod(locked, 0o555)
    fill(transaction.new_dir(STALE_TREE), 200, label="stale")
    fill(transaction.new_dir(OLD_LAYER), 20, label="layer")
    transaction.new_dir(DIR_BECOMES_FILE / "sub")
    transaction.write_file(DIR_BECOMES_FILE / "note", b"a directory for now")
    transaction.write_file(P(".metadata/reg/img:1/manifest.json"), b'{"old": true}')
    for index in range(METADATA_FILES):
        transaction.write_file(P(f".metadata/m/{index}.json"), f"old {index}".encode())
    transaction.set_symlink(PUBLIC, "../.flat/00/old")
    transaction.set_symlink(STALE_PUBLIC, "../.flat/11/stale")


def run_new(transaction: Transaction) -> None:
    """The "new" transaction, idempotent like a real converter's (it checks before creating)."""
    if not transaction.exists(NEW_TREE):
        fill(transaction.new_dir(NEW_TREE), 300, label="new")
    for layer in NEW_LAYERS:
        if not transaction.exists(layer):
            fill(transaction.new_dir(layer), 100, label=str(layer))
    for index in range(METADATA_FILES):
        transaction.write_file(P(f".metadata/m/{index}.json"), f"new {index}".encode())
    for index in range(NEW_METADATA_DIRS):
        transaction.write_file(P(f".metadata/n/{index}/status.json"), b'{"new": true}')
    transaction.write_file(P(".metadata/reg/img:1/manifest.json"), b'{"new": true}')
    if transaction.exists(DIR_BECOMES_FILE / "note"):
        transaction.remove(DIR_BECOMES_FILE)
    transaction.write_file(DIR_BECOMES_FILE, b"a file now")
    transaction.set_symlink(PUBLIC, "../.flat/33/new")
    transaction.set_symlink(NEW_PUBLIC, "../.flat/33/new")
    for gone in (STALE_PUBLIC, STALE_TREE):
        if transaction.exists(gone):
            transaction.remove(gone)


def crash(root: str) -> None:
    publisher = open_publisher(f"dir:{root}")
    with publisher.transaction(lock_timeout=LIMIT) as transaction:
        marker("staging")
        run_new(transaction)
        marker("committing")
    marker("committed")


def wait_for(path: Path) -> None:
    deadline = time.monotonic() + LIMIT
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {path}")
        time.sleep(0.005)


def count(root: str, rounds: str, name: str) -> None:
    publisher = open_publisher(f"dir:{root}")
    marker("ready")
    wait_for(Path(root).parent / "go")
    waited = 0.0
    for _ in range(int(rounds)):
        asked = time.monotonic()
        with publisher.transaction(lock_timeout=LIMIT) as transaction:
            waited += time.monotonic() - asked
            counter = transaction.read_path(P("counter"))
            value = int(counter.read_text()) if counter.exists() else 0
            time.sleep(0.05)  # a lost update would need exactly this window
            transaction.write_file(P("counter"), str(value + 1).encode())
            transaction.write_file(P(f"log/{value}"), name.encode())
    marker(f"waited {waited:.3f}")


def hold(root: str) -> None:
    publisher = open_publisher(f"dir:{root}")
    with publisher.transaction(lock_timeout=LIMIT) as transaction:
        transaction.write_file(P("held"), str(os.getpid()).encode())
        marker("holding")
        ready, _, _ = select.select([sys.stdin], [], [], LIMIT)
        if not ready:
            raise SystemExit("stdin never closed")
        sys.stdin.read()


def awkward_tree(directory: Path) -> None:
    """Read-only directories, unreadable files, an inaccessible directory, a link out."""
    fill(directory, 20, label="awkward", subdirs=2)
    for sub in ("d0", "d1"):
        (directory / sub / "closed").write_bytes(b"mode 000")
        os.chmod(directory / sub / "closed", 0o000)
    sealed = directory / "d1" / "sealed"
    sealed.mkdir()
    (sealed / "inside").write_bytes(b"behind a 000 directory")
    os.symlink("/etc", directory / "d1" / "outside")
    os.chmod(sealed, 0o000)
    os.chmod(directory / "d1", 0o555)
    os.chmod(directory / "d0", 0o555)


def awkward(root: str) -> None:
    publisher = open_publisher(f"dir:{root}")
    tree = P("awkward")
    with publisher.transaction(lock_timeout=LIMIT) as transaction:
        awkward_tree(transaction.new_dir(tree))
    published = os.path.lexists(Path(root) / tree / "d1" / "sealed")
    with publisher.transaction(lock_timeout=LIMIT) as transaction:
        transaction.remove(tree)
    removed = not os.path.lexists(Path(root) / tree)
    abandoned = False
    try:
        with publisher.transaction(lock_timeout=LIMIT) as transaction:
            awkward_tree(transaction.new_dir(tree))
            raise RuntimeError("abandon")
    except RuntimeError:
        abandoned = True
    areas = sorted(os.listdir(Path(root) / ".unpacked" / "transactions"))
    report = {
        "uid": os.getuid(),
        "published": published,
        "removed": removed,
        "abandoned": abandoned,
        "areas": areas,
    }
    marker(json.dumps(report))


def _observe(link: str, file: str, seen: dict[str, set[str]]) -> bool:
    try:
        seen["targets"].add(os.readlink(link))
        with open(file, "rb") as stream:
            data = stream.read()
    except FileNotFoundError:
        return False
    seen["contents"].add(f"{data[:1].decode()}x{len(data)}")
    return True


def watch(link: str, file: str, stop: str) -> None:
    seen: dict[str, set[str]] = {"targets": set(), "contents": set()}
    missing = reads = 0
    deadline = time.monotonic() + LIMIT
    marker("watching")
    while not os.path.exists(stop) and time.monotonic() < deadline:
        for _ in range(200):
            reads += 1
            if not _observe(link, file, seen):
                if missing == 0:
                    marker("missing")
                missing += 1
    report = {"reads": reads, "missing": missing} | {k: sorted(v) for k, v in seen.items()}
    marker(json.dumps(report))


COMMANDS = {"crash": crash, "count": count, "hold": hold, "awkward": awkward, "watch": watch}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
