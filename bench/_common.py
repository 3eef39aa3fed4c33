"""Measuring helpers shared by the benchmarks: timed child processes, medians, tables.

Peak memory of a child is measured by GNU ``time`` (``/usr/bin/time -f %M``),
which forks the command from its own tiny process. Measuring from here instead
would be wrong twice over: ``RUSAGE_CHILDREN`` keeps the maximum over all
children ever waited for, and even a child's own ``ru_maxrss`` (from
``wait4``) starts at this process's peak, because Linux records the
high-water mark of the address space a child replaces at ``exec`` — and a
child forked (or vforked) from a benchmark that holds a generated image in
memory replaces a big one. Without GNU ``time``, ``wait4`` is used and the
numbers are flagged as upper bounds.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

REPO = Path(__file__).resolve().parent.parent
"""The repository root; ``tests/`` is put on ``sys.path`` for the test-support builders."""

if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))


T = TypeVar("T")


class BenchError(RuntimeError):
    """A measured command failed; the message carries its stderr."""


@dataclass(frozen=True)
class Sample:
    """One measured run: wall seconds, the peak RSS of its largest process (bytes), and
    the CPU seconds (user + system) of all its processes, workers included."""

    seconds: float
    peak_rss: int
    cpu_seconds: float


def _rss_bytes(maxrss_kib: int) -> int:
    # Linux reports ru_maxrss in KiB.
    return maxrss_kib * 1024


def run_measured(
    commands: Sequence[Sequence[str]], *, timeout: float = 1800.0, cwd: Path | None = None
) -> Sample:
    """Run ``commands`` as one pipeline (each stdout into the next stdin); time it.

    Raises ``BenchError`` naming the failed stage and its stderr if any stage
    fails, or if the deadline passes (the pipeline is then killed).
    """
    with contextlib.ExitStack() as stack:
        cpu_before = _children_cpu()
        start = time.perf_counter()
        stages: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []
        rss_files: list[str] = []
        previous: IO[bytes] | None = None
        for index, command in enumerate(commands):
            last = index == len(commands) - 1
            # stderr into a file: a pipe nobody reads while waiting could fill and block.
            errors = stack.enter_context(tempfile.TemporaryFile())
            rss_file = stack.enter_context(tempfile.NamedTemporaryFile())
            rss_files.append(rss_file.name)
            process = subprocess.Popen(
                _rss_wrapper(rss_file.name) + list(command),
                stdin=previous if previous is not None else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if last else subprocess.PIPE,
                stderr=errors,
                cwd=cwd,
            )
            if previous is not None:
                previous.close()  # the next stage owns the pipe now
            previous = process.stdout
            stages.append((process, errors))
        peak = _wait_all(stages, start + timeout)
        seconds = time.perf_counter() - start
        if GNU_TIME is not None:
            peak = max(_read_rss(path) for path in rss_files)
        return Sample(seconds, peak, _children_cpu() - cpu_before)


def _children_cpu() -> float:
    # Every process of a run is waited for (the workers by the tool, the tool by GNU
    # time, GNU time here), so its CPU time lands here; the benchmark's registry, a
    # child not waited for until the end, does not.
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
RSS_IS_EXACT = GNU_TIME is not None
"""False when peaks come from ``wait4`` and include this process's own peak."""


def _rss_wrapper(path: str) -> list[str]:
    return [GNU_TIME, "--format=%M", f"--output={path}"] if GNU_TIME is not None else []


def _read_rss(path: str) -> int:
    # GNU time writes "Command exited with non-zero status N" before the value on failure.
    lines = Path(path).read_text().split()
    return _rss_bytes(int(lines[-1]))


def _wait_all(stages: list[tuple[subprocess.Popen[bytes], IO[bytes]]], deadline: float) -> int:
    peak = 0
    failures = []
    processes = [process for process, _ in stages]
    for process, errors in stages:
        status, maxrss = _wait4(process, deadline, processes)
        peak = max(peak, _rss_bytes(maxrss))
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            errors.seek(0)
            stderr = errors.read().decode(errors="replace").strip()
            failures.append(f"{_show(process)} exited {process.returncode}: {stderr}")
    if failures:
        raise BenchError("; ".join(failures))
    return peak


def _show(process: subprocess.Popen[bytes]) -> str:
    args = process.args
    return " ".join(map(str, args)) if isinstance(args, list) else str(args)


def _wait4(
    process: subprocess.Popen[bytes], deadline: float, everyone: list[subprocess.Popen[bytes]]
) -> tuple[int, int]:
    """The exit status and peak RSS (KiB) of ``process``, polling until ``deadline``."""
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid == process.pid:
            return status, usage.ru_maxrss
        if time.perf_counter() > deadline:
            for other in everyone:
                if other.returncode is None:
                    other.kill()
            raise BenchError(f"{_show(process)} did not finish in time")
        time.sleep(0.005)


@dataclass(frozen=True)
class Result:
    """The repeated samples of one contender, summarised by the median."""

    name: str
    samples: tuple[Sample, ...]
    note: str = ""

    @property
    def seconds(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def peak_rss(self) -> int:
        return int(statistics.median(s.peak_rss for s in self.samples))

    @property
    def cpu_seconds(self) -> float:
        return statistics.median(s.cpu_seconds for s in self.samples)

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "median_seconds": round(self.seconds, 4),
            "median_peak_rss_bytes": self.peak_rss,
            "median_cpu_seconds": round(self.cpu_seconds, 4),
            "samples": [
                {
                    "seconds": round(s.seconds, 4),
                    "peak_rss_bytes": s.peak_rss,
                    "cpu_seconds": round(s.cpu_seconds, 4),
                }
                for s in self.samples
            ],
            "note": self.note,
        }


def mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Rows of cells as an aligned plain-text table; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


SETTLE_SECONDS = 2.0
QUIET_SECONDS = 65.0
QUIET_MAX_SECONDS = 420.0
PROBE_INTERVAL = 15.0
PROBE_FILES = 3000
_RUN_NUMBERS = itertools.count(1)


def settle(*, forget_dentries: bool = True) -> None:
    """Flush dirty pages and pause, so that no run pays for an earlier run's writeback.

    Then, as root, the kernel's unused dentries and inodes are dropped (``drop_caches``
    2; the page cache stays warm). Each lookup that misses the dentry cache walks a whole
    chain of its hash table, and a run that keeps every tree it created (``run_dir``)
    fills the cache with a million dentries. The development VM boots with
    ``dhash_entries=131072``, where that is chains of about 14, and a file created late
    in a run cost twice one created early. A machine sized normally has about 32 times
    the buckets for this memory. Dropping the cache before every run gives each one the
    same short chains.
    """
    os.sync()
    if forget_dentries and os.geteuid() == 0:
        with contextlib.suppress(OSError):
            Path("/proc/sys/vm/drop_caches").write_text("2\n")
    time.sleep(SETTLE_SECONDS)


@contextlib.contextmanager
def throttled_loopback(mbit: float | None) -> Iterator[None]:
    """Loopback limited to ``mbit`` Mbit/s (a ``tbf`` qdisc on ``lo``) while in the block.

    The benchmark's registry is on 127.0.0.1, where a blob downloads at memory speed;
    a real registry is a network away. This shows what overlapping the download with
    the unpacking brings. It throttles everything on loopback: run it on an idle machine.
    """
    if mbit is None:
        yield
        return
    if os.geteuid() != 0:
        raise BenchError("--registry-mbit needs root (tc qdisc on lo)")
    shown = subprocess.run(["tc", "qdisc", "show", "dev", "lo"], check=True, capture_output=True)
    if b"noqueue" not in shown.stdout:
        raise BenchError(f"lo already has a qdisc, not touching it: {shown.stdout!r}")
    rule = ["root", "tbf", "rate", f"{mbit}mbit", "burst", "256kb", "latency", "100ms"]
    subprocess.run(["tc", "qdisc", "add", "dev", "lo", *rule], check=True)
    try:
        yield
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], check=True)


def dentry_hash_size() -> int | None:
    """Buckets of the kernel's dentry hash table, if the kernel said (``dmesg``)."""
    try:
        done = subprocess.run(["dmesg"], check=False, capture_output=True, text=True, timeout=30)
        log = done.stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in log.splitlines():
        if "Dentry cache hash table entries:" in line:
            return int(line.split("entries:")[1].split()[0])
    return None


def quiet(workdir: Path, minimum: float = QUIET_SECONDS) -> None:
    """Wait until inodes deleted before the benchmark no longer slow down creating new ones.

    On ext4 without a journal (this VM's root), the inode allocator skips every inode
    deleted in the last 60 s (5 min while its inode table block is dirty), and pays a
    buffer lookup for each one it skips: after removing a tree of 30,000 files, creating
    files is ten times slower for a minute or more (measured: 30,000 files in 5.2 s, then
    0.5 s once the minute had passed). So runs never delete anything (``run_dir``), and
    the first run waits until creating files stops getting faster: at least
    ``minimum`` s, probing every ``PROBE_INTERVAL`` s, at most ``QUIET_MAX_SECONDS``
    (``minimum`` 0: no wait, for smoke tests).
    """
    os.sync()
    if minimum <= 0:
        return
    print(f"waiting for file creation to settle (at least {minimum:.0f} s)", flush=True)
    time.sleep(minimum)
    deadline = time.monotonic() + QUIET_MAX_SECONDS - minimum
    probes = [_creation_probe(workdir)]
    while time.monotonic() < deadline:
        time.sleep(PROBE_INTERVAL)
        probes.append(_creation_probe(workdir))
        if probes[-1] > 0.85 * probes[-2]:  # no longer getting faster
            break
    print("file creation probes: " + ", ".join(f"{p * 1000:.0f} ms" for p in probes), flush=True)


def _creation_probe(workdir: Path) -> float:
    """Seconds to create ``PROBE_FILES`` empty files in a new directory (kept)."""
    directory = run_dir(workdir, "probe")
    directory.mkdir()
    started = time.perf_counter()
    for index in range(PROBE_FILES):
        os.close(os.open(directory / str(index), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    return time.perf_counter() - started


def compile_bytecode() -> None:
    """Compile ``src/`` to ``__pycache__``, as installing a package does.

    An editable install run with ``PYTHONDONTWRITEBYTECODE`` (set on this VM) compiles
    every module of the tool from source at each start: 0.1-0.2 s that no installed
    ``unpacked`` pays. Existing bytecode is still read under that variable.
    """
    compileall.compile_dir(REPO / "src", quiet=1)


def run_dir(workdir: Path, name: str) -> Path:
    """A path no earlier run used, below ``workdir/runs`` (not created)."""
    parent = workdir / "runs"
    parent.mkdir(exist_ok=True)
    return parent / f"{name}-{next(_RUN_NUMBERS)}"


def round_robin(
    contenders: Sequence[tuple[str, Callable[[], Sample]]], times: int
) -> dict[str, Result]:
    """Run every contender ``times``, interleaved (a b c a b c ...), each after ``settle``.

    Interleaving spreads slow phases of the machine over all contenders instead of
    charging them to whichever ran at that moment.
    """
    samples: dict[str, list[Sample]] = {name: [] for name, _ in contenders}
    for index in range(times):
        for name, once in contenders:
            settle()
            samples[name].append(once())
            print(f"  {name} #{index + 1}: {samples[name][-1].seconds:.3f} s", flush=True)
    return {name: Result(name, tuple(runs)) for name, runs in samples.items()}


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the benchmarks that generate an image (``generate_layers``)."""
    parser.add_argument("--size-mb", type=float, default=100.0, help="compressed image size (MB)")
    parser.add_argument("--files", type=int, default=30_000, help="number of files in the image")
    parser.add_argument("--layers", type=int, default=5, help="number of layers")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (median)")
    parser.add_argument("--seed", type=int, default=20240101)
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument(
        "--quiet-seconds",
        type=float,
        default=QUIET_SECONDS,
        help="least wait before the first run, for earlier deletions to stop slowing file "
        "creation (0: none; see bench/README.md)",
    )
    parser.add_argument("--workdir", default=None, help="where to create the working directory")
    parser.add_argument("--out", default=str(REPO / "bench" / "out"), help="JSON results directory")


def write_results(summary: object, out: Path, name: str) -> None:
    """``summary`` as ``<out>/<name>-<time>.json``."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"results written to {path}")


def run_in_workdir(
    args: argparse.Namespace,
    name: str,
    measure: Callable[[argparse.Namespace, Path], T],
    report: Callable[[T], None],
) -> int:
    """The ``main`` of a benchmark that works in a directory of its own: compile, measure in
    a new directory under ``args.workdir`` (removed after, unless ``args.keep``), report,
    write the results as ``<name>-<time>.json``; 1 if the benchmark failed."""
    compile_bytecode()
    workdir = Path(tempfile.mkdtemp(prefix=f"unpacked-bench-{name}-", dir=args.workdir))
    try:
        summary = measure(args, workdir)
    except BenchError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    finally:
        if getattr(args, "keep", False):
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report(summary)
    write_results(summary, Path(args.out), name)
    return 0


CLI_ENTRY = "import sys; from unpacked.cli import main; sys.exit(main())"
"""``python -c CLI_ENTRY ...`` runs the command line of whichever ``src/`` is on PYTHONPATH."""


def export_src(revision: str, where: Path) -> Path:
    """``src/`` of git ``revision`` under ``where`` (no worktree registered), compiled to
    bytecode as :func:`compile_bytecode` compiles this tree, so neither side compiles at
    every start; returns the exported ``src``."""
    where.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision, "src"],
        capture_output=True,
        check=False,
        timeout=120,
    )
    if archive.returncode != 0:
        raise BenchError(f"git archive {revision}: {archive.stderr.decode(errors='replace')}")
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive.stdout, check=True, timeout=120)
    compileall.compile_dir(str(where / "src"), quiet=1)
    return where / "src"
