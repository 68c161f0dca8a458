"""Check the compute nodes and install the scripts node-wide (the admin command, admin.py).

For each node, over SSH with its host key verified (unknown or changed keys
are refused, as in the spawner): can we log in, is the runtime there and
which version, is the image there and readable, is this version of the
scripts installed in the node-wide directory the spawner prefers over a
per-user upload (``node_scripts_dir/<version>``, root-owned), and, given the
Hub's SSH CA, does sshd trust it. ``deploy`` installs what is missing; both
print one table. Everything here blocks; nodes are inspected in parallel threads.

What runs on the node are the scripts being installed (``scripts_dir``, or
the packaged ones): ``check_node.sh`` to inspect, ``put_files.sh`` to
install and ``trust_ca.sh`` for the CA, fed on stdin, so the check needs
nothing on the node. The values from the config travel as argv built with
:func:`shlex.join`, never spliced into a shell string. Depends on the SSH
layer (remote/), not on the spawner.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import fabric
import paramiko
from traitlets.config import PyFileConfigLoader

from .. import remote
from ..placement.nodes import Node, parse_nodelist

log = logging.getLogger(__name__)

# The oldest runtimes the scripts are written for (flags, process layout).
MIN_VERSIONS = {"apptainer": (1, 0), "singularity": (3, 7)}
_VERSION_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
_SAFE_PATH_RE = re.compile(r"/[A-Za-z0-9._/+@=%~-]*")
DEFAULT_SSHD_CONFIG = "/etc/ssh/sshd_config"


# The spawner's default singularity_exe_path.
DEFAULT_RUNTIME = "singularity"


class DeployError(Exception):
    """The command line or the Hub config is unusable; nothing was contacted."""


@dataclass(frozen=True)
class Settings:
    """What to check on every node, from the Hub config and the command line."""

    nodes: tuple[Node, ...]
    exe: str
    image: str
    node_scripts_dir: str
    scripts_dir: str
    known_hosts: tuple[str, ...]
    port: int = 22
    ca_key: str = ""  # the CA's public key line; "" when no CA was given
    ca_source: str = ""  # where it came from, for the admin's eyes
    sshd_config: str = DEFAULT_SSHD_CONFIG


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


def make_settings(
    config: dict | None = None,
    hosts: str = "",
    exe: str = "",
    image: str = "",
    node_scripts_dir: str = "",
    known_hosts: Sequence[str] = (),
    ca: tuple[str, str] = ("", ""),
    sshd_config: str = "",
) -> tuple[Settings, list[str]]:
    """Merge the Hub config (if any) with the command line, which wins; validate.

    *ca*: the CA's public key line and where it came from (admin.ca_public_key).

    Returns the settings and warnings (dropped node records). Raises
    DeployError naming the bad value.
    """
    config = config or {}
    nodes, warnings = parse_hosts(hosts) if hosts else parse_nodelist(config.get("nodelist", ""))
    if not nodes:
        raise DeployError("no node to check: give --hosts or a --config whose nodelist has valid nodes")
    image = image or config.get("singularity_container_path", "")
    if not image:
        raise DeployError("no image: give --image or set singularity_container_path in the config")
    node_dir = node_scripts_dir or config.get("node_scripts_dir", remote.DEFAULT_NODE_SCRIPTS_DIR)
    # Both travel as argv (shlex.join); the node-wide directory also names files for
    # the spawner and check_node.sh to compare, so it is kept to plain characters.
    if not image.startswith("/") or not image.isprintable():
        raise DeployError(f"image {image!r} must be an absolute path without control characters")
    if not _SAFE_PATH_RE.fullmatch(node_dir) or "/../" in f"{node_dir}/":
        raise DeployError(
            f"node_scripts_dir {node_dir!r} must be an absolute path of letters, digits and / . _ - + @ = % ~"
        )
    sshd_config = sshd_config or DEFAULT_SSHD_CONFIG
    if not _SAFE_PATH_RE.fullmatch(sshd_config) or "/../" in f"{sshd_config}/":
        raise DeployError(f"--sshd-config {sshd_config!r} must be an absolute path of plain characters")
    # Templates ({home}, {login}) name the users' files: not the admin's business here.
    config_known = [p for p in config.get("known_hosts_files", []) if "{" not in p]
    default_known = ["/etc/ssh/ssh_known_hosts", os.path.expanduser("~/.ssh/known_hosts")]
    settings = Settings(
        nodes=tuple(nodes),
        exe=exe or config.get("singularity_exe_path", DEFAULT_RUNTIME),
        image=image,
        node_scripts_dir=node_dir.rstrip("/"),
        scripts_dir=config.get("scripts_dir", "") or str(remote.packaged_scripts_dir()),
        known_hosts=tuple(dict.fromkeys([*known_hosts, *config_known, *default_known])),
        port=int(config.get("ssh_port", 22)),
        ca_key=ca[0],
        ca_source=ca[1],
        sshd_config=sshd_config,
    )
    return settings, warnings


@dataclass
class NodeReport:
    """What was found on one node (and done there), as the table shows it."""

    node: Node
    ssh: str = "-"
    runtime: str = "-"
    image: str = "-"
    scripts: str = "-"
    ca: str = "-"
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def fit(self) -> bool:
        return not self.problems


def runtime_verdict(path: str, version_line: str, exe: str) -> tuple[str, str]:
    """(table text, problem or "") for the runtime check_node.sh found."""
    if not path:
        return "MISSING", f"{exe} not found on the node (singularity_exe_path)"
    words = version_line.split()
    flavour = words[0].lower() if words else ""
    match = _VERSION_RE.search(version_line)
    if not match or not flavour:
        return "UNKNOWN", f"{path} --version said {version_line!r}: not Singularity or Apptainer?"
    name = "apptainer" if flavour.startswith("apptainer") else "singularity"
    shown = f"{flavour} {words[-1]}"
    found = (int(match[1]), int(match[2]))
    if found < MIN_VERSIONS[name]:
        need = ".".join(map(str, MIN_VERSIONS[name]))
        return f"{shown} (TOO OLD)", f"{flavour} {words[-1]} is older than {name} {need}"
    return shown, ""


def scripts_state(probe: dict, bundle: remote.ScriptBundle) -> str:
    """'missing', 'current', 'different' (not what this version holds) or 'unsafe'."""
    if probe.get("scripts") == "missing":
        return "missing"
    if probe.get("scripts") == "unsafe":
        return "unsafe"
    sums = dict(item.split("=", 1) for item in probe.get("scripts_sums", "").split() if "=" in item)
    wanted = {name: _sha256(data) for name, data in bundle.files.items()}
    return "current" if sums == wanted else "different"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def judge(report: NodeReport, probe: dict, settings: Settings, bundle: remote.ScriptBundle) -> str:
    """Fill *report* from check_node.sh's reply; return the scripts' state."""
    report.runtime, problem = runtime_verdict(
        probe.get("runtime", ""), probe.get("runtime_version", ""), settings.exe
    )
    if problem:
        report.problems.append(problem)
    image = probe.get("image", "")
    if image == "ok":
        report.image = "ok"
        if not probe.get("image_for_all"):
            report.image = "ok (not for all)"
            report.notes.append(f"{settings.image} is not readable by all users: check its group")
    else:
        report.image = image.upper() or "UNKNOWN"
        report.problems.append(f"image {settings.image}: {image or 'no answer'}")
    state = scripts_state(probe, bundle)
    where = f"{settings.node_scripts_dir}/{bundle.version}"
    report.scripts = {"missing": "missing", "current": "current"}.get(state, state.upper())
    if state == "different":
        # The spawner would run these (root put them there): they must be right.
        report.problems.append(
            f"{where} holds other files than version {bundle.version}: "
            "run invoke deploy or remote-singularity-spawner deploy"
        )
    elif state == "unsafe":
        report.notes.append(
            f"{where} not used by the spawner (it uploads per user): {probe.get('scripts_problem')}"
        )
    return state


def probe_node(conn: fabric.Connection, settings: Settings, bundle: remote.ScriptBundle) -> dict:
    """Run the bundle's check_node.sh on the node (fed on stdin); its JSON reply."""
    args = [
        "--exe", settings.exe,
        "--image", settings.image,
        "--scripts-dir", f"{settings.node_scripts_dir}/{bundle.version}",
    ]  # fmt: skip
    command = remote.command_line(None, args)
    reply = remote.run_command(conn, command, bundle.fed_on_stdin("check_node.sh"))
    if reply.exit_code != 0 or "scripts" not in reply.data:
        raise remote.RemoteError(f"check_node.sh failed (exit code {reply.exit_code}): {reply.stderr}")
    return reply.data


def install(conn: fabric.Connection, settings: Settings, bundle: remote.ScriptBundle, state: str) -> None:
    """Put *bundle* into the node-wide directory (0755/0644), replacing a wrong copy.

    *state* (what check_node.sh found) is for the log: a copy is replaced whatever it was.
    """
    where = f"{settings.node_scripts_dir}/{bundle.version}"
    command = remote.command_line(None, ["install", "--dir", where, "--version", bundle.version])
    stdin = bundle.fed_on_stdin("put_files.sh") + remote.files_payload(bundle.files)
    reply = remote.run_command(conn, command, stdin)
    if reply.exit_code != 0:
        raise remote.RemoteError(f"cannot install into {where}: {reply.stderr}")
    log.info("installed scripts version %s into %s:%s (was %s)", bundle.version, conn.host, where, state)


# trust_ca.sh's answer -> the CA column; "no" and "not reloaded" make the node unfit.
_CA_SHOWN = {"yes": "yes", "trusted": "TRUSTED", "would trust": "would trust", "no": "NO",
             "not reloaded": "NOT RELOADED"}  # fmt: skip


def trust_ca(conn: fabric.Connection, settings: Settings, bundle: remote.ScriptBundle, action: str) -> dict:
    """Run the bundle's trust_ca.sh *action* (check, install, dry-run) on the node; its JSON reply."""
    args = ["check"] if action == "check" else ["install", *(["--dry-run"] if action == "dry-run" else [])]
    args += ["--key", settings.ca_key, "--sshd-config", settings.sshd_config]
    reply = remote.run_command(conn, remote.command_line(None, args), bundle.fed_on_stdin("trust_ca.sh"))
    # CANNOT_WRITE: a change failed and what was there is back; the reply says why.
    if reply.exit_code not in (0, remote.ExitCode.CANNOT_WRITE) or reply.data.get("ca") not in _CA_SHOWN:
        raise remote.RemoteError(f"trust_ca.sh failed (exit code {reply.exit_code}): {reply.stderr}")
    return reply.data


def judge_ca(report: NodeReport, reply: dict, action: str) -> None:
    """Fill the CA column of *report* from trust_ca.sh's reply (see _CA_SHOWN)."""
    state, why = reply["ca"], reply.get("why", "")
    report.ca = _CA_SHOWN[state]
    if state in ("no", "not reloaded"):
        fixed_by_deploy = action == "check" and "fails" not in why  # not a broken sshd config
        hint = ": run invoke deploy or remote-singularity-spawner deploy" if fixed_by_deploy else ""
        report.problems.append(f"sshd does not trust the CA: {why}{hint}")
    elif why:
        report.notes.append(f"CA: {why}")


Connector = Callable[[Node], fabric.Connection]


def inspect_node(
    node: Node,
    settings: Settings,
    bundle: remote.ScriptBundle,
    connect: Connector,
    user: str,
    change: bool = False,
    dry_run: bool = False,
) -> NodeReport:
    """Check one node and, with *change*, install the scripts (and trust the CA) there. Never raises."""
    report = NodeReport(node)
    try:
        conn = connect(node)
    except remote.HostKeyError as e:
        report.ssh = "HOST KEY"
        report.problems.append(str(e))
        return report
    except remote.IdentityError as e:
        report.ssh = "LOGIN REFUSED"
        report.problems.append(str(e))
        return report
    except remote.RemoteError as e:
        report.ssh = "DOWN"
        report.problems.append(str(e))
        return report
    report.ssh = f"ok ({user})"
    try:
        probe = probe_node(conn, settings, bundle)
        state = judge(report, probe, settings, bundle)
        # An unsafe parent directory is the admin's to fix; a reinstall would not help.
        culprit = f"{probe.get('scripts_problem')} ".split(" ", 1)[0]
        where = f"{settings.node_scripts_dir}/{bundle.version}"
        fixable = state in ("missing", "different") or (
            state == "unsafe" and (culprit == where or culprit.startswith(f"{where}/"))
        )
        if change and fixable and dry_run:
            report.scripts = "would install" if state == "missing" else "would replace"
        elif change and fixable:
            install(conn, settings, bundle, state)
            report.problems = [p for p in report.problems if "run invoke deploy" not in p]
            report.notes.clear()
            probe = probe_node(conn, settings, bundle)
            after = judge(NodeReport(node), probe, settings, bundle)
            report.scripts = "INSTALLED" if after == "current" else f"installed, {after.upper()}"
            if after != "current":
                report.notes.append(
                    f"installed, but the spawner will not use it: {probe.get('scripts_problem')} "
                    "(deploy as root: --user root)"
                )
        if settings.ca_key:
            action = "dry-run" if change and dry_run else "install" if change else "check"
            judge_ca(report, trust_ca(conn, settings, bundle, action), action)
    except (OSError, EOFError, paramiko.SSHException, remote.RemoteError) as e:
        report.problems.append(f"on the node: {e or type(e).__name__}")
    finally:
        conn.close()
    return report


def run(
    settings: Settings,
    user: str,
    key_files: Sequence[str],
    change: bool = False,
    dry_run: bool = False,
    connect_timeout: float = 10.0,
    threads: int = 8,
) -> tuple[list[NodeReport], remote.ScriptBundle]:
    """Inspect (and with *change* deploy to) every node, in parallel; reports in node order."""
    bundle = remote.ScriptBundle.load(settings.scripts_dir)

    def connect(node: Node) -> fabric.Connection:
        target = remote.Target(
            host=node.address,
            username=user,
            key_files=tuple(key_files),
            known_hosts_files=settings.known_hosts,
            port=settings.port,
            connect_timeout=connect_timeout,
        )
        return remote.connect(target, log)

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(settings.nodes)))) as ex:
        reports = list(
            ex.map(
                lambda n: inspect_node(n, settings, bundle, connect, user, change, dry_run),
                settings.nodes,
            )
        )
    return reports, bundle


def format_table(reports: Iterable[NodeReport]) -> str:
    """The reports as an aligned table, then why each unfit node is unfit."""
    reports = list(reports)
    header = ("NODE", "SSH", "RUNTIME", "IMAGE", "SCRIPTS", "CA", "FIT")
    rows = [header] + [
        (
            f"{r.node.label} ({r.node.address})" if r.node.label != r.node.address else r.node.label,
            r.ssh, r.runtime, r.image, r.scripts, r.ca, "yes" if r.fit else "NO",
        )
        for r in reports
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    for r in reports:
        lines += [f"{r.node.label}: {p}" for p in r.problems]
        lines += [f"{r.node.label}: note: {n}" for n in r.notes]
    return "\n".join(lines)


def default_key_files() -> list[str]:
    """The invoking admin's usual private keys."""
    return [os.path.expanduser(f"~/.ssh/id_{t}") for t in ("ed25519", "ecdsa", "rsa")]
