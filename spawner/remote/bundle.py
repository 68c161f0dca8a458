"""The node scripts of one version: which files, their content and its hash.

The version names the directory the scripts live in on a node (per user
under the remote state dir, or node-wide under ``node_scripts_dir`` after
``invoke deploy``), so an edited script is a new version and a server
started by an older one can still be stopped by it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SCRIPT_FILES = (
    "common.sh",
    "start_singleuser.sh",
    "check_pid.sh",
    "stop.sh",
    "node_status.sh",
    "check_node.sh",
    "put_files.sh",
    "trust_ca.sh",
    "slurm_job.sh",
)
# Where `invoke deploy` installs the scripts on each node (the spawner's default too).
DEFAULT_NODE_SCRIPTS_DIR = "/opt/remote-singularity-spawner/scripts"


def packaged_scripts_dir() -> Path:
    """The scripts shipped with this package (or, in a source checkout, scripts/).

    It resolves paths: the Hub asks once (hub_resources.py), not at every SSH operation.
    """
    installed = Path(__file__).resolve().parent.parent / "scripts"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[2] / "scripts"


@dataclass(frozen=True)
class ScriptBundle:
    """The scripts of one version, as put on the nodes."""

    files: Mapping[str, bytes]
    version: str

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ScriptBundle:
        directory = Path(directory)
        files = {}
        digest = hashlib.sha256()
        for name in sorted(SCRIPT_FILES):  # name order, as bundle_version in common.sh
            data = (directory / name).read_bytes()
            files[name] = data
            digest.update(name.encode() + b"\0" + data + b"\0")
        return cls(files=files, version=digest.hexdigest()[:16])

    def fed_on_stdin(self, script: str) -> str:
        """*script* as ``bash -s`` reads it from stdin: common.sh first, then the script.

        Such a script ends with ``main "$@"; exit``: what follows on stdin is its data.
        """
        return f"{self.files['common.sh'].decode()}\n{self.files[script].decode()}"
