"""The ``.singularity.d`` files of one image, generated from its configuration. No I/O.

Each generator follows the Apptainer function named in its docstring
(``internal/pkg/build/sources/conveyorPacker_oci.go`` and
``internal/pkg/build/metadata.go``); where we differ, the docstring says why.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from unpacked.apptainer import _scripts
from unpacked.apptainer._template import render
from unpacked.manifest import ImageConfig

logger = logging.getLogger(__name__)

SCRIPT_MODE = 0o755
DATA_MODE = 0o644

# conveyorPacker_oci.go's variableRegex: names a POSIX shell can export.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Go's JSON decoder turns an unpaired surrogate escape into U+FFFD; Python's
# keeps it, and UTF-8 cannot encode it.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Go's encoding/json escapes these even in strings (HTML safety); Python does not.
_GO_JSON_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

_STATIC_SCRIPTS = {
    ".singularity.d/actions/exec": _scripts.ACTION_EXEC,
    ".singularity.d/actions/run": _scripts.ACTION_RUN,
    ".singularity.d/actions/shell": _scripts.ACTION_SHELL,
    ".singularity.d/actions/start": _scripts.ACTION_START,
    ".singularity.d/actions/test": _scripts.ACTION_TEST,
    ".singularity.d/env/01-base.sh": _scripts.ENV_01_BASE,
    ".singularity.d/env/90-environment.sh": _scripts.ENV_90_ENVIRONMENT,
    ".singularity.d/env/95-apps.sh": _scripts.ENV_95_APPS,
    ".singularity.d/env/99-base.sh": _scripts.ENV_99_BASE,
    ".singularity.d/env/99-runtimevars.sh": _scripts.ENV_99_RUNTIMEVARS,
    ".singularity.d/startscript": _scripts.STARTSCRIPT,
}


def apptainer_files(config: ImageConfig) -> dict[str, tuple[bytes, int]]:
    """The files ``apptainer build --sandbox`` writes into ``.singularity.d`` for this image.

    Keys are paths relative to the root file system; values are the content and
    the permission bits. Pure: the same configuration always gives the same bytes.
    """
    files = {path: (_encode(text), SCRIPT_MODE) for path, text in _STATIC_SCRIPTS.items()}
    files[".singularity.d/env/10-docker2singularity.sh"] = (
        _encode(env_script(config.env)),
        SCRIPT_MODE,
    )
    files[".singularity.d/runscript"] = (
        _encode(runscript(config.entrypoint, config.cmd)),
        SCRIPT_MODE,
    )
    files[".singularity.d/labels.json"] = (_encode(labels_json(config)), DATA_MODE)
    return dict(sorted(files.items()))


def env_script(env: Sequence[str]) -> str:
    """``env/10-docker2singularity.sh``: the image's ENV as export lines (``insertEnv``).

    ``NAME=value`` becomes ``export NAME="${NAME:-"value"}"``, so a value the
    runtime already set (``--env``, ``APPTAINERENV_NAME``) wins over the image's;
    PATH is assigned outright, because Apptainer's runtime rebuilds PATH itself.
    A bare ``NAME`` keeps whatever the runtime set. Values are escaped once for
    double quotes (``\\ " ` $``), so they arrive byte for byte and nothing in them
    is expanded: Docker already expanded ``$VAR`` references when it built the
    image. Apptainer before PR #3329 (1.4.5 and older) escaped a second time
    (Go's ``%q``), which left a stray backslash before ``$``, backtick, ``"`` and
    ``\\``; the single escaping here is what that fix restored. Names a shell
    cannot export are skipped, as Apptainer does.
    """
    lines = ["#!/bin/sh\n"]
    for element in env:
        name, has_value, value = element.partition("=")
        if not _ENV_NAME.fullmatch(name):
            logger.warning("image ENV %r: %r is not a shell variable name, skipped", element, name)
            continue
        lines.append(_export(name, value if has_value else None))
    return "".join(lines)


def _export(name: str, value: str | None) -> str:
    if value is None:
        return f'export {name}="${{{name}:-}}"\n'
    quoted = f'"{shell_escape(value)}"'
    if name == "PATH":
        return f"export PATH={quoted}\n"
    return f'export {name}="${{{name}:-{quoted}}}"\n'


def runscript(entrypoint: Sequence[str] | None, cmd: Sequence[str] | None) -> str:
    """``.singularity.d/runscript`` for ENTRYPOINT and CMD (``insertRunScript``).

    Not set and set to an empty list are the same here, as in Apptainer: both
    give an empty ``OCI_ENTRYPOINT`` / ``OCI_CMD``.
    """
    entrypoint = tuple(entrypoint or ())
    cmd = tuple(cmd or ())
    data = {"PrependEntrypoint": _prepend(entrypoint), "PrependCmd": _prepend(cmd)}
    return (
        "#!/bin/sh\n"
        + _oci_assignment("OCI_ENTRYPOINT", entrypoint)
        + _oci_assignment("OCI_CMD", cmd)
        + render(_scripts.OCI_RUNSCRIPT_TEMPLATE, data)
    )


def _oci_assignment(name: str, args: Sequence[str]) -> str:
    return f"{name}='{escape_single_quotes(args_quoted(args))}'\n"


def _prepend(args: Sequence[str]) -> str:
    # Shell lines that put ``args`` in front of "$@", last argument first.
    return "".join(f"set -- '{escape_single_quotes(arg)}' \"$@\"\n" for arg in reversed(args))


def labels_json(config: ImageConfig) -> str:
    """``.singularity.d/labels.json``: the image's labels plus Apptainer's build labels.

    As ``insertLabelsJSON`` / ``addBuildLabels``: a build label overwrites an
    image label of the same name, and the JSON is Go's ``MarshalIndent`` with a
    tab. Left out on purpose: ``usage.apptainer.version`` (Apptainer did not
    build this tree) and ``usage.singularity.deffile.from`` (one flat tree serves
    every reference to the same config, so naming one would be wrong for the
    others). The dates come from the image's ``created`` (as Apptainer does under
    SOURCE_DATE_EPOCH), not the clock, so converting again gives the same bytes;
    without ``created`` they are left out.
    """
    labels = dict(config.labels)
    labels.update(_build_labels(config))
    return go_json_indent(labels)


def _build_labels(config: ImageConfig) -> dict[str, str]:
    labels = {
        "org.label-schema.schema-version": "1.0",
        "org.label-schema.usage.singularity.deffile.bootstrap": "docker",
        "org.opencontainers.image.architecture": config.architecture,
        "org.label-schema.build-arch": config.architecture,
    }
    if config.variant:
        labels["org.opencontainers.image.variant"] = config.variant
    created = _utc(config.created)
    if created is not None:
        labels["org.opencontainers.image.created"] = created.strftime("%Y-%m-%dT%H:%M:%SZ")
        labels["org.label-schema.build-date"] = _label_schema_date(created)
    return labels


def _utc(timestamp: str | None) -> datetime | None:
    if not timestamp:
        return None
    try:
        moment = datetime.fromisoformat(timestamp)
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        logger.info("image created time %r is not RFC 3339; build-date labels left out", timestamp)
        return None


def _label_schema_date(moment: datetime) -> str:
    # Apptainer's own format: Go's English names, no zero padding, zone name last.
    return (
        f"{_WEEKDAYS[moment.weekday()]}_{moment.day}_{_MONTHS[moment.month - 1]}_{moment.year}"
        f"_{moment.hour}:{moment.minute}:{moment.second}_UTC"
    )


def go_json_indent(value: Mapping[str, str]) -> str:
    """``json.MarshalIndent(value, "", "\\t")`` of a Go ``map[string]string``."""
    text = json.dumps(
        dict(value), indent="\t", sort_keys=True, ensure_ascii=False, separators=(",", ": ")
    )
    for char, escape in _GO_JSON_ESCAPES.items():
        text = text.replace(char, escape)
    return text


def shell_escape(text: str) -> str:
    """Apptainer's ``shell.Escape``: backslash, double quote, backtick and dollar escaped."""
    for char in ("\\", '"', "`", "$"):
        text = text.replace(char, "\\" + char)
    return text


def escape_single_quotes(text: str) -> str:
    """Apptainer's ``shell.EscapeSingleQuotes``: ``'`` becomes ``'"'"'``."""
    return text.replace("'", "'\"'\"'")


def args_quoted(args: Sequence[str]) -> str:
    """Apptainer's ``shell.ArgsQuoted``: each argument escaped, in double quotes, space-joined."""
    return " ".join(f'"{shell_escape(arg)}"' for arg in args)


def _encode(text: str) -> bytes:
    return _LONE_SURROGATE.sub("\ufffd", text).encode()
