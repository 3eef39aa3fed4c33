"""Wish-list batch commands end to end: convert, expand-wildcard, check-image-syntax, status.

Against the real docker-registry of the session (and second ones started here), except
where a fault needs a scripted server: tag-list pagination (docker-registry 2.8 ignores
``n``) uses the fake registry, and transient failures are injected by a transport that
wraps the real one. Every request the library sends goes through ``Recorder``, so the
tests can say exactly what a run cost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import stat
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from registry.fakeserver import FakeRegistry, Reply, Seen
from support.oci import BuiltImage, TarEntry, build_image, tar_bytes
from support.registry import RegistryServer, start_registry
from support.samples import SampleImages, push, put_manifest
from unpacked.batch import BatchOptions, BatchReport, convert_wishlist, plan_jobs
from unpacked.cli import EXIT_FAILURE, EXIT_INPUT, EXIT_OK, main
from unpacked.cli import _wishlist as commands
from unpacked.events import (
    CycleDone,
    Event,
    EventCallback,
    ImageDone,
    ImageStarted,
    LayerProgress,
)
from unpacked.loop import convert_once
from unpacked.publish import open_publisher
from unpacked.reference import parse
from unpacked.registry import RegistryClient, RegistryOptions
from unpacked.wishlist import load, loads

NAMES = ("a", "b", "c", "d", "e")
BASE_FILE = b"shared by every image of this module\n"
NOOP_TAGS = ("t1", "t2", "t3", "t4")
FAST = RegistryOptions(retries=0, timeout=10.0)
"""Client options where the batch's own attempts are the only retries."""


# --- helpers ----------------------------------------------------------------------------


Fault = Callable[[httpx.Request], httpx.Response | None]


class Recorder(httpx.BaseTransport):
    """The real HTTP transport, recording every request; ``fault`` may answer one instead."""

    def __init__(self, fault: Fault | None = None) -> None:
        self._inner = httpx.HTTPTransport()
        self._fault = fault
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.requests.append((request.method, request.url.path))
        answer = self._fault(request) if self._fault is not None else None
        return answer if answer is not None else self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()

    def methods(self) -> Counter[str]:
        return Counter(method for method, _ in self.requests)


def fail_first(count: int, method: str, path: str, status: int = 503) -> Fault:
    """A fault answering ``status`` to the first ``count`` requests ``method path``."""
    left = [count]

    def fault(request: httpx.Request) -> httpx.Response | None:
        if request.method == method and request.url.path == path and left[0] > 0:
            left[0] -= 1
            return httpx.Response(status, json={"errors": [{"code": "UNAVAILABLE"}]})
        return None

    return fault


class Sleeps:
    """A batch ``sleep``: records the delays and never reports a stop."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> bool:
        self.delays.append(seconds)
        return False


def recipe(*inputs: str, extra: str = "") -> str:
    lines = "".join(f"  - '{item}'\n" for item in inputs)
    return f"version: 1\n{extra}input:\n{lines}"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code, out, err = cli(capsys, *argv, "--json")
    try:
        return code, json.loads(out)
    except ValueError:
        pytest.fail(f"not JSON (exit {code}): {out!r}; stderr: {err}")


def by_reference(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {image["reference"]: image for image in report["images"]}


def flat_of(repo: Path, reference: str) -> Path:
    """The flat tree a public link points at; checks that the link is relative, into .flat."""
    link = repo / parse(reference).public_name
    target = os.readlink(link)
    assert not target.startswith("/"), target
    resolved = link.resolve()
    assert resolved.parent.parent == (repo / ".flat").resolve()
    return resolved


def identity(repo: Path, reference: str) -> bytes:
    """The ``id`` file of the image published as ``reference`` (which image it is)."""
    return (flat_of(repo, reference) / "id").read_bytes()


def tree_state(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry below ``root`` but the publisher's private directory: type, mode,
    inode, mtime, size, and content hash or link target. Equal states: nothing was
    rewritten, not even with the same bytes."""
    state: dict[str, tuple[object, ...]] = {}
    for directory, dirs, files in os.walk(root):
        if Path(directory) == root and ".unpacked" in dirs:
            dirs.remove(".unpacked")
        for name in dirs + files:
            path = Path(directory) / name
            info = os.lstat(path)
            entry: tuple[object, ...] = (info.st_mode, info.st_ino, info.st_mtime_ns, info.st_size)
            if stat.S_ISLNK(info.st_mode):
                entry += (os.readlink(path),)
            elif stat.S_ISREG(info.st_mode):
                entry += (hashlib.sha256(path.read_bytes()).hexdigest(),)
            state[str(path.relative_to(root))] = entry
    return state


def no_staging(repo: Path) -> None:
    transactions = repo / ".unpacked" / "transactions"
    leftovers = sorted(p.name for p in transactions.iterdir()) if transactions.exists() else []
    assert leftovers == [], f"staging left in {transactions}"


def convert_in_process(
    path: Path,
    repo: Path,
    *,
    transport: httpx.BaseTransport | None = None,
    options: BatchOptions | None = None,
    sleep: Callable[[float], bool] | None = None,
    stop: threading.Event | None = None,
    on_event: EventCallback | None = None,
) -> BatchReport:
    with RegistryClient(FAST, transport=transport) as client:
        return convert_wishlist(
            load(path),
            client=client,
            publisher=open_publisher(f"dir:{repo}"),
            options=options or BatchOptions(),
            sleep=sleep if sleep is not None else Sleeps(),
            stop=stop,
            on_event=on_event,
        )


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # main() points the root logger at the sys.stderr of the moment (capsys's); later
    # tests must not log into a closed capture.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@dataclass(frozen=True)
class Images:
    """Small distinct images (one shared base layer, one ``id`` file each), pushed as
    ``batch/<name>:1`` and as ``batch/noop-<name>`` with the tags ``NOOP_TAGS``;
    ``batch/w`` has the tags 1.0 1.1 1x0 2.0 (all image a)."""

    registry: RegistryServer
    built: dict[str, BuiltImage]

    def ref(self, repo_tag: str) -> str:
        return f"{self.registry.host}/{repo_tag}"


def build_named(layout: Path, name: str) -> BuiltImage:
    base = tar_bytes([TarEntry.dir("etc"), TarEntry.file("etc/base", BASE_FILE)])
    top = tar_bytes([TarEntry.file("id", f"{name}\n".encode())])
    return build_image(layout, [base, top], tag=name)


@pytest.fixture(scope="module")
def images(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> Images:
    layout = tmp_path_factory.mktemp("batch-layout")
    built = {name: build_named(layout, name) for name in NAMES}
    pushed = {name: push(registry, built[name], f"batch/{name}:1") for name in NAMES}
    wild = push(registry, built["a"], "batch/w:1.0")
    put_manifest(registry, wild, ["1.1", "1x0", "2.0"])
    for name in NAMES:
        noop = push(registry, built[name], f"batch/noop-{name}:{NOOP_TAGS[0]}")
        put_manifest(registry, noop, NOOP_TAGS[1:])
    assert len({image.digest for image in pushed.values()}) == len(NAMES)
    return Images(registry, built)


# --- 1. a mixed wish list ---------------------------------------------------------------


def test_convert_mixed_wishlist_then_rerun(
    images: Images, registry: RegistryServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    push(registry, images.built["b"], "batch/moving:1")
    good = [images.ref("batch/a:1"), images.ref("batch/moving:1")]
    missing = images.ref("batch/a:missing")
    wildcard = images.ref("batch/w:1.?")  # '.' is literal: 1.0 and 1.1, never 1x0
    matched = [images.ref("batch/w:1.0"), images.ref("batch/w:1.1")]
    wishlist = write(tmp_path / "recipe.yaml", recipe(good[0], missing, good[1], wildcard))

    code, report = cli_json(capsys, "convert", str(wishlist), "--repo", f"dir:{repo}")
    assert code == EXIT_FAILURE
    assert report["summary"] == {"added": 4, "updated": 0, "unchanged": 0, "failed": 1}
    assert report["failed"] is True
    outcomes = by_reference(report)
    assert sorted(outcomes) == sorted([*good, missing, *matched])
    failure = outcomes[missing]
    assert (failure["outcome"], failure["attempts"], failure["line"]) == ("failed", 1, 4)
    assert "batch/a:missing" in failure["error"] and "not found" in failure["error"]
    for reference in [*good, *matched]:
        assert outcomes[reference]["outcome"] == "added"
    assert identity(repo, good[0]) == b"a\n"
    assert identity(repo, good[1]) == b"b\n"
    assert all(identity(repo, reference) == b"a\n" for reference in matched)
    assert flat_of(repo, matched[0]) == flat_of(repo, good[0])  # one tree per image id
    assert not (repo / parse(missing).public_name).exists()
    base_layer = images.built["a"].layer_digests[0]
    origin = repo / ".layers" / base_layer[7:9] / base_layer[7:] / ".metadata" / "origin.json"
    assert json.loads(origin.read_text())["origin"] == sorted(
        [images.built["a"].config_digest, images.built["b"].config_digest]
    )

    code, statuses = cli_json(capsys, "status", "--repo", f"dir:{repo}")
    assert code == EXIT_OK
    assert sorted(s["reference"] for s in statuses) == sorted([*good, *matched])
    assert all(s["lastError"] is None for s in statuses)

    # The tag moves; the missing image is dropped from the list.
    push(registry, images.built["c"], "batch/moving:1")
    write(wishlist, recipe(good[0], good[1], wildcard))
    code, report = cli_json(capsys, "convert", str(wishlist), "--repo", f"dir:{repo}")
    assert code == EXIT_OK, report
    assert report["summary"] == {"added": 0, "updated": 1, "unchanged": 3, "failed": 0}
    assert by_reference(report)[good[1]]["outcome"] == "updated"
    assert identity(repo, good[1]) == b"c\n"

    code, report = cli_json(capsys, "convert", str(wishlist), "--repo", f"dir:{repo}")
    assert code == EXIT_OK
    assert report["summary"] == {"added": 0, "updated": 0, "unchanged": 4, "failed": 0}
    no_staging(repo)


def test_bad_reference_rejects_the_whole_wishlist(
    images: Images, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    text = recipe(images.ref("batch/a:1"), images.ref("batch/a:1 and more"))
    wishlist = write(tmp_path / "recipe.yaml", text)
    code, out, err = cli(capsys, "convert", str(wishlist), "--repo", f"dir:{repo}")
    assert code == EXIT_INPUT
    assert f"{wishlist}:4:" in err
    assert "invalid image reference" in err
    assert out == ""
    assert not repo.exists()  # not even the good image: the list is rejected before any work

    code, out, _ = cli(capsys, "check-image-syntax", str(wishlist))
    assert code == EXIT_INPUT
    assert f"{wishlist}:4:" in out


# --- 2. wildcards -----------------------------------------------------------------------


def paged_tags(repository: str, tags: list[str], page: int) -> Callable[[Seen], Reply]:
    """A tag list served ``page`` tags at a time whatever ``n`` asks, resumed at ``last``,
    with a relative ``Link`` to the next page while tags remain (as distribution 3 does)."""
    path = f"/v2/{repository}/tags/list"
    ordered = sorted(tags)

    def answer(seen: Seen) -> Reply:
        last = parse_qs(urlsplit(seen.path).query).get("last", [""])[0]
        rest = [tag for tag in ordered if tag > last]
        body = json.dumps({"name": repository, "tags": rest[:page]}).encode()
        if len(rest) <= page:
            return Reply(body=body)
        link = f'<{path}?{urlencode({"last": rest[page - 1], "n": page})}>; rel="next"'
        return Reply(body=body, headers={"Link": link})

    return answer


def test_wildcard_expansion_follows_every_page(capsys: pytest.CaptureFixture[str]) -> None:
    many = [f"v{i:03d}" for i in range(120)]
    tags = [*many, "latest", "v1.0", "v1x0"]
    pages = -(-len(tags) // 7)
    with FakeRegistry() as fake:
        fake.on("GET", "/v2/test/paged/tags/list", paged_tags("test/paged", tags, 7))
        # The explicit tag is also matched by the wildcard: converted once, for its own line.
        text = recipe(f"{fake.host}/test/paged:v1.0", f"{fake.host}/test/paged:v*")
        with RegistryClient(FAST) as client:
            jobs, failures = plan_jobs(loads(text, source="w").wishes, client)
        assert failures == []
        assert [job.reference.tag for job in jobs] == ["v1.0", *many, "v1x0"]
        assert jobs[0].wish.line == 3
        assert len(fake.seen("GET")) == pages

        code, out, err = cli(capsys, "expand-wildcard", f"{fake.host}/test/paged:v1?0", "--json")
        assert code == EXIT_OK, err
        expected = ["v100", "v110", "v1x0"]  # '?' is one character, '.' included: v1.0 too
        expected = sorted([*expected, "v1.0"])
        assert json.loads(out) == [f"{fake.host}/test/paged:{tag}" for tag in expected]
        assert len(fake.seen("GET")) == 2 * pages


def test_expand_wildcard_cli_against_the_registry(
    registry: RegistryServer,
    sample_images: SampleImages,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert "v010" in sample_images.many_tags.tags
    pattern = f"{registry.host}/test/tags:v00*"
    expected = [f"{registry.host}/test/tags:v{i:03d}" for i in range(10)]

    code, out, err = cli(capsys, "expand-wildcard", pattern, "--json")
    assert code == EXIT_OK, err
    assert json.loads(out) == expected

    code, out, err = cli(capsys, "expand-wildcard", pattern)
    assert code == EXIT_OK, err
    assert out.splitlines() == expected

    code, out, err = cli(capsys, "expand-wildcard", pattern, "--yaml")
    assert code == EXIT_OK, err
    entries = out.splitlines()
    assert len(entries) == 10
    assert all(entry.startswith("  - '") and entry.endswith("'") for entry in entries)
    # The entries are for pasting into a wish list: they must name the same images,
    # reached the same way.
    wishlist = write(tmp_path / "pasted.yaml", "version: 1\ninput:\n" + out)
    listed = load(wishlist)
    assert sorted(w.reference.public_name for w in listed.wishes) == sorted(
        parse(e).public_name for e in expected
    )
    code, out, err = cli(capsys, "convert", str(wishlist), "--dry-run", "--timeout", "5")
    assert code == EXIT_OK, out + err


# --- 3. a tag list that cannot be read keeps what is published ---------------------------


def test_listing_failure_keeps_published_images(
    images: Images, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = tmp_path / "storage"
    repo = tmp_path / "repo"
    with start_registry(storage, workdir=tmp_path / "registry") as own:
        first = push(own, images.built["a"], "wild/x:1.0")
        put_manifest(own, first, ["1.1"])
        wish = f"{own.host}/wild/x:1.*"
        wishlist = write(tmp_path / "recipe.yaml", recipe(wish))
        code, report = cli_json(capsys, "convert", str(wishlist), "--repo", f"dir:{repo}")
        assert code == EXIT_OK
        assert report["summary"]["added"] == 2
        before = tree_state(repo)
        assert f"{own.host}/wild/x:1.1" in before

        # The repository disappears from the registry: its tag list is a 404.
        shutil.rmtree(storage / "docker/registry/v2/repositories/wild/x")
        code, report = cli_json(capsys, "convert", str(wishlist), "--repo", f"dir:{repo}")
        assert code == EXIT_FAILURE
        assert report["images"] == []
        (failure,) = report["expansionFailures"]
        assert (failure["wish"], failure["line"]) == (wish, 3)
        assert "wild/x" in failure["error"]
        assert tree_state(repo) == before

        own.stop()  # the registry goes away altogether
        result = convert_in_process(wishlist, repo)
    assert result.images == ()
    (expansion,) = result.expansion_failures
    assert expansion.wish.text == wish
    assert own.host in expansion.error
    assert result.failed
    assert tree_state(repo) == before
    no_staging(repo)


# --- 4. attempts and backoff --------------------------------------------------------------


def test_transient_failures_are_retried_with_growing_backoff(
    images: Images, tmp_path: Path
) -> None:
    reference = images.ref("batch/a:1")
    wishlist = write(tmp_path / "recipe.yaml", recipe(reference))
    head = ("HEAD", "/v2/batch/a/manifests/1")

    sleeps = Sleeps()
    recorder = Recorder(fail_first(2, *head))
    options = BatchOptions(attempts=3, backoff=5.0)
    report = convert_in_process(
        wishlist, tmp_path / "repo", transport=recorder, options=options, sleep=sleeps
    )
    (image,) = report.images
    assert (image.outcome, image.attempts) == ("added", 3)
    assert recorder.requests.count(head) == 3
    assert len(sleeps.delays) == 2
    assert (
        4.0 <= sleeps.delays[0] <= 6.0 and 8.0 <= sleeps.delays[1] <= 12.0
    )  # 5 s doubled, ±20 % jitter

    sleeps = Sleeps()
    recorder = Recorder(fail_first(5, *head))
    report = convert_in_process(
        wishlist, tmp_path / "other", transport=recorder, options=options, sleep=sleeps
    )
    (image,) = report.images
    assert (image.outcome, image.attempts) == ("failed", 3)
    assert image.error is not None and "503" in image.error and "batch/a:1" in image.error
    assert recorder.requests.count(head) == 3
    assert len(sleeps.delays) == 2
    assert not (tmp_path / "other" / parse(reference).public_name).exists()


def _events_of(events: list[Event], reference: str) -> list[Event]:
    """The events about one image, in the order they came."""
    mine: list[Event] = []
    for event in events:
        if isinstance(event, ImageDone):
            about = event.image.reference
        elif isinstance(event, CycleDone):
            continue
        else:
            about = event.reference
        if str(about) == reference:
            mine.append(event)
    return mine


def test_a_batch_reports_its_images_through_events(images: Images, tmp_path: Path) -> None:
    """Each image: ImageStarted once (whatever its attempts), its layers' progress, then
    ImageDone with its outcome; CycleDone with the report, last (from the cycle's owner,
    ``convert_once``; ``convert_wishlist`` alone sends none)."""
    a, b, missing = images.ref("batch/a:1"), images.ref("batch/b:1"), images.ref("batch/a:nope")
    wishlist = write(tmp_path / "recipe.yaml", recipe(a, b, missing))
    recorder = Recorder(fail_first(1, "HEAD", "/v2/batch/a/manifests/1"))
    events: list[Event] = []
    with RegistryClient(FAST, transport=recorder) as client:
        report = convert_once(
            load(wishlist),
            client=client,
            publisher=open_publisher(f"dir:{tmp_path / 'repo'}"),
            options=BatchOptions(backoff=0.01),
            stop=threading.Event(),
            on_event=events.append,
        )
    assert [image.outcome for image in report.images] == ["added", "added", "failed"]
    assert report.images[0].attempts == 2
    last = events[-1]
    assert isinstance(last, CycleDone) and (last.report, last.error) == (report, None)
    assert [e for e in events if isinstance(e, CycleDone)] == events[-1:]
    for image in report.images:
        mine = _events_of(events, str(image.reference))
        assert mine[0] == ImageStarted(image.reference, image.platform)
        assert mine[-1] == ImageDone(image)
        progress = mine[1:-1]
        assert all(isinstance(event, LayerProgress) for event in progress)
        done = [e.digest for e in progress if isinstance(e, LayerProgress) and e.phase == "done"]
        assert tuple(done) == (image.result.layers_unpacked if image.result else ())
    assert len(_events_of(events, a)) > 2 and _events_of(events, missing)[1:-1] == []

    events.clear()
    report = convert_in_process(wishlist, tmp_path / "repo", on_event=events.append)
    assert [image.outcome for image in report.images] == ["unchanged", "unchanged", "failed"]
    assert not any(isinstance(event, LayerProgress) for event in events)
    assert [type(e) for e in _events_of(events, b)] == [ImageStarted, ImageDone]
    assert not any(isinstance(event, CycleDone) for event in events)


def _refused_host() -> str:
    """127.0.0.1 and a port nothing listens on: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def test_an_unreachable_registry_costs_its_first_image_only(images: Images, tmp_path: Path) -> None:
    """Once a registry refused every attempt of one image, its other images fail untried;
    the other registries go on."""
    dead = _refused_host()
    refs = [f"{dead}/dead/x:1", images.ref("batch/a:1"), f"{dead}/dead/y:1", f"{dead}/dead/z:1"]
    wishlist = write(tmp_path / "recipe.yaml", recipe(*refs))
    recorder = Recorder()
    sleeps = Sleeps()
    options = BatchOptions(attempts=2, backoff=5.0)
    report = convert_in_process(
        wishlist, tmp_path / "repo", transport=recorder, options=options, sleep=sleeps
    )
    outcome = {str(image.reference): image for image in report.images}
    first, live = outcome[str(parse(refs[0]))], outcome[str(parse(refs[1]))]
    assert (first.outcome, first.attempts, len(sleeps.delays)) == ("failed", 2, 1)
    assert first.error is not None and "cannot connect" in first.error and dead in first.error
    assert live.outcome == "added"
    for ref in refs[2:]:
        untried = outcome[str(parse(ref))]
        assert (untried.outcome, untried.attempts) == ("failed", 0)
        assert untried.error is not None and "not tried" in untried.error
        assert dead in untried.error and "cannot connect" in untried.error
    assert not [path for _, path in recorder.requests if "/dead/y" in path or "/dead/z" in path]
    assert [path for _, path in recorder.requests if "/dead/x" in path]


def test_not_found_is_not_retried(images: Images, tmp_path: Path) -> None:
    reference = images.ref("batch/a:missing")
    wishlist = write(tmp_path / "recipe.yaml", recipe(reference))
    sleeps = Sleeps()
    recorder = Recorder()
    report = convert_in_process(
        wishlist,
        tmp_path / "repo",
        transport=recorder,
        options=BatchOptions(attempts=5),
        sleep=sleeps,
    )
    (image,) = report.images
    assert (image.outcome, image.attempts) == ("failed", 1)
    assert sleeps.delays == []
    assert recorder.requests == [("HEAD", "/v2/batch/a/manifests/missing")]


def test_cli_attempts_option_bounds_the_attempts(
    images: Images,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = Recorder(fail_first(1, "HEAD", "/v2/batch/a/manifests/1"))

    def client(options: RegistryOptions) -> RegistryClient:
        no_retries = RegistryOptions(**{**options.__dict__, "retries": 0})
        return RegistryClient(no_retries, transport=recorder)

    monkeypatch.setattr(commands, "RegistryClient", client)
    wishlist = write(tmp_path / "recipe.yaml", recipe(images.ref("batch/a:1")))
    argv = ("convert", str(wishlist), "--repo", f"dir:{tmp_path / 'repo'}", "--attempts", "1")
    code, report = cli_json(capsys, *argv)
    assert code == EXIT_FAILURE
    (image,) = report["images"]
    assert (image["outcome"], image["attempts"]) == ("failed", 1)
    assert "503" in image["error"]


def test_stop_is_honoured_between_images(images: Images, tmp_path: Path) -> None:
    stop = threading.Event()
    first_head = ("HEAD", "/v2/batch/a/manifests/1")

    def stop_during_first(request: httpx.Request) -> None:
        if (request.method, request.url.path) == first_head:
            stop.set()  # as SIGTERM would, while the first image is under way

    recorder = Recorder(stop_during_first)
    repo = tmp_path / "repo"
    refs = [images.ref("batch/a:1"), images.ref("batch/b:1"), images.ref("batch/c:1")]
    wishlist = write(tmp_path / "recipe.yaml", recipe(*refs))
    report = convert_in_process(wishlist, repo, transport=recorder, stop=stop)
    assert report.stopped
    assert [(str(i.reference), i.outcome) for i in report.images] == [(refs[0], "added")]
    assert identity(repo, refs[0]) == b"a\n"
    assert not any("/batch/b/" in path or "/batch/c/" in path for _, path in recorder.requests)
    no_staging(repo)


# --- 5. failures are contained; registries in parallel ------------------------------------


def test_one_failing_image_never_stops_the_others(
    images: Images,
    registry: RegistryServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    layout = tmp_path / "layout"
    escaping = tar_bytes([TarEntry.file("fine", b"ok\n"), TarEntry.file("../escape", b"x\n")])
    evil = build_image(layout, [escaping], tag="evil")
    push(registry, evil, "batch/evil:1")
    repo = tmp_path / "repo"
    with start_registry(tmp_path / "storage2", workdir=tmp_path / "registry2") as second:
        push(second, images.built["d"], "other/d:1")
        failing = [
            images.ref("batch/evil:1"),
            images.ref("batch/a:missing"),
            f"{second.host}/other/d:missing",
        ]
        good = [images.ref("batch/a:1"), f"{second.host}/other/d:1", images.ref("batch/b:1")]
        listed = [failing[0], failing[1], good[0], failing[2], good[1], good[2]]
        wishlist = write(tmp_path / "recipe.yaml", recipe(*listed))
        code, out, err = cli(capsys, "convert", str(wishlist), "--repo", f"dir:{repo}")
    assert code == EXIT_FAILURE, err
    assert out.splitlines()[0] == "6 images: 3 added, 0 updated, 0 unchanged, 3 failed"
    for reference in failing:
        assert f"  FAILED {reference} [linux/amd64]: " in out
    assert "escape" in out and evil.layer_digests[0] in out  # the layer and the entry
    assert identity(repo, good[0]) == b"a\n"
    assert identity(repo, good[1]) == b"d\n"
    assert identity(repo, good[2]) == b"b\n"
    # Nothing of the broken image: no link, no metadata, no layer, no flat tree.
    assert not (repo / parse(failing[0]).public_name).exists()
    assert not (repo / ".metadata" / parse(failing[0]).public_name).exists()
    digest = evil.layer_digests[0][7:]
    assert not (repo / ".layers" / digest[:2] / digest).exists()
    config = evil.config_digest[7:]
    assert not (repo / ".flat" / config[:2] / config).exists()
    no_staging(repo)


def test_a_failing_layer_is_not_retried(images: Images, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    escaping = tar_bytes([TarEntry.file("../escape", b"x\n")])
    push(images.registry, build_image(layout, [escaping], tag="evil"), "batch/evil2:1")
    wishlist = write(tmp_path / "recipe.yaml", recipe(images.ref("batch/evil2:1")))
    sleeps = Sleeps()
    report = convert_in_process(wishlist, tmp_path / "repo", sleep=sleeps)
    (image,) = report.images
    assert (image.outcome, image.attempts) == ("failed", 1)
    assert sleeps.delays == []
    assert image.error is not None and "../escape" in image.error


def test_an_unexpected_error_fails_its_image_only(
    images: Images,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug met by one image (any exception that is not ours) fails that image, with its
    traceback in the log, and the batch goes on."""
    from unpacked import batch

    real = batch.convert_image
    broken = parse(images.ref("batch/a:1"))

    def convert_image(reference: Any, **kwargs: Any) -> Any:
        if reference == broken:
            raise RuntimeError("boom")
        return real(reference, **kwargs)

    monkeypatch.setattr(batch, "convert_image", convert_image)
    wishlist = write(
        tmp_path / "recipe.yaml", recipe(images.ref("batch/a:1"), images.ref("batch/b:1"))
    )
    repo = tmp_path / "repo"
    sleeps = Sleeps()
    with caplog.at_level(logging.ERROR, logger="unpacked.batch"):
        report = convert_in_process(wishlist, repo, sleep=sleeps)
    failed, added = report.images
    assert (failed.outcome, failed.attempts, sleeps.delays) == ("failed", 1, [])
    assert failed.error == "unexpected error: RuntimeError: boom"
    assert added.outcome == "added" and identity(repo, images.ref("batch/b:1")) == b"b\n"
    (logged,) = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert logged.exc_info is not None and "boom" in str(logged.exc_info[1])


# --- 6. dry run and syntax check --------------------------------------------------------


def _recipes_dir() -> Path:
    candidates = [Path(__file__).resolve().parents[2] / "shared" / "real-recipes"]
    if shared := os.environ.get("UNPACKED_SHARED_DIR"):
        candidates.append(Path(shared) / "real-recipes")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    pytest.fail(f"real recipes not found in any of {[str(c) for c in candidates]}")


def test_dry_run_sends_only_manifest_heads_and_writes_nothing(
    images: Images,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorders: list[Recorder] = []

    def client(options: RegistryOptions) -> RegistryClient:
        recorders.append(Recorder())
        return RegistryClient(options, transport=recorders[-1])

    monkeypatch.setattr(commands, "RegistryClient", client)
    listed_repo = tmp_path / "listed-repo"
    refs = [images.ref(f"batch/{name}:1") for name in NAMES]
    extra = f"repository: dir:{listed_repo}\n"
    wishlist = write(tmp_path / "recipe.yaml", recipe(*refs, extra=extra))

    code, out, err = cli(capsys, "convert", str(wishlist), "--dry-run")
    assert code == EXIT_OK, out + err
    assert len(out.splitlines()) == len(refs)
    assert all(line.startswith("ok   line ") for line in out.splitlines())
    (recorder,) = recorders
    assert sorted(recorder.requests) == sorted(
        ("HEAD", f"/v2/batch/{name}/manifests/1") for name in NAMES
    )

    missing = images.ref("batch/b:missing")
    write(wishlist, recipe(*refs, missing, extra=extra))
    named_repo = tmp_path / "named-repo"
    argv = ("convert", str(wishlist), "--dry-run", "--repo", f"dir:{named_repo}")
    code, out, err = cli(capsys, *argv)
    assert code == EXIT_FAILURE
    assert f"FAIL line 9: {missing}: " in out
    assert recorders[-1].methods() == Counter({"HEAD": len(refs) + 1})
    assert not listed_repo.exists()
    assert not named_repo.exists()


def test_check_image_syntax_real_recipes_and_a_broken_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipes = sorted(p for p in _recipes_dir().iterdir() if p.suffix in (".yaml", ".txt"))
    assert len(recipes) >= 4
    code, out, err = cli(capsys, "check-image-syntax", *map(str, recipes))
    assert code == EXIT_OK, out + err
    assert sum(line.startswith("ok   ") for line in out.splitlines()) == len(recipes)

    broken = write(
        tmp_path / "broken.yaml",
        "version: 1\ninput:\n  - ubuntu:22.04\n  - 'ubuntu:22.04:nope'\n  - alpine\n",
    )
    code, out, _ = cli(capsys, "check-image-syntax", str(broken), "ubuntu:22.04", "--json")
    assert code == EXIT_INPUT
    checks = json.loads(out)
    assert [c["ok"] for c in checks] == [False, True]
    assert f"{broken}:4:" in checks[0]["detail"]
    assert "ubuntu:22.04:nope" in checks[0]["detail"]


# --- 7. a no-op run costs one HEAD per image ---------------------------------------------


def test_noop_convert_makes_one_manifest_head_per_image(images: Images, tmp_path: Path) -> None:
    refs = [images.ref(f"batch/noop-{name}:{tag}") for name in NAMES for tag in NOOP_TAGS]
    assert len(refs) >= 20
    wishlist = write(tmp_path / "recipe.yaml", recipe(*refs))
    repo = tmp_path / "repo"
    first = convert_in_process(wishlist, repo)
    assert Counter(i.outcome for i in first.images) == {"added": len(refs)}

    recorder = Recorder()
    again = convert_in_process(wishlist, repo, transport=recorder)
    assert Counter(i.outcome for i in again.images) == {"unchanged": len(refs)}
    expected = Counter(
        ("HEAD", f"/v2/{parse(r).repository}/manifests/{parse(r).tag}") for r in refs
    )
    assert Counter(recorder.requests) == expected
    no_staging(repo)


# --- 8. ignoreErrors ----------------------------------------------------------------------


def test_ignore_errors_reports_but_does_not_fail(
    images: Images, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    host = images.registry.host
    good, missing = images.ref("batch/a:1"), images.ref("batch/a:missing")
    unlisted = images.ref("batch/nonexistent:*")
    ignore = f"ignoreErrors: ['{host}/batch/a:miss*', '{host}/batch/nonexistent:*']\n"
    wishlist = write(tmp_path / "recipe.yaml", recipe(good, missing, unlisted, extra=ignore))

    code, report = cli_json(capsys, "convert", str(wishlist), "--repo", f"dir:{repo}")
    assert code == EXIT_OK
    assert report["failed"] is False
    assert report["summary"] == {"added": 1, "updated": 0, "unchanged": 0, "failed": 1}
    failure = by_reference(report)[missing]
    assert (failure["outcome"], failure["ignoreErrors"]) == ("failed", True)
    assert [f["wish"] for f in report["expansionFailures"]] == [unlisted]

    code, out, _ = cli(capsys, "convert", str(wishlist), "--repo", f"dir:{repo}")
    assert code == EXIT_OK
    assert f"FAILED {missing} [linux/amd64] (ignored: ignoreErrors): " in out

    code, out, _ = cli(capsys, "convert", str(wishlist), "--dry-run")
    assert code == EXIT_OK, out

    # The same list without the patterns fails.
    write(wishlist, recipe(good, missing, unlisted))
    code, report = cli_json(capsys, "convert", str(wishlist), "--repo", f"dir:{repo}")
    assert code == EXIT_FAILURE
    assert report["failed"] is True
