"""The admin command: ``remote-singularity-spawner check|deploy`` (also ``invoke check|deploy``).

Inspect the compute nodes over SSH, install the scripts node-wide and make
sshd trust the Hub's SSH CA, or stop trusting an old one (see deploy.py;
with placement slurm also the submit host, and the compute nodes are those
its sinfo lists: see slurm_hosts.py). Here: the two tasks and their options,
the CA keys read from what the admin gave, the printed table (or JSON) and
the exit status. The tasks are Invoke's, for ``invoke`` in a clone of the
repository (tasks.py imports them); the console script that ``pip install``
gives is an argparse front end made from the same tasks (cli.py), with only
their options.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import os
import re
import sys
import traceback
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from invoke import Exit, task

from .. import __version__, remote
from . import cli
from . import deploy as deploy_mod
from . import report as report_mod
from . import settings as settings_mod
from .settings import DeployError


class ExitStatus(enum.IntEnum):
    """The admin command's exit status, as its --help and the README list it."""

    FIT = 0  # every node is fit for servers
    UNFIT = 1  # a node is unfit: the reasons are below the table
    CANNOT_RUN = 2  # nothing was checked: a bad command line (argparse's status too), config or file


EXIT_STATUS_HELP = """\
exit status:
  0  every node is fit for servers
  1  a node is unfit, or deploy could not make a change there: the reasons
     are below the table
  2  could not run: a bad command line, an unusable config, an unreadable or
     bad CA or key file (no node was contacted)"""

_COMMENT_RE = re.compile(r"[A-Za-z0-9 ._/+@=%~:,()-]{1,100}")  # a CA key's comment, kept if this plain

_NODE_HELP = {
    "hosts": "the nodes, comma separated: names, name:ip or :ip (default: the config's nodelist; with "
    "placement slurm: the submit host and the nodes its sinfo lists)",
    "config": "a jupyterhub_config.py to take from: nodelist, singularity_exe_path, images, "
    "singularity_container_path, node_scripts_dir, scripts_dir, known_hosts_files, ssh_port, "
    "ssh_ca_key_file, placement, slurm_submit_host (default: none; the command line wins)",
    "user": "log in to the nodes as this user (default root: the node-wide files must be root's)",
    "key": "private key(s) for that login, comma separated (default ~/.ssh/id_ed25519, id_ecdsa, id_rsa)",
    "known_hosts": "extra known_hosts file(s), comma separated (default: none; always read: "
    "/etc/ssh/ssh_known_hosts, ~/.ssh/known_hosts and the config's)",
    "image": "the image path on the nodes (default: the config's singularity_container_path)",
    "exe": "the runtime on the nodes (default: the config's singularity_exe_path)",
    "node_scripts_dir": "the node-wide scripts directory (default: the config's, or the spawner's default)",
    "timeout": "seconds to wait for each node's sshd",
    "trust_ca": "the Hub's SSH CA: a file with its public key line, for sshd's TrustedUserCAKeys "
    "(default: the public key of the config's ssh_ca_key_file; neither: the CA is not looked at)",
    "sshd_config": f"sshd's main config on the nodes (default {settings_mod.DEFAULT_SSHD_CONFIG})",
    "json": "print the reports as JSON instead of the table: per node its columns, problems, notes "
    "and images lines",
}
_DEPLOY_HELP = {
    **_NODE_HELP,
    "untrust_ca": "a file with the public key line of a CA the nodes are to trust no more: removed from "
    "remote-singularity-spawner_ca.pub beside sshd's config, which sshd reads at each login, so "
    "without a reload (default: none)",
    "dry_run": "only say what would be installed, trusted or untrusted; change nothing on any node",
}
# The console script's placeholders for the options' values.
_METAVARS = {
    "hosts": "NODES", "config": "FILE", "user": "USER", "key": "FILES", "known_hosts": "FILES",
    "image": "PATH", "exe": "PATH", "node_scripts_dir": "DIR", "timeout": "SECONDS",
    "trust_ca": "PUBKEY_FILE", "untrust_ca": "PUBKEY_FILE", "sshd_config": "FILE",
}  # fmt: skip


def ca_public_key(trust_ca: str = "", ca_key_file: str = "") -> tuple[str, str]:
    """(the CA's public key line, where it came from) or ("", "") when no CA is given.

    From *trust_ca*, a public key file, else from the Hub's private key file
    (ssh_ca_key_file), whose content is never shown. DeployError naming the
    option or setting when it is unusable.
    """
    if not trust_ca:
        if not ca_key_file:
            return "", ""
        try:
            line = remote.CertificateAuthority.load(ca_key_file).public_line()
            return f"{line} remote-singularity-spawner CA", ca_key_file
        except remote.CAError as e:
            raise DeployError(f"ssh_ca_key_file: {e}") from None
    return public_key_line(trust_ca, "--trust-ca"), trust_ca


def public_key_line(path: str, option: str) -> str:
    """The public key line in the file at *path*, as given with *option*; DeployError if unusable."""
    what = f"{option} {path}"
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DeployError(f"{what}: cannot read it: {getattr(e, 'strerror', None) or e}") from None
    if "PRIVATE KEY" in text:
        raise DeployError(f"{what} is a private key: give its public key (ssh-keygen -y -f KEY > KEY.pub)")
    lines = [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    try:
        key = serialization.load_ssh_public_key(" ".join(lines[0][:2]).encode()) if len(lines) == 1 else None
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise DeployError(
            f"{what} must hold one public key line (ed25519, ecdsa or rsa): ssh-ed25519 AAAA... comment"
        )
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    comment = " ".join(lines[0][2:])
    return f"{line} {comment}" if _COMMENT_RE.fullmatch(comment) else line


def ca_fingerprint(line: str) -> str:
    """``SHA256:...`` of a public key line, as sshd logs the CA of each certificate login."""
    digest = hashlib.sha256(base64.b64decode(line.split()[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def key_files(key: str) -> list[str]:
    """The private keys to log in with: --key's, each of which must exist, else the usual ones,
    one of which must. DeployError otherwise."""
    given = [k for k in key.split(",") if k]
    for path in given:
        if not os.path.isfile(path):
            raise DeployError(f"--key {path}: no such file")
    keys = given or deploy_mod.default_key_files()
    if not any(os.path.isfile(path) for path in keys):
        raise DeployError(f"no private key to log in with (none of {', '.join(keys)}): give --key")
    return keys


def _nodes_task(hosts, config, user, key, known_hosts, image, exe, node_scripts_dir, timeout, trust_ca,
                sshd_config, as_json=False, untrust_ca="", change=False, dry_run=False):  # fmt: skip
    split = [p for p in known_hosts.split(",") if p]
    try:
        hub_config = settings_mod.read_hub_config(config) if config else {}
        ca = ca_public_key(trust_ca, hub_config.get("ssh_ca_key_file", ""))
        untrust = (public_key_line(untrust_ca, "--untrust-ca"), untrust_ca) if untrust_ca else ("", "")
        settings, warnings = settings_mod.make_settings(
            hub_config, hosts=hosts, exe=exe, image=image, node_scripts_dir=node_scripts_dir,
            known_hosts=split, ca=ca, sshd_config=sshd_config, untrust=untrust,
        )  # fmt: skip
        if timeout <= 0:
            raise DeployError(f"--timeout {timeout}: give a number of seconds above 0")
        keys = key_files(key)
        deploy_mod.load_bundle(settings.scripts_dir)
    except DeployError as e:
        raise Exit(f"error: {e}", code=ExitStatus.CANNOT_RUN) from None
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    reports, bundle = deploy_mod.run(
        settings, user, keys, change=change, dry_run=dry_run, connect_timeout=timeout
    )
    if as_json:
        print(json.dumps(_document(settings, bundle, reports, dry_run), indent=2))
    else:
        _print_table(settings, bundle, reports, dry_run)
    unfit = [r.node.label for r in reports if not r.fit]
    if unfit:
        blank = "" if as_json else "\n"  # below the table
        raise Exit(f"{blank}not fit for servers: {', '.join(unfit)}", code=ExitStatus.UNFIT)


def _print_table(settings, bundle, reports, dry_run) -> None:
    action = " (dry run: nothing changed)" if dry_run else ""
    print(f"scripts version {bundle.version} in {settings.node_scripts_dir}/{bundle.version}{action}")
    print(f"image {settings.image}, runtime {settings.exe}")
    if settings.submit_host is not None:
        submit = settings.submit_host
        print(f"placement slurm: submit host {submit.label} ({submit.address}) and the nodes its sinfo lists")
    if settings.ca_key:
        fingerprint = ca_fingerprint(settings.ca_key)
        print(f"CA {fingerprint} from {settings.ca_source}, sshd config {settings.sshd_config}")
    if settings.untrust_key:
        print(f"untrusting CA {ca_fingerprint(settings.untrust_key)} from {settings.untrust_source}")
    print()
    print(report_mod.format_table(reports))


def _document(settings, bundle, reports, dry_run) -> dict:
    """What the table says, as --json prints it."""

    def ca(line, source):
        return {"fingerprint": ca_fingerprint(line), "source": source} if line else None

    return {
        "scripts_version": bundle.version,
        "node_scripts_dir": settings.node_scripts_dir,
        "dry_run": dry_run,
        "sshd_config": settings.sshd_config,
        "ca": ca(settings.ca_key, settings.ca_source),
        "untrust_ca": ca(settings.untrust_key, settings.untrust_source),
        "fit": all(r.fit for r in reports),
        "nodes": [report_mod.report_data(r) for r in reports],
    }


@task(help=_NODE_HELP)
def check(c, hosts="", config="", user="root", key="", known_hosts="", image="", exe="",
          node_scripts_dir="", timeout=10, trust_ca="", sshd_config="", json=False):  # fmt: skip
    """Inspect each compute node over SSH and print a table; change nothing.

    Per node: SSH login (host key verified), the runtime and its version, the
    image, the node-wide scripts and, given a CA, whether sshd trusts it. With
    placement slurm in --config (and no --hosts), the nodes are the submit
    host (role submit: the Slurm client sbatch, squeue, scancel and sinfo,
    not the runtime or image) and the nodes its sinfo lists (role compute).
    A node is unfit if servers cannot run there, or sinfo lists no node.
    """
    _nodes_task(hosts, config, user, key, known_hosts, image, exe, node_scripts_dir, timeout,
                trust_ca, sshd_config, as_json=json)  # fmt: skip


@task(help=_DEPLOY_HELP)
def deploy(c, hosts="", config="", user="root", key="", known_hosts="", image="", exe="",
           node_scripts_dir="", timeout=10, trust_ca="", sshd_config="", untrust_ca="", dry_run=False,
           json=False):  # fmt: skip
    """Check each compute node, install the scripts node-wide and make sshd trust the CA.

    Installs this version of the scripts into NODE_SCRIPTS_DIR/<version>
    (root-owned, 0755/0644), which the spawner then uses instead of putting
    a copy in each user's home. Given a CA (--trust-ca, or ssh_ca_key_file in
    --config), adds its public key to remote-singularity-spawner_ca.pub beside
    sshd's config and points a drop-in of sshd's Include directory at it
    (TrustedUserCAKeys), then reloads sshd if `sshd -t` passes, else puts
    back what was there. Keys trusted before stay (CA rotation) until
    --untrust-ca removes one (the UNTRUST column). Idempotent: a node that
    has it all is left alone. With placement slurm, the submit host and the
    nodes its sinfo lists, all of them made to trust the CA. Prints the table
    of `check`; --dry-run changes nothing and says what it would do.
    """
    _nodes_task(hosts, config, user, key, known_hosts, image, exe, node_scripts_dir, timeout,
                trust_ca, sshd_config, as_json=json, untrust_ca=untrust_ca, change=True,
                dry_run=dry_run)  # fmt: skip


TASKS = (check, deploy)
DESCRIPTION = """\
Check the compute nodes of a Hub that runs RemoteSingularitySpawner, and
prepare them: install the scripts node-wide, make sshd trust the Hub's SSH CA
or trust an old one no more. `remote-singularity-spawner COMMAND --help`
lists a command's options; --config is taken before or after the command."""


def parser():
    """The console script's command line: the tasks' own options (cli.py)."""
    return cli.build_parser(
        "remote-singularity-spawner", TASKS, description=DESCRIPTION, epilog=EXIT_STATUS_HELP,
        version=__version__, shared=("config",), metavars=_METAVARS,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """The console script's entry point; exits with an ExitStatus."""
    try:
        code = cli.run(parser(), TASKS, argv)
    except KeyboardInterrupt:
        code = 130
    except Exception:  # noqa: BLE001 - a failure of ours must not read as an unfit node (1)
        traceback.print_exc()
        code = ExitStatus.CANNOT_RUN
    sys.exit(code)
