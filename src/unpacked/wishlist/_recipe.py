"""DUCC recipe v1 (YAML) with our additions, read from a composed node tree."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from unpacked.errors import ConfigError, InvalidReferenceError
from unpacked.platform import DEFAULT, Platform
from unpacked.reference import parse
from unpacked.wishlist import _nodes as nodes
from unpacked.wishlist._glob import compile_glob
from unpacked.wishlist._model import Listed, Wish, WishList
from unpacked.wishlist._output_format import output_format_problems
from unpacked.wishlist._problems import Findings, quoted
from unpacked.wishlist._repository import cvmfs_repository, repository_spec

RECIPE_KEYS = (
    "version",
    "user",
    "cvmfs_repo",
    "output_format",
    "input",
    "ignoreErrors",
    "repository",
    "platforms",
)
WISH_KEYS = ("image", "platforms", "skip-flat", "skip-layers")

# Go's GOARCH names that container images use; anything else is most likely a typo.
_ARCHITECTURES = frozenset(
    {"386", "amd64", "arm", "arm64", "loong64", "mips", "mips64", "mips64le", "mipsle"}
    | {"ppc64", "ppc64le", "riscv64", "s390x"}
)

_Fields = dict[str, tuple[Node, Node]]
_Check = Callable[[str], str]


@dataclass(frozen=True)
class _Defaults:
    """What every wish of the recipe inherits."""

    platforms: tuple[Platform, ...]
    ignore: tuple[re.Pattern[str], ...]


def read_recipe(root: MappingNode, findings: Findings) -> tuple[WishList, list[Listed]]:
    """The recipe's settings (without wishes) and its wishes in file order, duplicates kept."""
    top = nodes.fields(root, RECIPE_KEYS, "", findings)
    platforms = read_platforms(_value(top, "platforms"), "platforms", findings) or (DEFAULT,)
    patterns = _ignore_patterns(_value(top, "ignoreErrors"), findings)
    settings = WishList(
        source=findings.source,
        format="recipe-v1",
        version=_version(top, root, findings),
        user=_optional_string(top, "user", findings),
        repository=_repository(top, findings),
        output_format=_output_format(top, findings),
        platforms=platforms,
        wishes=(),
        warnings=(),
        ignore_errors=tuple(text for text, _ in patterns),
    )
    defaults = _Defaults(platforms, tuple(regex for _, regex in patterns))
    return settings, _inputs(_value(top, "input"), defaults, findings)


def read_platforms(node: Node | None, entry: str, findings: Findings) -> tuple[Platform, ...]:
    """The platforms of a ``platforms:`` list, duplicates dropped; empty when absent."""
    if node is None or nodes.is_null(node):
        return ()
    if isinstance(node, SequenceNode) and not node.value:
        findings.error(nodes.line(node), entry, "empty list; leave it out for linux/amd64")
    platforms: list[Platform] = []
    for label, line, text in nodes.string_items(node, entry, findings):
        try:
            platform = Platform.parse(text)
        except (ConfigError, ValueError) as exc:
            findings.error(line, label, str(exc))
            continue
        if platform in platforms:
            findings.warn(line, label, f"platform {platform} listed twice")
            continue
        if platform.architecture not in _ARCHITECTURES:
            findings.warn(line, label, _unknown_architecture(platform.architecture))
        platforms.append(platform)
    return tuple(platforms)


def _unknown_architecture(architecture: str) -> str:
    close = difflib.get_close_matches(architecture, sorted(_ARCHITECTURES), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown architecture {architecture!r}{hint}"


def _value(found: _Fields, key: str) -> Node | None:
    """The value node of ``key``; None when absent or empty (``key:`` alone)."""
    node = found[key][1] if key in found else None
    return None if nodes.is_null(node) else node


def _version(top: _Fields, root: MappingNode, findings: Findings) -> int | None:
    if "version" not in top:
        findings.error(nodes.line(root), "version", "missing; a recipe starts with 'version: 1'")
        return None
    node = top["version"][1]
    if not (isinstance(node, ScalarNode) and node.tag == nodes.INT):
        findings.error(nodes.line(node), "version", f"expected 1, got {nodes.describe(node)}")
        return None
    if node.value.strip() != "1":
        findings.error(nodes.line(node), "version", f"unknown version {node.value}; only 1 exists")
        return None
    return 1


def _optional_string(top: _Fields, key: str, findings: Findings) -> str | None:
    node = _value(top, key)
    return None if node is None else nodes.string(node, key, findings)


def _output_format(top: _Fields, findings: Findings) -> str | None:
    template = _optional_string(top, "output_format", findings)
    if not template:  # DUCC treats an empty output_format as "use the default"
        return None
    line = nodes.line(top["output_format"][1])
    for problem in output_format_problems(template):
        findings.error(line, f"output_format {quoted(template)}", problem)
    return template


def _repository(top: _Fields, findings: Findings) -> str | None:
    """``repository`` in canonical form, or ``cvmfs:<cvmfs_repo>``; they must agree."""
    spec = _checked(top, "repository", repository_spec, findings)
    repo = _checked(top, "cvmfs_repo", cvmfs_repository, findings)
    from_repo = None if repo is None else "cvmfs:" + repo
    if spec is not None and from_repo is not None and spec != from_repo:
        findings.error(
            nodes.line(top["repository"][1]),
            "repository",
            f"{spec!r} contradicts cvmfs_repo {repo!r} at line "
            f"{nodes.line(top['cvmfs_repo'][1])}; give one, or the same repository in both",
        )
    return spec or from_repo


def _checked(top: _Fields, key: str, check: _Check, findings: Findings) -> str | None:
    text = _optional_string(top, key, findings)
    if text is None:
        return None
    try:
        return check(text)
    except ValueError as exc:
        findings.error(nodes.line(top[key][1]), f"{key} {quoted(text)}", str(exc))
        return None


def _ignore_patterns(node: Node | None, findings: Findings) -> list[tuple[str, re.Pattern[str]]]:
    if node is None:
        return []
    patterns = []
    for label, line, text in nodes.string_items(node, "ignoreErrors", findings):
        try:
            patterns.append((text, compile_glob(text)))
        except ValueError as exc:
            findings.error(line, label, f"bad pattern: {exc}")
    return patterns


def _inputs(node: Node | None, defaults: _Defaults, findings: Findings) -> list[Listed]:
    if node is None:  # DUCC accepts an empty "input:" (NeuroDesk's template has one)
        return []
    if not isinstance(node, SequenceNode):
        findings.error(
            nodes.line(node),
            "input",
            f"expected a list of image references, got {nodes.describe(node)}",
        )
        return []
    listed = (
        _wish(item, f"input[{index}]", defaults, findings) for index, item in enumerate(node.value)
    )
    return [one for one in listed if one is not None]


def _wish(node: Node, entry: str, defaults: _Defaults, findings: Findings) -> Listed | None:
    if isinstance(node, MappingNode):
        return _mapped_wish(node, entry, defaults, findings)
    if isinstance(node, ScalarNode) and node.tag == nodes.STR:
        options = _Options(defaults.platforms)
        line = nodes.line(node)
        return _listed(
            node.value, line, entry, options=options, defaults=defaults, findings=findings
        )
    findings.error(
        nodes.line(node),
        entry,
        f"expected an image reference or a mapping with 'image', got {nodes.describe(node)}",
    )
    return None


@dataclass(frozen=True)
class _Options:
    platforms: tuple[Platform, ...]
    skip_flat: bool = False
    skip_layers: bool = False


def _mapped_wish(
    node: MappingNode, entry: str, defaults: _Defaults, findings: Findings
) -> Listed | None:
    own = nodes.fields(node, WISH_KEYS, entry, findings)
    if "image" not in own:
        findings.error(nodes.line(node), entry, "mapping without 'image: <reference>'")
        return None
    text = nodes.string(own["image"][1], f"{entry}.image", findings)
    platforms = read_platforms(_value(own, "platforms"), f"{entry}.platforms", findings)
    skip_flat = _flag(own, "skip-flat", entry, findings)
    skip_layers = _flag(own, "skip-layers", entry, findings)
    if text is None or skip_flat is None or skip_layers is None:
        return None
    options = _Options(platforms or defaults.platforms, skip_flat, skip_layers)
    line = nodes.line(own["image"][1])
    if skip_flat and skip_layers:
        findings.warn(
            line,
            f"{entry} {quoted(text)}",
            "skip-flat and skip-layers both true: nothing would be unpacked",
        )
    return _listed(text, line, entry, options=options, defaults=defaults, findings=findings)


def _flag(own: _Fields, key: str, entry: str, findings: Findings) -> bool | None:
    """The boolean ``key`` of a wish mapping; False when absent, None when malformed."""
    node = own[key][1] if key in own else None
    return False if node is None else nodes.boolean(node, f"{entry}.{key}", findings)


def _listed(
    text: str,
    line: int,
    entry: str,
    *,
    options: _Options,
    defaults: _Defaults,
    findings: Findings,
) -> Listed | None:
    try:
        reference = parse(text)
    except InvalidReferenceError as exc:
        # exc.text, not text: the parser masks any "user:password@" in what it shows.
        findings.error(
            line, f"{entry} {quoted(exc.text)}", f"invalid image reference: {exc.reason}"
        )
        return None
    # DUCC matches the name as written (its inputs are URLs); the URL form also catches
    # other spellings of the same image.
    ignore = any(
        regex.fullmatch(text) or regex.fullmatch(reference.url_form()) for regex in defaults.ignore
    )
    wish = Wish(
        reference,
        text,
        line,
        options.platforms,
        options.skip_flat,
        options.skip_layers,
        ignore,
    )
    return Listed(f"{entry} {quoted(text)}", wish)
