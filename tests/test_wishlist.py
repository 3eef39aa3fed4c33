"""Wish lists: the real recipes, every validation rule with its line, options, output_format."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from unpacked.errors import ConfigError, InvalidReferenceError, UnpackedError
from unpacked.platform import Platform
from unpacked.reference import DOCKER_HUB, parse
from unpacked.wishlist import (
    DEFAULT_OUTPUT_FORMAT,
    PLACEHOLDERS,
    Problem,
    WishList,
    WishlistError,
    load,
    loads,
    render_output_format,
)
from unpacked.wishlist._glob import compile_glob

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")
D = "sha256:" + "0123456789abcdef" * 4

CERN = "github-cvmfs-images-unpacked.cern.ch-recipe.yaml"
PSI = "psi-cvmfs-contrib-cvmfs-unpack-api-recipe.yaml"
NEURODESK = "neurodesk-recipe_neurodesk_template.yaml"
OSG = "osg-cvmfs-singularity-sync-docker_images.txt"


def _recipes_dir() -> Path:
    candidates = [Path(__file__).resolve().parents[2] / "shared" / "real-recipes"]
    if shared := os.environ.get("UNPACKED_SHARED_DIR"):
        candidates.append(Path(shared) / "real-recipes")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    pytest.fail(f"real recipes not found in any of {[str(c) for c in candidates]}")


def _errors(text: str, *, strict: bool = False) -> list[Problem]:
    with pytest.raises(WishlistError) as caught:
        loads(text, source="recipe.yaml", strict=strict)
    return list(caught.value.problems)


# --- the real wish lists --------------------------------------------------------------------


def test_every_real_wish_list_loads() -> None:
    files = sorted(p for p in _recipes_dir().iterdir() if p.suffix in (".yaml", ".txt"))
    assert [p.name for p in files] == sorted([CERN, PSI, NEURODESK, OSG])
    for path in files:
        wishes = load(path).wishes
        text = path.read_text("utf-8").split("\n")
        for wish in wishes:  # every wish points at the line it was written on
            assert wish.text in text[wish.line - 1], (path.name, wish)


def test_unpacked_cern_ch_recipe() -> None:
    path = _recipes_dir() / CERN
    raw = yaml.safe_load(path.read_text("utf-8"))["input"]
    assert len(raw) == 47
    wishlist = load(path)
    assert wishlist.format == "recipe-v1"
    assert wishlist.version == 1
    assert wishlist.user == "cvmfsunpacker"
    assert wishlist.repository == "cvmfs:unpacked.cern.ch"
    assert wishlist.output_format == "https://gitlab-registry.cern.ch/unpacked/sync/$(image)"
    assert wishlist.platforms == (AMD64,)
    assert len(wishlist.wishes) == 46
    assert [w.text for w in wishlist.wishes] == list(dict.fromkeys(raw))  # first kept, in order
    assert sum(w.reference.is_wildcard for w in wishlist.wishes) == 1
    assert all(w.platforms == (AMD64,) and not w.skip_flat for w in wishlist.wishes)
    # The duplicate is reported naming both of its lines.
    lines = [n for n, s in enumerate(path.read_text("utf-8").split("\n"), 1) if "pybdsf" in s]
    assert len(lines) == 2
    (warning,) = wishlist.warnings
    assert warning.startswith(f"{path}:{lines[1]}: input[16] ")
    first = "input[15] 'https://registry.hub.docker.com/stimela/pybdsf:1.6.6'"
    assert f"duplicate of {first} at line {lines[0]}; listed once" in warning
    (kept,) = [w for w in wishlist.wishes if "pybdsf" in w.text]
    assert kept.line == lines[0]


def test_strict_rejects_the_unpacked_cern_ch_duplicate() -> None:
    path = _recipes_dir() / CERN
    with pytest.raises(WishlistError) as caught:
        load(path, strict=True)
    (problem,) = caught.value.problems
    assert "pybdsf" in str(problem)
    assert "duplicate" in problem.message


def test_psi_recipe() -> None:
    wishlist = load(_recipes_dir() / PSI)
    assert wishlist.repository == "cvmfs:testing.psi.ch"
    assert wishlist.user is None
    assert wishlist.output_format is None
    ((wish),) = wishlist.wishes
    assert str(wish.reference) == "https://registry.hub.docker.com/library/python:3.8"
    assert wishlist.warnings == ()


def test_neurodesk_template_has_no_inputs() -> None:
    wishlist = load(_recipes_dir() / NEURODESK)
    assert wishlist.wishes == ()
    assert wishlist.repository == "cvmfs:neurodesk.ardc.edu.au"
    assert wishlist.output_format == "$(scheme)://registry.hub.docker.com/$(image)_thin"
    assert [w.split(": ", 1)[1] for w in wishlist.warnings] == ["lists no images"]


def test_osg_plain_list() -> None:
    wishlist = load(_recipes_dir() / OSG)
    assert wishlist.format == "plain"
    assert (wishlist.version, wishlist.user, wishlist.repository) == (None, None, None)
    assert len(wishlist.wishes) == 562
    assert sum(w.reference.is_wildcard for w in wishlist.wishes) == 113
    assert wishlist.warnings == ()
    assert all(w.platforms == (AMD64,) for w in wishlist.wishes)
    first = wishlist.wishes[0]
    assert (first.text, str(first.reference)) == (
        "debian:latest",
        f"{DOCKER_HUB}/library/debian:latest",
    )


def test_real_output_formats_render_to_valid_references() -> None:
    for name in (CERN, NEURODESK):
        template = load(_recipes_dir() / name).output_format
        assert template is not None
        for wish in load(_recipes_dir() / CERN).wishes:
            if not wish.reference.is_wildcard:
                parse(render_output_format(template, wish.reference))


# --- errors: each with its line and a fragment of its message --------------------------------


@dataclass(frozen=True)
class Bad:
    name: str
    text: str
    line: int | None
    fragment: str
    count: int = 1  # problems expected in total


BAD = [
    Bad(
        "typo top key",
        "version: 1\ninptu:\n  - ubuntu\n",
        2,
        "inptu: unknown key; did you mean 'input'?",
    ),
    Bad(
        "typo cvmfs_repo",
        "version: 1\ncvmfs_rep: a.b\ninput: []\n",
        2,
        "did you mean 'cvmfs_repo'?",
    ),
    Bad(
        "unknown key, nothing close",
        "version: 1\nfrobnicate: 3\ninput: []\n",
        2,
        "expected one of: version, user",
    ),
    Bad(
        "typo wish key",
        "version: 1\ninput:\n  - image: ubuntu\n    skip-layres: true\n",
        4,
        "input[0].skip-layres: unknown key; did you mean 'skip-layers'?",
    ),
    Bad(
        "key twice",
        "version: 1\ninput: [a]\nuser: x\ninput: [b]\n",
        4,
        "input: key given twice (first at line 2)",
    ),
    Bad("non-string key", "version: 1\ninput: []\n3: x\n", 3, "unexpected key the integer 3"),
    Bad(
        "input a string",
        "version: 1\ninput: ubuntu\n",
        2,
        "input: expected a list of image references, got a string 'ubuntu'",
    ),
    Bad(
        "input a mapping",
        "version: 1\ninput:\n  image: ubuntu\n",
        3,
        "expected a list of image references, got a mapping",
    ),
    Bad(
        "version a word", "version: one\ninput: []\n", 1, "version: expected 1, got a string 'one'"
    ),
    Bad("version quoted", "version: '1'\ninput: []\n", 1, "expected 1, got a string '1'"),
    Bad("version float", "input: []\nversion: 1.0\n", 2, "expected 1, got the number 1.0"),
    Bad("unknown version", "version: 2\ninput: []\n", 1, "unknown version 2; only 1 exists"),
    Bad(
        "missing version",
        "user: x\ninput:\n  - ubuntu\n",
        1,
        "version: missing; a recipe starts with 'version: 1'",
    ),
    Bad("missing version after comments", "# a header\n\ninput: []\n", 3, "version: missing"),
    Bad(
        "user a number",
        "version: 1\nuser: 12\ninput: []\n",
        2,
        "user: expected a string, got the integer 12",
    ),
    Bad(
        "cvmfs_repo a list",
        "version: 1\ncvmfs_repo: [a]\ninput: []\n",
        2,
        "cvmfs_repo: expected a string, got a list",
    ),
    Bad(
        "output_format a list",
        "version: 1\noutput_format: [x]\ninput: []\n",
        2,
        "output_format: expected a string, got a list",
    ),
    Bad(
        "platforms a string",
        "version: 1\nplatforms: linux/amd64\ninput: []\n",
        2,
        "platforms: expected a list, got a string 'linux/amd64'",
    ),
    Bad(
        "platforms empty",
        "version: 1\nplatforms: []\ninput: [ubuntu]\n",
        2,
        "platforms: empty list",
    ),
    Bad(
        "input item a number",
        "version: 1\ninput:\n  - ubuntu\n  - 42\n",
        4,
        "input[1]: expected an image reference or a mapping with 'image', got the integer 42",
    ),
    Bad(
        "input item a list",
        "version: 1\ninput:\n  - [a, b]\n",
        3,
        "input[0]: expected an image reference or a mapping",
    ),
    Bad("input item empty", "version: 1\ninput:\n  - ubuntu\n  -\n", 4, "got an empty value"),
    Bad("input item a boolean", "version: 1\ninput:\n  - yes\n", 3, "got the boolean yes"),
    Bad(
        "bad reference",
        "version: 1\ninput:\n  - ubuntu\n  # a comment\n\n  - 'ubuntu:22.04 x'\n",
        6,
        "input[1] 'ubuntu:22.04 x': invalid image reference: contains whitespace",
    ),
    Bad(
        "bad reference upper case",
        "version: 1\ninput: [ubuntu, debian,\n  Foo/Bar]\n",
        3,
        "input[2] 'Foo/Bar': invalid image reference: repository must be lowercase",
    ),
    Bad(
        "bad reference in mapping",
        "version: 1\ninput:\n  - image: 'ubuntu:'\n",
        3,
        "input[0] 'ubuntu:': invalid image reference: empty tag",
    ),
    Bad(
        "password masked",
        "version: 1\ninput:\n  - 'https://me:s3cret@ghcr.io/x:1'\n",
        3,
        "input[0] 'https://***@ghcr.io/x:1'",
    ),
    Bad(
        "image not a string",
        "version: 1\ninput:\n  - image: [ubuntu]\n",
        3,
        "input[0].image: expected a string, got a list",
    ),
    Bad(
        "mapping without image",
        "version: 1\ninput:\n  - platforms: [linux/arm64]\n",
        3,
        "input[0]: mapping without 'image: <reference>'",
    ),
    Bad(
        "skip-flat a string",
        "version: 1\ninput:\n  - image: ubuntu\n    skip-flat: 'yes'\n",
        4,
        "input[0].skip-flat: expected true or false, got a string 'yes'",
    ),
    Bad(
        "bad platform",
        "version: 1\nplatforms:\n  - linux/amd64\n  - linux\ninput: [ubuntu]\n",
        4,
        "platforms[1] 'linux': invalid platform 'linux'",
    ),
    Bad(
        "bad wish platform",
        "version: 1\ninput:\n  - image: ubuntu\n    platforms: [linux/arm64, 'linux/ arm']\n",
        4,
        "input[0].platforms[1] 'linux/ arm': invalid platform",
    ),
    Bad(
        "platform not a string",
        "version: 1\nplatforms: [linux/amd64, 64]\ninput: [ubuntu]\n",
        2,
        "platforms[1]: expected a string, got the integer 64",
    ),
    Bad(
        "yaml unclosed quote",
        "version: 1\ninput:\n  - 'ubuntu\n  - debian\n",
        5,
        "YAML syntax error: found unexpected end of stream"
        " (while scanning a quoted scalar, from line 3)",
    ),
    Bad(
        "yaml bad indentation",
        "version: 1\ninput:\n - ubuntu\n  user: x\n",
        4,
        "YAML syntax error: mapping values are not allowed here",
    ),
    Bad(
        "yaml tab",
        "version: 1\ninput:\n\t- ubuntu\n",
        3,
        "YAML syntax error: found character '\\t' that cannot start any token",
    ),
    Bad(
        "yaml two documents",
        "version: 1\ninput: []\n---\nversion: 1\n",
        3,
        "expected a single document",
    ),
    Bad(
        "yaml control character",
        "version: 1\ninput:\n  - \x01ubuntu\n",
        3,
        "YAML does not allow the character U+0001",
    ),
    Bad(
        "yaml nested too deep",
        "version: 1\ninput: " + "[" * 600 + "]" * 600 + "\n",
        None,
        "YAML nested too deeply",
    ),
    Bad(
        "conflicting duplicates",
        "version: 1\ninput:\n  - ubuntu\n  - image: docker.io/library/ubuntu:latest\n"
        "    platforms: [linux/arm64]\n    skip-flat: true\n",
        4,
        "same image as input[0] 'ubuntu' at line 3, but with different"
        " platforms (linux/amd64 vs linux/arm64/v8); skip-flat (false vs true)",
    ),
    Bad(
        "conflicting schemes",
        "version: 1\ninput:\n  - http://localhost:5000/x\n  - https://localhost:5000/x:latest\n",
        4,
        "different scheme (http vs https)",
    ),
    Bad(
        "repositories disagree",
        "version: 1\ncvmfs_repo: a.example.org\nrepository: cvmfs:b.example.org\ninput: []\n",
        3,
        "repository: 'cvmfs:b.example.org' contradicts cvmfs_repo 'a.example.org' at line 2",
    ),
    Bad(
        "dir and cvmfs_repo",
        "version: 1\nrepository: dir:/srv/images\ncvmfs_repo: a.example.org\ninput: []\n",
        2,
        "contradicts cvmfs_repo",
    ),
    Bad(
        "relative dir",
        "version: 1\nrepository: dir:images\ninput: []\n",
        2,
        "repository 'dir:images': a dir: repository needs an absolute path",
    ),
    Bad(
        "unknown backend",
        "version: 1\nrepository: s3:bucket\ninput: []\n",
        2,
        "expected 'dir:/absolute/path' or 'cvmfs:repository.name'",
    ),
    Bad(
        "bad cvmfs name",
        "version: 1\ncvmfs_repo: 'a b'\ninput: []\n",
        2,
        "cvmfs_repo 'a b': bad CernVM-FS repository name 'a b'",
    ),
    Bad(
        "bad lease path",
        "version: 1\nrepository: cvmfs:a.org/x/../y\ninput: []\n",
        2,
        "bad lease path 'x/../y'",
    ),
    Bad(
        "unknown placeholder",
        "version: 1\noutput_format: '$(scheme)://r.org/$(imag)'\ninput: []\n",
        2,
        "unknown placeholder $(imag); did you mean $(image)?",
    ),
    Bad(
        "unclosed placeholder",
        "version: 1\noutput_format: 'r.org/$(image'\ninput: []\n",
        2,
        "'$(' without a closing ')'",
    ),
    Bad(
        "bad ignoreErrors pattern",
        "version: 1\nignoreErrors: ['a[']\ninput: []\n",
        2,
        "ignoreErrors[0] 'a[': bad pattern: '[' without a closing ']'",
    ),
    Bad(
        "ignoreErrors a string",
        "version: 1\nignoreErrors: '*'\ninput: []\n",
        2,
        "ignoreErrors: expected a list",
    ),
    Bad(
        "plain list bad reference",
        "ubuntu\n# comment\n\nFoo/bar\n",
        4,
        "'Foo/bar': invalid image reference: repository must be lowercase",
    ),
    Bad(
        "plain list two words",
        "ubuntu\nubuntu latest\ndebian\n",
        2,
        "expected one image reference per line, found 2 words",
    ),
    Bad("plain list '#' glued", "ubuntu#latest\n", 1, "'#' is not allowed"),
    Bad(
        "YAML list instead of a recipe",
        "- ubuntu\n- debian\n",
        1,
        "(a YAML recipe is a mapping: 'version: 1', then 'input:' and its list)",
        2,
    ),
    Bad(
        "a lone key is a plain line",
        "ubuntu:\n",
        1,
        "'ubuntu:': invalid image reference: empty tag",
    ),
]


@pytest.mark.parametrize("case", BAD, ids=lambda case: case.name)
def test_bad_wish_list(case: Bad) -> None:
    problems = _errors(case.text)
    assert len(problems) == case.count, "\n".join(map(str, problems))
    assert any(p.line == case.line and case.fragment in str(p) for p in problems), "\n".join(
        map(str, problems)
    )


def test_message_format_names_file_line_and_entry() -> None:
    (problem,) = _errors("version: 1\ninput:\n  - ubuntu\n  - 'ubuntu:22.04 x'\n")
    assert str(problem) == (
        "recipe.yaml:4: input[1] 'ubuntu:22.04 x': "
        "invalid image reference: contains whitespace or control characters"
    )
    assert (problem.source, problem.line, problem.entry) == (
        "recipe.yaml",
        4,
        "input[1] 'ubuntu:22.04 x'",
    )


def test_all_problems_of_a_file_are_reported_at_once() -> None:
    text = "\n".join(
        [
            "version: 3",  # 1
            "inptu: []",  # 2
            "platforms: [linux/amd64, windows]",  # 3
            "output_format: '$(tags)'",  # 4
            "input:",  # 5
            "  - ubuntu",  # 6
            "  - 'bad ref'",  # 7
            "  - image: debian",  # 8
            "    skip-flat: maybe",  # 9
            "  - 17",  # 10
        ]
    )
    with pytest.raises(WishlistError) as caught:
        loads(text, source="many.yaml")
    error = caught.value
    assert isinstance(error, UnpackedError)
    assert [p.line for p in error.problems] == [1, 2, 3, 4, 7, 9, 10]
    lines = str(error).split("\n")
    assert len(lines) == 7
    assert all(line.startswith("many.yaml:") for line in lines)
    assert "unknown version 3" in lines[0]
    assert "did you mean 'input'" in lines[1]
    assert "invalid platform 'windows'" in lines[2]
    assert "$(tags); did you mean $(tag)?" in lines[3]
    assert "'bad ref'" in lines[4]
    assert "skip-flat: expected true or false" in lines[5]
    assert "input[3]: expected an image reference" in lines[6]


def test_load_reports_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(WishlistError, match=r"nope\.yaml: cannot read: No such file"):
        load(missing)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"ubuntu\ndebian\n\xff\xfe\n")
    with pytest.raises(WishlistError) as caught:
        load(binary)
    (problem,) = caught.value.problems
    assert (problem.line, problem.message) == (3, "not UTF-8 text (byte 0xff)")


# --- warnings, and strict mode ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        (
            "ubuntu\ndebian\ndocker.io/library/ubuntu:latest\n",
            3,
            "'docker.io/library/ubuntu:latest': duplicate of 'ubuntu' at line 1; listed once",
        ),
        (
            "version: 1\nplatforms: [linux/amd64, linux/x86_64]\ninput: [ubuntu]\n",
            2,
            "platforms[1] 'linux/x86_64': platform linux/amd64 listed twice",
        ),
        (
            "version: 1\nplatforms: [linux/amd46]\ninput: [ubuntu]\n",
            2,
            "unknown architecture 'amd46'; did you mean 'amd64'?",
        ),
        (
            "version: 1\ninput:\n  - image: ubuntu\n    skip-flat: true\n    skip-layers: true\n",
            3,
            "skip-flat and skip-layers both true",
        ),
        ("# nothing here yet\n", None, "lists no images"),
        ("version: 1\ninput:\n", None, "lists no images"),
    ],
)
def test_warnings_and_strict(text: str, line: int | None, fragment: str) -> None:
    (warning,) = loads(text, source="w.yaml").warnings
    where = "w.yaml" if line is None else f"w.yaml:{line}"
    assert warning.startswith(where + ": ")
    assert fragment in warning
    (problem,) = _errors(text, strict=True)
    assert problem.line == line
    assert fragment in str(problem)


def test_duplicates_collapse_across_spellings() -> None:
    text = "\n".join(
        [
            "ubuntu",
            "docker.io/library/ubuntu:latest",
            "https://registry.hub.docker.com/library/ubuntu",
            "ubuntu:*",  # a wildcard is its own wish, even if it matches 'latest'
            "ubuntu@" + D,
            "ubuntu:latest@" + D,
        ]
    )
    wishlist = loads(text, source="l.txt")
    assert [w.text for w in wishlist.wishes] == [
        "ubuntu",
        "ubuntu:*",
        "ubuntu@" + D,
        "ubuntu:latest@" + D,
    ]
    assert [w.split(": ")[0] for w in wishlist.warnings] == ["l.txt:2", "l.txt:3"]
    assert all("at line 1" in w for w in wishlist.warnings)


# --- the recipe additions -------------------------------------------------------------------


def test_mapping_wishes_and_global_platforms() -> None:
    text = """\
version: 1
platforms: [linux/amd64, linux/aarch64]
input:
  - ubuntu:22.04
  - image: ghcr.io/org/app:1.2
    platforms: [linux/arm64]
    skip-flat: true
  - image: 'https://quay.io/org/tool:*'
    skip-layers: yes
"""
    wishlist = loads(text)
    assert wishlist.platforms == (AMD64, ARM64)
    plain, mapped, wildcard = wishlist.wishes
    assert (plain.text, plain.line, plain.platforms) == ("ubuntu:22.04", 4, (AMD64, ARM64))
    assert (plain.skip_flat, plain.skip_layers) == (False, False)
    assert (mapped.text, mapped.line, mapped.platforms) == ("ghcr.io/org/app:1.2", 5, (ARM64,))
    assert (mapped.skip_flat, mapped.skip_layers) == (True, False)
    assert mapped.reference == parse("ghcr.io/org/app:1.2")
    assert (wildcard.line, wildcard.skip_layers, wildcard.reference.is_wildcard) == (8, True, True)
    assert wildcard.reference.scheme == "https"
    assert wishlist.warnings == ()


def test_default_platform_is_linux_amd64() -> None:
    wishlist = loads("version: 1\ninput: [ubuntu]\n")
    assert wishlist.platforms == (AMD64,)
    assert wishlist.wishes[0].platforms == (AMD64,)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([], None),
        (["cvmfs_repo: unpacked.cern.ch"], "cvmfs:unpacked.cern.ch"),
        (["cvmfs_repo: unpacked.cern.ch/sub/dir/"], "cvmfs:unpacked.cern.ch/sub/dir"),
        (["repository: cvmfs:unpacked.cern.ch"], "cvmfs:unpacked.cern.ch"),
        (["repository: dir:/srv//images/"], "dir:/srv/images"),
        (["repository: cvmfs:a.org/", "cvmfs_repo: a.org"], "cvmfs:a.org"),
        (["cvmfs_repo:", "user:"], None),  # empty values mean "not given"
    ],
)
def test_repository_spec(lines: list[str], expected: str | None) -> None:
    wishlist = loads("\n".join(["version: 1", *lines, "input: [ubuntu]"]))
    assert wishlist.repository == expected
    assert wishlist.user is None


def test_empty_output_format_means_ducc_default() -> None:
    assert loads("version: 1\noutput_format: ''\ninput: [a]\n").output_format is None


def test_ignore_errors_patterns_use_go_filepath_match_semantics() -> None:
    text = """\
version: 1
ignoreErrors:
  - 'https://ghcr.io/*'
  - 'https://registry.hub.docker.com/library/cent[o]s:*'
input:
  - 'https://ghcr.io/one:1'
  - 'https://ghcr.io/org/two:1'
  - 'centos:7'
  - 'https://registry.hub.docker.com/library/centos:8'
  - 'ubuntu'
"""
    wishlist = loads(text)
    assert wishlist.ignore_errors == (
        "https://ghcr.io/*",
        "https://registry.hub.docker.com/library/cent[o]s:*",
    )
    # '*' does not cross '/', as in Go; 'centos:7' matches through its URL form.
    assert [w.ignore_errors for w in wishlist.wishes] == [True, False, True, True, False]


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("a*c", ["ac", "abc", "a.b.c"], ["a/c", "abd"]),
        ("a?c", ["abc"], ["ac", "a/c"]),
        ("[a-c]x", ["ax", "cx"], ["dx", "x"]),
        ("[^a-c]x", ["dx", "/x"], ["ax"]),
        ("\\*x", ["*x"], ["ax"]),
        ("[\\]]", ["]"], ["a"]),
        ("a.b", ["a.b"], ["axb"]),
    ],
)
def test_go_glob(pattern: str, matches: list[str], misses: list[str]) -> None:
    regex = compile_glob(pattern)
    assert all(regex.fullmatch(text) for text in matches)
    assert not any(regex.fullmatch(text) for text in misses)


@pytest.mark.parametrize("pattern", ["[", "[]", "[a", "a\\", "[b-a]", "[-]", "[a-]"])
def test_go_glob_rejects_malformed_patterns(pattern: str) -> None:
    with pytest.raises(ValueError):
        compile_glob(pattern)


# --- format detection -----------------------------------------------------------------------


def test_plain_list_comments_blank_lines_crlf_and_bom() -> None:
    text = "\ufeff# header\r\n\r\n  ubuntu:22.04   # trailing comment\r\n\tghcr.io/a/b:*\r\n#x\r\n"
    wishlist = loads(text, source="images.txt")
    assert wishlist.format == "plain"
    assert [(w.text, w.line) for w in wishlist.wishes] == [
        ("ubuntu:22.04", 3),
        ("ghcr.io/a/b:*", 4),
    ]


def test_single_reference_file_is_a_plain_list() -> None:
    (wish,) = loads("ubuntu\n", source="x.yaml").wishes
    assert wish.reference == parse("ubuntu")


def test_format_is_chosen_by_content_not_name(tmp_path: Path) -> None:
    recipe = tmp_path / "docker_images.txt"
    recipe.write_text("version: 1\ninput:\n  - ubuntu\n")
    assert load(recipe).format == "recipe-v1"
    plain = tmp_path / "recipe.yaml"
    plain.write_text("ubuntu\ndebian\n")
    assert load(plain).format == "plain"


# --- output_format ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "reference", "expected"),
    [
        (DEFAULT_OUTPUT_FORMAT, "ubuntu:22.04", f"https://{DOCKER_HUB}/library/ubuntu_thin:22.04"),
        (
            "https://gitlab-registry.cern.ch/unpacked/sync/$(image)",
            "https://registry.hub.docker.com/library/centos:centos7",
            "https://gitlab-registry.cern.ch/unpacked/sync/library/centos:centos7",
        ),
        (
            "$(scheme)://registry.hub.docker.com/$(image)_thin",
            "https://registry.rc.nectar.org.au/docker/vnmd/fsl:6.0",
            "https://registry.hub.docker.com/docker/vnmd/fsl:6.0_thin",
        ),
        ("$(scheme)|$(registry)", "http://localhost:5000/x:1", "http|localhost:5000"),
        ("$(repository)$(reference)", "ghcr.io/a/b:1", "a/b:1"),
        ("$(reference)", "ghcr.io/a/b@" + D, "@" + D),
        ("$(reference)|$(tag)|$(digest)", "ghcr.io/a/b:1@" + D, f":1@{D}|1|{D}"),
        ("$(tag)|$(digest)", "ghcr.io/a/b:1", "1|"),
        ("$(image)", "ghcr.io/a/b@" + D, "a/b@" + D),
        ("x/$(tag)" * 7, "ghcr.io/a/b:1", "x/1" * 7),  # DUCC stops after five; we do not
        ("no placeholders", "ghcr.io/a/b:1", "no placeholders"),
    ],
)
def test_render_output_format(template: str, reference: str, expected: str) -> None:
    assert render_output_format(template, parse(reference)) == expected


def test_render_output_format_refuses_wildcards_and_bad_templates() -> None:
    with pytest.raises(InvalidReferenceError, match="wildcard"):
        render_output_format(DEFAULT_OUTPUT_FORMAT, parse("ubuntu:2*"))
    with pytest.raises(ConfigError, match=r"unknown placeholder \$\(name\)"):
        render_output_format("$(name)", parse("ubuntu"))
    # DUCC's set, exactly: a template valid for DUCC must be valid here and vice versa.
    assert PLACEHOLDERS == (
        "scheme",
        "registry",
        "repository",
        "tag",
        "digest",
        "reference",
        "image",
    )


# --- robustness: any text loads or fails with WishlistError ----------------------------------

_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=20)
    | st.sampled_from(["ubuntu", "linux/arm64", "dir:/x", "cvmfs:a.b"]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["image", "platforms", "skip-flat", "x"]), children, max_size=3
        )
    ),
    max_leaves=8,
)
_KEYS = st.sampled_from(
    [
        "version",
        "user",
        "cvmfs_repo",
        "output_format",
        "input",
        "ignoreErrors",
        "repository",
        "platforms",
        "inptu",
    ]
)


def _never_crashes(text: str) -> None:
    try:
        result = loads(text)
    except WishlistError as exc:
        assert exc.problems
        assert all(p.source == "<string>" for p in exc.problems)
    else:
        assert isinstance(result, WishList)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, max_size=6))
def test_any_recipe_shape_loads_or_fails_cleanly(document: dict[str, object]) -> None:
    _never_crashes(yaml.safe_dump(document))


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab:/-#*[]{}'\" \n\t\x00@.&!%|>"), max_size=40))
def test_any_text_loads_or_fails_cleanly(text: str) -> None:
    _never_crashes(text)
