"""Check the compute nodes and install the scripts node-wide (for the admin command, command.py).

For each node, over SSH with its host key verified (unknown or changed keys
are refused, as in the spawner): can we log in, is the runtime there and
which version, is the image there and readable, is this version of the
scripts installed in the node-wide directory the spawner prefers over a
per-user upload (``node_scripts_dir/<version>``, root-owned), and, given the
Hub's SSH CA, does sshd trust it. ``deploy`` installs what is missing (and
removes a CA the admin no longer trusts). Each node's findings go into its
report (report.py), which both print as one table, or as JSON.
Everything here blocks; nodes are inspected in parallel threads.
What to check comes from settings.py; with placement slurm the hosts are the
submit host (the Slurm client instead of the runtime and image) and the
nodes its sinfo lists, each with its role (slurm_hosts.py).

What runs on the node are the scripts being installed (``scripts_dir``, or
the packaged ones): ``check_node.sh`` to inspect, ``put_files.sh`` to
install and ``trust_ca.sh`` for the CAs, fed on stdin, so the check needs
nothing on the node. The values from the config travel as argv built with
:func:`shlex.join`, never spliced into a shell string. Depends on the SSH
layer (remote/), not on the spawner.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import fabric
import jupyterhub
import paramiko

from .. import remote
from ..images import shorthand_name
from ..placement.nodes import Node
from . import slurm_hosts
from .report import RUN_DEPLOY, NodeReport
from .report import format_table as format_table  # where bench.py and the tests found it
from .settings import DeployError as DeployError  # the settings, where command.py and the tests found them
from .settings import Settings
from .settings import make_settings as make_settings
from .settings import parse_hosts as parse_hosts
from .settings import read_hub_config as read_hub_config
from .slurm_hosts import COMPUTE, SUBMIT, has_role

log = logging.getLogger(__name__)

# The oldest runtimes the scripts are written for (flags, process layout).
MIN_VERSIONS = {"apptainer": (1, 0), "singularity": (3, 7)}
_VERSION_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


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


def load_bundle(scripts_dir: str) -> remote.ScriptBundle:
    """The scripts to run and install, from *scripts_dir*; DeployError naming a missing one."""
    try:
        return remote.ScriptBundle.load(scripts_dir)
    except OSError as e:
        raise DeployError(f"scripts_dir {scripts_dir}: cannot read {e.filename}: {e.strerror}") from None


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
    """Fill *report* from check_node.sh's reply, for the report's role; return the scripts' state."""
    if has_role(report.role, SUBMIT):
        report.slurm, problem = slurm_hosts.slurm_client_verdict(probe)
        report.problems += [problem] if problem else []
    if has_role(report.role, COMPUTE):
        judge_runtime_and_image(report, probe, settings)
    state = scripts_state(probe, bundle)
    where = f"{settings.node_scripts_dir}/{bundle.version}"
    report.scripts = {"missing": "missing", "current": "current"}.get(state, state.upper())
    if state == "different":
        # The spawner would run these (root put them there): they must be right.
        report.problems.append(f"{where} holds other files than version {bundle.version}: {RUN_DEPLOY}")
    elif state == "unsafe":
        report.notes.append(
            f"{where} not used by the spawner (it uploads per user): {probe.get('scripts_problem')}"
        )
    return state


def judge_runtime_and_image(report: NodeReport, probe: dict, settings: Settings) -> None:
    """Fill the RUNTIME and IMAGE columns of a compute node's *report* from check_node.sh's reply."""
    report.runtime, problem = runtime_verdict(
        probe.get("runtime", ""), probe.get("runtime_version", ""), settings.exe
    )
    if problem:
        report.problems.append(problem)
    judge_images(report, probe, settings)
    if settings.submit_host is not None and not probe.get("srun"):
        report.problems.append(
            "srun not on the login PATH: with placement slurm a server starts as a step of its job "
            "with it (install the Slurm client here)"
        )


def judge_images(report: NodeReport, probe: dict, settings: Settings) -> None:
    """Fill the IMAGE column and the images' lines of a compute node's *report*: each image
    present and readable by all, its JupyterHub and whether it matches the Hub's."""
    found = probe.get("images") or [
        {"path": settings.image, "state": probe.get("image", ""), "for_all": probe.get("image_for_all")}
    ]
    names = {path: name for name, path in settings.images} or {settings.image: shorthand_name(settings.image)}
    verdicts = []
    for image in found:
        path, state = image.get("path", ""), image.get("state", "")
        name = names.get(path, path)
        if state != "ok":
            report.problems.append(f"image {path}: {state or 'no answer'}")
            verdicts.append(state.upper() or "UNKNOWN")
            report.images.append(f"image {name} ({path}): {state or 'no answer'}")
            continue
        if not image.get("for_all"):
            report.notes.append(f"{path} is not readable by all users: check its group")
        jh, match = image.get("jupyterhub", ""), image.get("match", "unknown")
        shown = {"": "JupyterHub unknown", "none": "no JupyterHub"}.get(jh, f"JupyterHub {jh}")
        verdict = {
            "same": "matches the Hub",
            "minor": "another minor version than the Hub's (works, warns)",
            "major": "ANOTHER MAJOR VERSION than the Hub's: its servers are refused",
        }.get(match, "")
        if match == "major":
            report.problems.append(
                f"image {name} ({path}) carries JupyterHub {jh}, the Hub runs {jupyterhub.__version__}: "
                f"install jupyterhub=={jupyterhub.__version__} in it"
            )
        elif jh == "none":
            report.notes.append(f"image {name} ({path}) has no jupyterhub package: can its servers start?")
        report.images.append(
            f"image {name} ({path}): present, readable{'' if image.get('for_all') else ' (not by all)'}, "
            f"{shown}{f', {verdict}' if verdict else ''}"
        )
        verdicts.append("ok" if image.get("for_all") else "ok (not for all)")
        if match == "major":
            verdicts[-1] = "JUPYTERHUB"
    if len(verdicts) == 1:
        report.image = verdicts[0]
    else:
        good = sum(v.startswith("ok") for v in verdicts)
        report.image = f"{good}/{len(verdicts)} ok" + ("" if good == len(verdicts) else " (SEE BELOW)")


def probe_node(
    conn: fabric.Connection, settings: Settings, bundle: remote.ScriptBundle, role: str = COMPUTE
) -> dict:
    """Run the bundle's check_node.sh for *role* on the node (fed on stdin); its JSON reply."""
    args = ["--scripts-dir", f"{settings.node_scripts_dir}/{bundle.version}"]
    if has_role(role, COMPUTE):
        paths = [path for _, path in settings.images] or [settings.image]
        args = ["--exe", settings.exe, *(w for path in paths for w in ("--image", path)),
                "--hub-jupyterhub", jupyterhub.__version__, *args]  # fmt: skip
    if role != COMPUTE:
        args = ["--role", slurm_hosts.script_role(role), *args]
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


# trust_ca.sh untrust's answer -> the UNTRUST column; "no" (the key is still there) makes the node unfit.
_UNTRUST_SHOWN = {"not trusted": "not trusted", "untrusted": "REMOVED", "would untrust": "would remove",
                  "no": "NOT REMOVED"}  # fmt: skip


def trust_ca(conn: fabric.Connection, settings: Settings, bundle: remote.ScriptBundle, action: str) -> dict:
    """Run the bundle's trust_ca.sh *action* (check, install, dry-run) on the node; its JSON reply."""
    args = ["check"] if action == "check" else ["install", *(["--dry-run"] if action == "dry-run" else [])]
    args += ["--key", settings.ca_key, "--sshd-config", settings.sshd_config]
    return _ask_trust_ca_sh(conn, bundle, args, _CA_SHOWN)


def untrust_ca(
    conn: fabric.Connection, settings: Settings, bundle: remote.ScriptBundle, dry_run: bool
) -> dict:
    """Run the bundle's trust_ca.sh untrust for settings.untrust_key on the node; its JSON reply."""
    args = ["untrust", *(["--dry-run"] if dry_run else [])]
    args += ["--key", settings.untrust_key, "--sshd-config", settings.sshd_config]
    return _ask_trust_ca_sh(conn, bundle, args, _UNTRUST_SHOWN)


def _ask_trust_ca_sh(conn: fabric.Connection, bundle: remote.ScriptBundle, args: list[str], states) -> dict:
    reply = remote.run_command(conn, remote.command_line(None, args), bundle.fed_on_stdin("trust_ca.sh"))
    # CANNOT_WRITE: a change failed and what was there is back; the reply says why.
    if reply.exit_code not in (0, remote.ExitCode.CANNOT_WRITE) or reply.data.get("ca") not in states:
        raise remote.RemoteError(f"trust_ca.sh failed (exit code {reply.exit_code}): {reply.stderr}")
    return reply.data


def judge_ca(report: NodeReport, reply: dict, action: str) -> None:
    """Fill the CA column of *report* from trust_ca.sh's reply (see _CA_SHOWN)."""
    state, why = reply["ca"], reply.get("why", "")
    report.ca = _CA_SHOWN[state]
    if state in ("no", "not reloaded"):
        fixed_by_deploy = action == "check" and "fails" not in why  # not a broken sshd config
        hint = f": {RUN_DEPLOY}" if fixed_by_deploy else ""
        report.problems.append(f"sshd does not trust the CA: {why}{hint}")
    elif why:
        report.notes.append(f"CA: {why}")


def judge_untrust(report: NodeReport, reply: dict) -> None:
    """Fill the UNTRUST column of *report* from trust_ca.sh untrust's reply (see _UNTRUST_SHOWN)."""
    state, why = reply["ca"], reply.get("why", "")
    report.untrust = _UNTRUST_SHOWN[state]
    if state == "no":
        report.problems.append(f"sshd still trusts the CA to untrust: {why}")
    elif why:
        report.notes.append(f"untrust CA: {why}")


Connector = Callable[[Node], fabric.Connection]


def inspect_node(
    node: Node,
    settings: Settings,
    bundle: remote.ScriptBundle,
    connect: Connector,
    user: str,
    change: bool = False,
    dry_run: bool = False,
    role: str = COMPUTE,
) -> NodeReport:
    """Check one node for its *role* and, with *change*, install the scripts (and trust the CA,
    and untrust the CA to untrust) there. Never raises."""
    report = NodeReport(node, role=role)
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
        probe = probe_node(conn, settings, bundle, role)
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
            report.problems = [p for p in report.problems if RUN_DEPLOY not in p]
            report.notes.clear()
            probe = probe_node(conn, settings, bundle, role)
            after = judge(NodeReport(node, role=role), probe, settings, bundle)
            report.scripts = "INSTALLED" if after == "current" else f"installed, {after.upper()}"
            if after != "current":
                report.notes.append(
                    f"installed, but the spawner will not use it: {probe.get('scripts_problem')} "
                    "(deploy as root: --user root)"
                )
        if settings.ca_key:
            action = "dry-run" if change and dry_run else "install" if change else "check"
            judge_ca(report, trust_ca(conn, settings, bundle, action), action)
        if change and settings.untrust_key:
            judge_untrust(report, untrust_ca(conn, settings, bundle, dry_run))
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
    """Inspect (and with *change* deploy to) every node, in parallel; reports in node order.

    With a submit host (placement slurm), the nodes are it and the nodes its sinfo lists
    (slurm_hosts.py); what kept them from being listed goes to its report.
    """
    bundle = load_bundle(settings.scripts_dir)

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

    def ask(node: Node) -> dict:
        conn = connect(node)
        try:
            return probe_node(conn, settings, bundle, SUBMIT)
        finally:
            conn.close()

    def inspect(host: tuple[Node, str]) -> NodeReport:
        return inspect_node(host[0], settings, bundle, connect, user, change, dry_run, role=host[1])

    hosts, unlisted = [(node, COMPUTE) for node in settings.nodes], []
    if settings.submit_host is not None:
        hosts, unlisted = slurm_hosts.find_hosts(settings.submit_host, settings.nodes, ask)
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(hosts)))) as ex:
        reports = list(ex.map(inspect, hosts))
    if unlisted:
        reports[0].problems += unlisted  # the submit host's
    return reports, bundle


def default_key_files() -> list[str]:
    """The invoking admin's usual private keys."""
    return [os.path.expanduser(f"~/.ssh/id_{t}") for t in ("ed25519", "ecdsa", "rsa")]
