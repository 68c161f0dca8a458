"""What check and deploy look at: the Hub config and the command line, merged and validated.

Pure but for the config file read and the node names resolved (as the
spawner resolves them, through placement/nodes.py); nothing is contacted.
With ``placement = "slurm"`` in the config (and no ``--hosts``) the hosts
are the submit host and the nodes its ``sinfo`` lists: the settings name
the submit host, and the node list only says where listed nodes are reached
(slurm_hosts.py finds the rest).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from traitlets.config import PyFileConfigLoader

from .. import remote
from ..images import ImageConfigError, parse_images, shorthand_name
from ..placement.nodes import Node, parse_nodelist

_SAFE_PATH_RE = re.compile(r"/[A-Za-z0-9._/+@=%~-]*")
DEFAULT_SSHD_CONFIG = "/etc/ssh/sshd_config"

# The spawner's default singularity_exe_path.
DEFAULT_RUNTIME = "singularity"


class DeployError(Exception):
    """The command line or the Hub config is unusable; nothing was contacted."""


@dataclass(frozen=True)
class Settings:
    """What to check on every node, from the Hub config and the command line."""

    # The nodes to check; with a submit_host, the config's nodelist: where the nodes
    # Slurm lists are reached when it names them (as the spawner reaches them).
    nodes: tuple[Node, ...]
    exe: str
    image: str  # the first of images
    node_scripts_dir: str
    scripts_dir: str
    known_hosts: tuple[str, ...]
    port: int = 22
    ca_key: str = ""  # the CA's public key line; "" when no CA was given
    ca_source: str = ""  # where it came from, for the admin's eyes
    sshd_config: str = DEFAULT_SSHD_CONFIG
    submit_host: Node | None = None  # placement slurm: the hosts are it and the nodes its sinfo lists
    images: tuple[tuple[str, str], ...] = ()  # (name, path) of every image the spawner offers
    untrust_key: str = ""  # deploy --untrust-ca: a CA's public key line to remove; "" for none
    untrust_source: str = ""  # the file it came from


def images_to_check(config: dict, image: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(name, path) of the images to look at: *image* (--image), else the spawner's images
    as the config gives them; and warnings. DeployError if there is none or one is bad."""
    if image:
        return [(shorthand_name(image), image)], []
    entries, warnings = config.get("images") or [], []
    if callable(entries):
        warnings.append(
            "images is a callable (a list per user): only singularity_container_path is checked; "
            "give --image to check another"
        )
        entries = []
    if not entries and not config.get("singularity_container_path"):
        raise DeployError(
            "no image: give --image or set singularity_container_path in the config (or images)"
        )
    try:
        images = parse_images(entries, config.get("singularity_container_path", ""))
    except ImageConfigError as e:
        raise DeployError(f"the config's {e}") from None
    return [(i.name, i.path) for i in images], warnings


def parse_hosts(text: str) -> tuple[list[Node], list[str]]:
    """``a,b:10.0.0.2,:10.0.0.3``: names (resolved), ``name:ip`` or ``:ip``, as in nodelist."""
    records = [r.strip() for r in text.split(",") if r.strip()]
    return parse_nodelist(",".join(r if ":" in r else f"{r}:" for r in records))


def read_hub_config(path: str | os.PathLike) -> dict:
    """The RemoteSingularitySpawner section of a jupyterhub_config.py, as a plain dict."""
    path = Path(path)
    if not path.is_file():
        raise DeployError(f"no such config file: {path}")
    try:
        config = PyFileConfigLoader(path.name, path=str(path.parent)).load_config()
    except Exception as e:  # noqa: BLE001 - any error in the admin's file is reported, not raised
        raise DeployError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    return dict(config.get("RemoteSingularitySpawner", {}))


def submit_host(config: dict, nodes: Sequence[Node]) -> Node:
    """placement slurm: slurm_submit_host, else the first node of the node list, as the spawner has it."""
    configured = config.get("slurm_submit_host", "")
    if configured:
        found, warnings = parse_nodelist(configured)
        if not found:
            why = f": {'; '.join(warnings)}" if warnings else ""
            raise DeployError(f"slurm_submit_host {configured!r} is not a valid name:ip record{why}")
        return found[0]
    if not nodes:
        raise DeployError(
            "placement slurm and no submit host: set slurm_submit_host (name:ip) or a nodelist "
            "with valid nodes in the config, or give --hosts"
        )
    return nodes[0]


def make_settings(
    config: dict | None = None,
    hosts: str = "",
    exe: str = "",
    image: str = "",
    node_scripts_dir: str = "",
    known_hosts: Sequence[str] = (),
    ca: tuple[str, str] = ("", ""),
    sshd_config: str = "",
    untrust: tuple[str, str] = ("", ""),
) -> tuple[Settings, list[str]]:
    """Merge the Hub config (if any) with the command line, which wins; validate.

    *ca*: the CA's public key line and where it came from (admin.ca_public_key);
    *untrust*: the same for a CA whose key is to be removed (deploy --untrust-ca).
    ``placement = "slurm"`` in the config and no *hosts*: the settings name the
    submit host, whose sinfo lists the rest.

    Returns the settings and warnings (dropped node records). Raises
    DeployError naming the bad value.
    """
    config = config or {}
    placement = config.get("placement", "ssh")
    if placement not in ("ssh", "slurm"):
        raise DeployError(f"placement {placement!r} must be 'ssh' or 'slurm'")
    nodes, warnings = parse_hosts(hosts) if hosts else parse_nodelist(config.get("nodelist", ""))
    submit = submit_host(config, nodes) if placement == "slurm" and not hosts else None
    if not nodes and submit is None:
        raise DeployError("no node to check: give --hosts or a --config whose nodelist has valid nodes")
    images, image_warnings = images_to_check(config, image)
    warnings += image_warnings
    node_dir = node_scripts_dir or config.get("node_scripts_dir", remote.DEFAULT_NODE_SCRIPTS_DIR)
    # Both travel as argv (shlex.join); the node-wide directory also names files for
    # the spawner and check_node.sh to compare, so it is kept to plain characters.
    for _, path in images:
        if not path.startswith("/") or not path.isprintable():
            raise DeployError(f"image {path!r} must be an absolute path without control characters")
    if not _SAFE_PATH_RE.fullmatch(node_dir) or "/../" in f"{node_dir}/":
        raise DeployError(
            f"node_scripts_dir {node_dir!r} must be an absolute path of letters, digits and / . _ - + @ = % ~"
        )
    sshd_config = sshd_config or DEFAULT_SSHD_CONFIG
    if not _SAFE_PATH_RE.fullmatch(sshd_config) or "/../" in f"{sshd_config}/":
        raise DeployError(f"--sshd-config {sshd_config!r} must be an absolute path of plain characters")
    if untrust[0] and ca[0] and untrust[0].split()[:2] == ca[0].split()[:2]:
        raise DeployError(
            f"--untrust-ca {untrust[1]} is the CA to trust ({ca[1]}): "
            "give another --trust-ca or ssh_ca_key_file, or no --untrust-ca"
        )
    # Templates ({home}, {login}) name the users' files: not the admin's business here.
    config_known = [p for p in config.get("known_hosts_files", []) if "{" not in p]
    default_known = ["/etc/ssh/ssh_known_hosts", os.path.expanduser("~/.ssh/known_hosts")]
    settings = Settings(
        nodes=tuple(nodes),
        exe=exe or config.get("singularity_exe_path", DEFAULT_RUNTIME),
        image=images[0][1],
        images=tuple(images),
        node_scripts_dir=node_dir.rstrip("/"),
        scripts_dir=config.get("scripts_dir", "") or str(remote.packaged_scripts_dir()),
        known_hosts=tuple(dict.fromkeys([*known_hosts, *config_known, *default_known])),
        port=int(config.get("ssh_port", 22)),
        ca_key=ca[0],
        ca_source=ca[1],
        sshd_config=sshd_config,
        submit_host=submit,
        untrust_key=untrust[0],
        untrust_source=untrust[1],
    )
    return settings, warnings
