"""The Apptainer sandbox files: their exact format, safe writing, and real runs.

Three layers of evidence:

- format: the generated text for a table of configurations, compared with what
  Apptainer's own code produces (escaping helpers, Go template, Go JSON);
- safety: ``prepare_sandbox`` on trees whose symlinks point at a sentinel
  directory outside the root, which must stay byte-for-byte untouched;
- behaviour: a tiny root file system with the host's dash, ``env`` and their
  libraries, run through the generated action scripts under
  ``unshare`` + ``chroot`` as uid 65534, checking that ENV values and
  ENTRYPOINT/CMD arguments arrive exactly. (crun 1.8 refuses to start here:
  "cgroups in hybrid mode not supported", and ``--cgroup-manager=disabled``
  does not get past that check, hence chroot in fresh namespaces.)
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.tree import snapshot
from unpacked.apptainer import (
    BIND_POINTS,
    LINKS,
    METADATA_DIRS,
    SandboxError,
    apptainer_files,
    prepare_sandbox,
)
from unpacked.apptainer._files import env_script, go_json_indent, labels_json, runscript
from unpacked.apptainer._template import render
from unpacked.manifest import ImageConfig

NOBODY = 65534
DASH = shutil.which("dash") or "/bin/sh"
IMAGE_PATH = "/usr/local/bin:/usr/bin:/bin"
# ENTRYPOINT of a program that prints its arguments, NUL-terminated. Its own
# text has ", $ and \ in it, so it exercises the escaping too.
PRINTER = ("/bin/sh", "-c", 'for a in "$@"; do printf "%s\\0" "$a"; done', "printer")
# The same as a script in the image, for runtime arguments: without
# SINGULARITY_NO_EVAL Apptainer evaluates those through the shell, unescaped.
PRINTARGS = "/usr/local/bin/printargs"
HOSTILE = (
    "plain",
    "two words",
    "",
    "it's",
    'say "hi"',
    "$HOME ${PATH} $(id) `id`",
    "back\\slash \\n \\\\",
    "k=v=w",
    "tab\there",
    "new\nline",
    "ünïcode ✓",
    "*",
    "'\"'\"'",
    "}",
    "-n",
)


def config(**fields: Any) -> ImageConfig:
    base: dict[str, Any] = {"architecture": "amd64", "os": "linux", "diff_ids": ()}
    return ImageConfig(**(base | fields))


def text(files: dict[str, tuple[bytes, int]], path: str) -> str:
    return files[path][0].decode()


# --------------------------------------------------------------------------- format


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param(("A=b",), 'export A="${A:-"b"}"\n', id="plain"),
        pytest.param(("A=two words",), 'export A="${A:-"two words"}"\n', id="spaces"),
        pytest.param(("A=it's",), 'export A="${A:-"it\'s"}"\n', id="single-quote"),
        pytest.param(('A=say "hi"',), 'export A="${A:-"say \\"hi\\""}"\n', id="double-quote"),
        pytest.param(("A=$HOME/x",), 'export A="${A:-"\\$HOME/x"}"\n', id="dollar"),
        pytest.param(("A=`id`",), 'export A="${A:-"\\`id\\`"}"\n', id="backtick"),
        pytest.param(("A=c:\\d",), 'export A="${A:-"c:\\\\d"}"\n', id="backslash"),
        pytest.param(("A=k=v=w",), 'export A="${A:-"k=v=w"}"\n', id="equals-in-value"),
        pytest.param(("A=",), 'export A="${A:-""}"\n', id="empty-value"),
        pytest.param(("A",), 'export A="${A:-}"\n', id="name-only"),
        pytest.param(
            ("PATH=/opt/$x bin:/usr/bin",),
            'export PATH="/opt/\\$x bin:/usr/bin"\n',
            id="path-assigned-outright",
        ),
        pytest.param(("1A=x", "A-B=x", "=x", "A.B=x"), "", id="invalid-names-skipped"),
        pytest.param(
            ("A=1", "B=2", "A=3"),
            'export A="${A:-"1"}"\nexport B="${B:-"2"}"\nexport A="${A:-"3"}"\n',
            id="order-and-repeats-kept",
        ),
    ],
)
def test_env_script_lines(env: tuple[str, ...], expected: str) -> None:
    assert env_script(env) == "#!/bin/sh\n" + expected


def test_env_script_without_env_is_only_the_shebang() -> None:
    files = apptainer_files(config())
    assert text(files, ".singularity.d/env/10-docker2singularity.sh") == "#!/bin/sh\n"


_NAMES = st.from_regex(r"T_[A-Za-z0-9_]{0,8}", fullmatch=True)
_VALUES = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_NAMES, _VALUES, min_size=1, max_size=6))
def test_env_values_arrive_exactly_in_posix_sh(values: dict[str, str]) -> None:
    script = env_script([f"{name}={value}" for name, value in values.items()])
    result = subprocess.run(
        [DASH, "-c", f"{script}\nexec env -0"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=10,
        check=True,
    )
    assert {k: v for k, v in parse_env(result.stdout).items() if k.startswith("T_")} == values


def test_env_value_already_set_wins_over_the_image_default() -> None:
    script = env_script(["KEEP=image", "EMPTY=image", "BARE", "PATH=/image/bin"])
    result = subprocess.run(
        [DASH, "-c", f"{script}\nexec /usr/bin/env -0"],
        env={"KEEP": "runtime", "EMPTY": "", "BARE": "runtime", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=10,
        check=True,
    )
    seen = parse_env(result.stdout)
    # ${NAME:-default}: set and not empty keeps its value; empty takes the image's.
    assert (seen["KEEP"], seen["EMPTY"], seen["BARE"]) == ("runtime", "image", "runtime")
    assert seen["PATH"] == "/image/bin"


@pytest.mark.parametrize(
    ("entrypoint", "cmd", "lines"),
    [
        pytest.param(None, None, ("OCI_ENTRYPOINT=''", "OCI_CMD=''"), id="none"),
        pytest.param((), (), ("OCI_ENTRYPOINT=''", "OCI_CMD=''"), id="empty-lists"),
        pytest.param(("/bin/ep",), None, ("OCI_ENTRYPOINT='\"/bin/ep\"'", "OCI_CMD=''"), id="ep"),
        pytest.param(None, ("ls", "-l"), ("OCI_ENTRYPOINT=''", 'OCI_CMD=\'"ls" "-l"\''), id="cmd"),
        pytest.param(
            ("/bin/sh", "-c"),
            ("echo 'a b'",),
            ('OCI_ENTRYPOINT=\'"/bin/sh" "-c"\'', "OCI_CMD='\"echo '\"'\"'a b'\"'\"'\"'"),
            id="both-with-single-quotes",
        ),
        pytest.param(
            ('say "$x"',),
            ("back\\slash `id`",),
            (
                'OCI_ENTRYPOINT=\'"say \\"\\$x\\""\'',
                "OCI_CMD='\"back\\\\slash \\`id\\`\"'",
            ),
            id="escaped-for-eval",
        ),
    ],
)
def test_runscript_oci_variables(
    entrypoint: tuple[str, ...] | None, cmd: tuple[str, ...] | None, lines: tuple[str, str]
) -> None:
    script = runscript(entrypoint, cmd)
    assert script.split("\n")[:4] == ["#!/bin/sh", *lines, ""]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_VALUES, max_size=5), st.booleans(), st.booleans())
def test_image_arguments_arrive_exactly_through_the_runscript(
    args: list[str], no_eval: bool, as_cmd: bool
) -> None:
    # Either ENTRYPOINT=printer and CMD=args, or no ENTRYPOINT and CMD=printer+args.
    entrypoint, cmd = ((), (*PRINTER, *args)) if as_cmd else (PRINTER, tuple(args))
    env = {"PATH": "/usr/bin:/bin"} | ({"SINGULARITY_NO_EVAL": "1"} if no_eval else {})
    result = subprocess.run(
        [DASH, "-c", runscript(entrypoint, cmd), "runscript"],
        env=env,
        capture_output=True,
        timeout=10,
        check=True,
    )
    assert nul_args(result.stdout) == args


_NO_EVAL_HEAD = """\
if [ -n "$SINGULARITY_NO_EVAL" ]; then
    # ENTRYPOINT only - run entrypoint plus args
    if [ -z "$OCI_CMD" ] && [ -n "$OCI_ENTRYPOINT" ]; then
"""
_EP = "set -- '-x' \"$@\"\nset -- '/bin/ep' \"$@\"\n"
_CMD = "set -- 'it'\"'\"'s' \"$@\"\n"
# An empty {{ .Prepend* }} leaves its indentation behind as a line of spaces.
_BLANK = "        "
# What Go's text/template makes of ociRunscript's SINGULARITY_NO_EVAL block,
# worked out by hand from the template and Go's {{- trimming rules.
_NO_EVAL_BLOCKS = {
    "ep-only": f"""\
        {_EP}
        exec "$@"
    fi

    # CMD only - run CMD or override with args
    if [ -n "$OCI_CMD" ] && [ -z "$OCI_ENTRYPOINT" ]; then
        exec "$@"
    fi

    # ENTRYPOINT and CMD - run ENTRYPOINT with CMD as default args
    # override with user provided args
    if [ $# -gt 0 ]; then
        {_EP}
\telse
{_BLANK}
        {_EP}
    fi
    exec "$@"
fi
""",
    "cmd-only": f"""\
{_BLANK}
        exec "$@"
    fi

    # CMD only - run CMD or override with args
    if [ -n "$OCI_CMD" ] && [ -z "$OCI_ENTRYPOINT" ]; then
        if [ $# -eq 0 ]; then
            {_CMD}
        fi
        exec "$@"
    fi

    # ENTRYPOINT and CMD - run ENTRYPOINT with CMD as default args
    # override with user provided args
    if [ $# -eq 0 ]; then
        {_CMD}
    fi
    exec "$@"
fi
""",
    "both": f"""\
        {_EP}
        exec "$@"
    fi

    # CMD only - run CMD or override with args
    if [ -n "$OCI_CMD" ] && [ -z "$OCI_ENTRYPOINT" ]; then
        if [ $# -eq 0 ]; then
            {_CMD}
        fi
        exec "$@"
    fi

    # ENTRYPOINT and CMD - run ENTRYPOINT with CMD as default args
    # override with user provided args
    if [ $# -gt 0 ]; then
        {_EP}
\telse
        {_CMD}
        {_EP}
    fi
    exec "$@"
fi
""",
    "none": f"""\
{_BLANK}
        exec "$@"
    fi

    # CMD only - run CMD or override with args
    if [ -n "$OCI_CMD" ] && [ -z "$OCI_ENTRYPOINT" ]; then
        exec "$@"
    fi

    # ENTRYPOINT and CMD - run ENTRYPOINT with CMD as default args
    # override with user provided args
    exec "$@"
fi
""",
}
_CASES = {
    "ep-only": (("/bin/ep", "-x"), None),
    "cmd-only": (None, ("it's",)),
    "both": (("/bin/ep", "-x"), ("it's",)),
    "none": (None, None),
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_runscript_no_eval_block_is_the_rendered_go_template(case: str) -> None:
    script = runscript(*_CASES[case])
    start = script.index(_NO_EVAL_HEAD) + len(_NO_EVAL_HEAD)
    end = script.index("\n# Standard Apptainer behavior")
    assert script[start:end] == _NO_EVAL_BLOCKS[case]


def test_runscript_eval_part_is_apptainers_fixed_text() -> None:
    tails = {
        runscript(*case).partition("# Standard Apptainer behavior")[2] for case in _CASES.values()
    }
    (tail,) = tails
    assert tail.endswith('\neval "set ${SINGULARITY_OCI_RUN}"\nexec "$@"\n')
    assert 'CMDLINE_ARGS="${CMDLINE_ARGS} \\"$arg\\""' in tail


@pytest.mark.parametrize(
    ("template", "data", "expected"),
    [
        ("a {{ .X }} b", {"X": "x"}, "a x b"),
        ("a \n\t {{- .X }} b", {"X": "x"}, "ax b"),
        ("a {{ .X -}} \n b", {"X": "x"}, "a xb"),
        ("[{{ if .X }}x{{ else if .Y }}y{{ else }}z{{ end }}]", {"X": "1", "Y": "1"}, "[x]"),
        ("[{{ if .X }}x{{ else if .Y }}y{{ else }}z{{ end }}]", {"X": "", "Y": "1"}, "[y]"),
        ("[{{ if .X }}x{{ else if .Y }}y{{ else }}z{{ end }}]", {"X": "", "Y": ""}, "[z]"),
        ("[{{ if .X }}{{ if .Y }}y{{ end }}x{{ end }}]", {"X": "", "Y": "1"}, "[]"),
        ("[{{ if .X }}{{ if .Y }}y{{ else }}n{{ end }}{{ end }}]", {"X": "1", "Y": ""}, "[n]"),
    ],
)
def test_go_template_subset(template: str, data: dict[str, str], expected: str) -> None:
    assert render(template, data) == expected


@pytest.mark.parametrize(
    "template", ["{{ range .X }}{{ end }}", "{{ if .X }}", "{{ end }}", "{{ printf }}"]
)
def test_go_template_rejects_what_it_does_not_implement(template: str) -> None:
    with pytest.raises(ValueError, match="template"):
        render(template, {"X": "x"})


def test_labels_json_is_go_marshal_indent_with_build_labels() -> None:
    cfg = config(
        architecture="arm64",
        variant="v8",
        created="2024-03-10T23:30:05.123456789+01:00",
        labels={
            "z": "<a & b>",
            "a": "ünï\u2028",
            "org.label-schema.build-arch": "image's own, overridden",
            "lone": "\ud800",
        },
    )
    expected = (
        "{\n"
        '\t"a": "ünï\\u2028",\n'
        '\t"lone": "\ufffd",\n'
        '\t"org.label-schema.build-arch": "arm64",\n'
        '\t"org.label-schema.build-date": "Sunday_10_March_2024_22:30:5_UTC",\n'
        '\t"org.label-schema.schema-version": "1.0",\n'
        '\t"org.label-schema.usage.singularity.deffile.bootstrap": "docker",\n'
        '\t"org.opencontainers.image.architecture": "arm64",\n'
        '\t"org.opencontainers.image.created": "2024-03-10T22:30:05Z",\n'
        '\t"org.opencontainers.image.variant": "v8",\n'
        '\t"z": "\\u003ca \\u0026 b\\u003e"\n'
        "}"
    )
    content = apptainer_files(cfg)[".singularity.d/labels.json"][0]
    assert content == expected.encode()
    assert json.loads(content)["z"] == "<a & b>"


@pytest.mark.parametrize("created", [None, "", "yesterday", "0001-01-01T00:00:00+02:00"])
def test_labels_without_a_usable_created_time_have_no_dates(created: str | None) -> None:
    labels = json.loads(labels_json(config(created=created)))
    assert "org.label-schema.build-date" not in labels
    assert "org.opencontainers.image.created" not in labels
    assert labels["org.label-schema.schema-version"] == "1.0"


def test_go_json_of_an_empty_map() -> None:
    assert go_json_indent({}) == "{}"


def test_apptainer_files_are_the_sandbox_set_with_apptainers_modes() -> None:
    files = apptainer_files(config(env=("A=b",), cmd=("x",), created="2024-01-01T00:00:00Z"))
    scripts = {
        *(f".singularity.d/actions/{name}" for name in ("exec", "run", "shell", "start", "test")),
        *(
            f".singularity.d/env/{name}"
            for name in (
                "01-base.sh",
                "10-docker2singularity.sh",
                "90-environment.sh",
                "95-apps.sh",
                "99-base.sh",
                "99-runtimevars.sh",
            )
        ),
        ".singularity.d/runscript",
        ".singularity.d/startscript",
    }
    assert set(files) == scripts | {".singularity.d/labels.json"}
    assert {path for path, (_, mode) in files.items() if mode == 0o755} == scripts
    assert files[".singularity.d/labels.json"][1] == 0o644
    assert all(
        content.startswith(b"#!/bin/sh\n")
        for path, (content, _) in files.items()
        if path in scripts
    )
    assert files == apptainer_files(
        config(env=("A=b",), cmd=("x",), created="2024-01-01T00:00:00Z")
    )


def test_static_scripts_are_apptainers() -> None:
    files = apptainer_files(config())
    sourcing = 'for script in /.singularity.d/env/*.sh; do\n    if [ -f "$script" ]; then\n'
    for action in ("exec", "run", "shell", "start", "test"):
        assert sourcing in text(files, f".singularity.d/actions/{action}")
    assert text(files, ".singularity.d/actions/exec").endswith('done\n\nexec "$@"\n')
    assert 'LD_LIBRARY_PATH="/.singularity.d/libs"' in text(files, ".singularity.d/env/99-base.sh")
    assert "\texport PATH" not in text(files, ".singularity.d/env/99-runtimevars.sh")
    assert text(files, ".singularity.d/env/90-environment.sh").endswith(
        "\n\n# Custom environment shell code should follow\n"
    )
    assert text(files, ".singularity.d/startscript").count("\n") == 9


# --------------------------------------------------------------------------- writing


def entry_kind(path: Path) -> str:
    mode = path.lstat().st_mode
    return "link" if stat.S_ISLNK(mode) else "dir" if stat.S_ISDIR(mode) else "file"


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    """A directory outside the root that symlinks in the image point at."""
    outside = tmp_path / "outside"
    (outside / "tmp").mkdir(parents=True)
    (outside / "hosts").write_text("127.0.0.1 host-only\n")
    (outside / "runscript").write_text("#!/bin/sh\necho host\n")
    return outside


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "flat"
    path.mkdir()
    return path


def test_fresh_tree_gets_everything(root: Path) -> None:
    report = prepare_sandbox(root, config(cmd=("x",)))

    for path in BIND_POINTS + METADATA_DIRS:
        assert entry_kind(root / path) == "dir", path
        assert stat.S_IMODE((root / path).stat().st_mode) == 0o755, path
    assert list((root / ".singularity.d/libs").iterdir()) == []
    for name, target in LINKS.items():
        assert os.readlink(root / name) == target
        assert (root / name).resolve().is_file(), name
    for name in ("hosts", "resolv.conf"):
        assert (root / "etc" / name).read_bytes() == b""
        assert stat.S_IMODE((root / "etc" / name).stat().st_mode) == 0o644
    files = apptainer_files(config(cmd=("x",)))
    for path, (content, mode) in files.items():
        assert (root / path).read_bytes() == content, path
        assert stat.S_IMODE((root / path).stat().st_mode) == mode, path
    assert not (root / ".singularity.d/test").exists()
    assert not list(root.rglob("*.unpacked-new"))

    assert report.written == tuple(files)
    assert set(report.created) == {
        *BIND_POINTS,
        "var",
        *METADATA_DIRS,
        *LINKS,
        "etc/hosts",
        "etc/resolv.conf",
    }
    assert (report.kept, report.replaced, report.skipped) == ((), (), ())


def test_second_run_changes_nothing_and_keeps_everything(root: Path) -> None:
    cfg = config(env=("A=b",), entrypoint=("/bin/true",))
    prepare_sandbox(root, cfg)
    before = snapshot(root)
    report = prepare_sandbox(root, cfg)
    assert snapshot(root) == before
    assert report.created == ()
    assert set(report.kept) == {*BIND_POINTS, *LINKS, "etc/hosts", "etc/resolv.conf"}


def test_image_files_and_links_are_never_emptied_or_replaced(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc/hosts").write_text("10.0.0.1 image-host\n")
    (root / "etc/hosts").chmod(0o400)
    os.symlink("/run/systemd/resolve/stub-resolv.conf", root / "etc/resolv.conf")
    os.symlink("/usr/local/bin/app", root / "singularity")
    (root / "environment").write_text("image's file\n")

    report = prepare_sandbox(root, config())

    assert (root / "etc/hosts").read_text() == "10.0.0.1 image-host\n"
    assert stat.S_IMODE((root / "etc/hosts").stat().st_mode) == 0o400
    assert os.readlink(root / "etc/resolv.conf") == "/run/systemd/resolve/stub-resolv.conf"
    assert os.readlink(root / "singularity") == "/usr/local/bin/app"
    assert (root / "environment").read_text() == "image's file\n"
    assert {"etc/hosts", "etc/resolv.conf", "singularity", "environment"} <= set(report.kept)


def test_symlinked_bind_points_are_left_alone(root: Path, sentinel: Path) -> None:
    (root / "var").mkdir()
    os.symlink("/tmp", root / "var/tmp")
    os.symlink(str(sentinel), root / "home")
    os.symlink("var/tmp", root / "tmp")
    os.symlink("/nonexistent", root / "srv")
    before = snapshot(sentinel, mtimes=True)

    report = prepare_sandbox(root, config())

    assert os.readlink(root / "var/tmp") == "/tmp"
    assert os.readlink(root / "home") == str(sentinel)
    assert os.readlink(root / "tmp") == "var/tmp"
    assert os.readlink(root / "srv") == "/nonexistent"
    assert {"var/tmp", "home", "tmp", "srv"} <= set(report.kept)
    assert snapshot(sentinel, mtimes=True) == before


def test_symlink_on_the_way_to_a_bind_point_is_not_followed(root: Path, sentinel: Path) -> None:
    os.symlink(str(sentinel), root / "var")  # sentinel has no var/tmp... and must not get one
    (root / "cvmfs").write_text("a file where a directory belongs\n")
    before = snapshot(sentinel, mtimes=True)

    report = prepare_sandbox(root, config())

    assert snapshot(sentinel, mtimes=True) == before
    skipped = dict(report.skipped)
    assert skipped["var/tmp"] == "var is a symlink"
    assert skipped["cvmfs"] == "exists and is not a directory"
    assert (root / "cvmfs").read_text() == "a file where a directory belongs\n"


def test_etc_symlink_out_of_the_tree_writes_nothing_outside(root: Path, sentinel: Path) -> None:
    os.symlink(str(sentinel), root / "etc")
    (sentinel / "hosts").unlink()  # would be created through the link if it were followed
    before = snapshot(sentinel, mtimes=True)

    report = prepare_sandbox(root, config())

    assert snapshot(sentinel, mtimes=True) == before
    assert not (sentinel / "hosts").exists()
    assert not (sentinel / "resolv.conf").exists()
    assert "etc" in report.kept
    assert dict(report.skipped) == {
        "etc/hosts": "etc is a symlink",
        "etc/resolv.conf": "etc is a symlink",
    }


@pytest.mark.parametrize("where", [".singularity.d", ".singularity.d/env"])
def test_symlinked_metadata_directory_is_replaced_not_followed(
    root: Path, sentinel: Path, where: str
) -> None:
    if where != ".singularity.d":
        (root / ".singularity.d").mkdir()
    os.symlink(str(sentinel), root / where)
    before = snapshot(sentinel, mtimes=True)

    report = prepare_sandbox(root, config(env=("A=b",)))

    assert snapshot(sentinel, mtimes=True) == before
    assert entry_kind(root / where) == "dir"
    assert report.replaced == (where,)
    assert (root / ".singularity.d/env/10-docker2singularity.sh").is_file()


def test_metadata_files_replace_links_instead_of_writing_through_them(
    root: Path, sentinel: Path
) -> None:
    (root / ".singularity.d/env").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_text("image tool\n")
    os.symlink(str(sentinel / "runscript"), root / ".singularity.d/runscript")
    os.link(root / "usr/bin/tool", root / ".singularity.d/env/99-base.sh")
    (root / ".singularity.d/env/91-environment.sh").write_text("export FROM_IMAGE=1\n")
    before = snapshot(sentinel, mtimes=True)

    report = prepare_sandbox(root, config(cmd=("x",)))

    assert snapshot(sentinel, mtimes=True) == before
    assert (root / "usr/bin/tool").read_text() == "image tool\n"
    assert entry_kind(root / ".singularity.d/runscript") == "file"
    assert (root / ".singularity.d/runscript").read_text().startswith("#!/bin/sh\nOCI_")
    assert (root / ".singularity.d/env/99-base.sh").stat().st_nlink == 1
    assert (root / ".singularity.d/env/91-environment.sh").read_text() == "export FROM_IMAGE=1\n"
    assert ".singularity.d/runscript" in report.written


def test_directory_where_a_metadata_file_belongs_is_an_error(root: Path) -> None:
    (root / ".singularity.d/runscript").mkdir(parents=True)
    with pytest.raises(SandboxError, match=r"\.singularity\.d/runscript is a directory"):
        prepare_sandbox(root, config())


def test_missing_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="missing"):
        prepare_sandbox(tmp_path / "missing", config())


# --------------------------------------------------------------------------- real runs


def _libraries(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=10, check=True)
    paths = []
    for line in out.stdout.splitlines():
        words = line.split()
        if "=>" in words and len(words) > words.index("=>") + 1:
            paths.append(words[words.index("=>") + 1])
        elif words and words[0].startswith("/"):
            paths.append(words[0])
    return [p for p in paths if p.startswith("/")]


def build_rootfs(root: Path) -> None:
    """A root file system with dash as /bin/sh, env, and the libraries they load."""
    for source, target in (
        (os.path.realpath("/bin/sh"), "bin/sh"),
        ("/usr/bin/env", "usr/bin/env"),
    ):
        for library in _libraries(source):
            destination = root / library.lstrip("/")
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(library, destination)
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, root / target)


_UNSHARE = shutil.which("unshare")
_CHROOT = shutil.which("chroot", path="/usr/sbin:/usr/bin:/sbin:/bin")
needs_chroot = pytest.mark.skipif(
    os.geteuid() != 0 or not _UNSHARE or not _CHROOT or not shutil.which("ldd"),
    reason="needs root, unshare, chroot and ldd",
)


def run_inside(root: Path, argv: Sequence[str], env: dict[str, str] | None = None) -> bytes:
    """Run ``argv`` chrooted into ``root`` as uid 65534, in fresh namespaces, no network."""
    assert _UNSHARE and _CHROOT
    result = subprocess.run(
        [
            _UNSHARE,
            "--mount",
            "--pid",
            "--ipc",
            "--uts",
            "--net",
            "--fork",
            "--kill-child",
            _CHROOT,
            f"--userspec={NOBODY}:{NOBODY}",
            str(root),
            *argv,
        ],
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def parse_env(output: bytes) -> dict[str, str]:
    pairs = (entry.decode().partition("=") for entry in output.split(b"\0") if entry)
    return {name: value for name, _, value in pairs}


def nul_args(output: bytes) -> list[str]:
    assert output.endswith(b"\0") or output == b""
    return [arg.decode() for arg in output.split(b"\0")[:-1]]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "image"
    path.mkdir()
    build_rootfs(path)
    script = path / PRINTARGS.lstrip("/")
    script.parent.mkdir(parents=True)
    script.write_text(f'#!/bin/sh\nexec {" ".join(PRINTER[:2])} \'{PRINTER[2]}\' "$0" "$@"\n')
    script.chmod(0o755)
    return path


@needs_chroot
def test_exec_sees_the_image_env_exactly(image: Path) -> None:
    env = {f"V{i}": value for i, value in enumerate(HOSTILE)}
    cfg = config(env=(f"PATH={IMAGE_PATH}", *(f"{k}={v}" for k, v in env.items()), "BARE"))
    prepare_sandbox(image, cfg)

    seen = parse_env(run_inside(image, ["/.singularity.d/actions/exec", "env", "-0"]))

    assert {k: seen.get(k) for k in env} == env
    assert seen["PATH"] == IMAGE_PATH
    assert seen["BARE"] == ""
    assert seen["LD_LIBRARY_PATH"] == "/.singularity.d/libs"
    # 99-base.sh exports PS1; its value is "$ " under dash, which sets one itself.
    assert "PS1" in seen

    overridden = parse_env(run_inside(image, ["/.exec", "env", "-0"], env={"V0": "from runtime"}))
    assert overridden["V0"] == "from runtime"
    assert overridden["V1"] == env["V1"]


RUN_CASES = {
    # name: (entrypoint, cmd, runtime args, no_eval, expected printed args)
    "cmd-only": (None, (*PRINTER, *HOSTILE), (), False, HOSTILE),
    "cmd-only-no-eval": (None, (*PRINTER, *HOSTILE), (), True, HOSTILE),
    "ep-and-cmd": (PRINTER, HOSTILE, (), False, HOSTILE),
    "ep-and-cmd-no-eval": (PRINTER, HOSTILE, (), True, HOSTILE),
    "ep-and-cmd-with-args": (PRINTER, HOSTILE, ("x y", "it's"), False, ("x y", "it's")),
    "ep-and-cmd-with-hostile-args-no-eval": (PRINTER, ("default",), HOSTILE, True, HOSTILE),
    "ep-only": ((*PRINTER, "fixed arg"), None, (), False, ("fixed arg",)),
    "ep-only-with-args": ((*PRINTER, "fixed"), (), ("a b", ""), False, ("fixed", "a b", "")),
    "ep-only-no-eval": ((*PRINTER, "$fixed"), None, HOSTILE, True, ("$fixed", *HOSTILE)),
    "cmd-replaced-by-args": (None, ("/bin/false",), (PRINTARGS, "a b"), False, ("a b",)),
    "cmd-replaced-by-args-no-eval": (None, ("/bin/false",), (*PRINTER, *HOSTILE), True, HOSTILE),
    "none-with-args": (None, None, (PRINTARGS, "p q", "it's"), False, ("p q", "it's")),
    "none-with-args-no-eval": (None, (), (*PRINTER, "$x"), True, ("$x",)),
}


@needs_chroot
@pytest.mark.parametrize("case", list(RUN_CASES))
def test_run_passes_entrypoint_cmd_and_args_exactly(image: Path, case: str) -> None:
    entrypoint, cmd, args, no_eval, expected = RUN_CASES[case]
    prepare_sandbox(image, config(env=(f"PATH={IMAGE_PATH}",), entrypoint=entrypoint, cmd=cmd))
    env = {"SINGULARITY_NO_EVAL": "1"} if no_eval else {}

    output = run_inside(image, ["/.singularity.d/actions/run", *args], env=env)

    assert nul_args(output) == list(expected)


@needs_chroot
def test_run_without_entrypoint_or_cmd_and_the_other_actions(image: Path) -> None:
    prepare_sandbox(image, config(env=(f"PATH={IMAGE_PATH}", "GREETING=hi there")))

    # Apptainer's runscript then evaluates a bare `set`, which lists the shell's
    # variables, and `exec` with nothing to run: a success that prints them.
    assert b"OCI_CMD=''\n" in run_inside(image, ["/.run"])
    assert (
        run_inside(image, ["/.test"]) == b"No test found in container, executing /bin/sh -c true\n"
    )
    shell = run_inside(image, ["/.shell", "-c", 'printf "%s|%s" "$SHELL" "$GREETING"'])
    assert shell == b"/bin/sh|hi there"
