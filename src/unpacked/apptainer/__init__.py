"""Make a flat tree run under Apptainer exactly as ``apptainer build --sandbox`` output would.

``apptainer_files(config)`` generates the ``.singularity.d`` files of one image
(pure, strings in and bytes out); ``prepare_sandbox(root, config)`` writes them
into a staged flat tree together with the bind points, the top-level links and
the ``etc/hosts`` / ``etc/resolv.conf`` placeholders, never following a symlink.

The formats follow current Apptainer's own source (``internal/pkg/build/sources/``
and ``internal/pkg/build/metadata.go``), not DUCC's copy. Where this package
differs from ``apptainer build --sandbox``, on purpose:

- ENV values are escaped once (Apptainer 1.4.5 and older escaped twice and
  mangled ``$``, backtick, ``"`` and ``\\``; PR #3329 fixed that).
- ``etc/hosts`` and ``etc/resolv.conf`` are created only when missing; Apptainer
  truncates the image's own (the runtime binds the host's over them anyway).
- No ``.singularity.d/Singularity`` definition file and no ``deffile.from`` or
  ``usage.apptainer.version`` labels: a flat tree is shared by every reference
  to the same config, and Apptainer did not build it.
- Date labels come from the image's ``created`` time, so the output is a
  function of the config alone.
- ``cvmfs`` and ``srv`` are bind points too, for sites that bind them.
"""

from unpacked.apptainer._files import apptainer_files
from unpacked.apptainer._sandbox import (
    BIND_POINTS,
    LINKS,
    METADATA_DIRS,
    PLACEHOLDERS,
    SandboxError,
    SandboxReport,
    prepare_sandbox,
)

__all__ = [
    "BIND_POINTS",
    "LINKS",
    "METADATA_DIRS",
    "PLACEHOLDERS",
    "SandboxError",
    "SandboxReport",
    "apptainer_files",
    "prepare_sandbox",
]
