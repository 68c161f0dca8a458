"""The admin command: ``remote-singularity-spawner check|deploy`` (also ``invoke check|deploy``).

Inspect the compute nodes over SSH, install the scripts node-wide and make
sshd trust the Hub's SSH CA (see deploy.py; with placement slurm also the
submit host, and the compute nodes are those its sinfo lists: see
slurm_hosts.py). Here: the command line, the CA's public key read from what
the admin gave, the printed table. The same
Invoke tasks serve the console script that ``pip install`` gives and
``invoke`` in a clone of the repository (tasks.py imports them).
"""

from __future__ import annotations

import base64
import hashlib
import re
import sys
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from invoke import Collection, Exit, Program, task

from .. import __version__, remote
from . import deploy as deploy_mod
from . import settings as settings_mod
from .settings import DeployError

_COMMENT_RE = re.compile(r"[A-Za-z0-9 ._/+@=%~:,()-]{1,100}")  # a CA key's comment, kept if this plain

_NODE_HELP = {
    "hosts": "the nodes, comma separated: names, name:ip or :ip (default: the config's nodelist; with "
    "placement slurm: the submit host and the nodes its sinfo lists)",
    "config": "a jupyterhub_config.py: nodelist, singularity_exe_path, singularity_container_path, "
    "node_scripts_dir, scripts_dir, known_hosts_files, ssh_port, ssh_ca_key_file, placement, "
    "slurm_submit_host",
    "user": "log in to the nodes as this user (default root: the node-wide files must be root's)",
    "key": "private key(s) for that login, comma separated (default ~/.ssh/id_ed25519, id_ecdsa, id_rsa)",
    "known_hosts": "extra known_hosts file(s), comma separated (always: /etc/ssh/ssh_known_hosts, "
    "~/.ssh/known_hosts and the config's)",
    "image": "the image path on the nodes (default: the config's singularity_container_path)",
    "exe": "the runtime on the nodes (default: the config's singularity_exe_path)",
    "node_scripts_dir": "the node-wide scripts directory (default: the config's, or the spawner's default)",
    "timeout": "seconds to wait for each node's sshd",
    "trust_ca": "the Hub's SSH CA: a file with its public key line, for sshd's TrustedUserCAKeys "
    "(default: the public key of the config's ssh_ca_key_file; neither: the CA is not looked at)",
    "sshd_config": f"sshd's main config on the nodes (default {settings_mod.DEFAULT_SSHD_CONFIG})",
}


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
    what = f"--trust-ca {trust_ca}"
    try:
        text = Path(trust_ca).read_text()
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
    return (f"{line} {comment}" if _COMMENT_RE.fullmatch(comment) else line), trust_ca


def ca_fingerprint(line: str) -> str:
    """``SHA256:...`` of a public key line, as sshd logs the CA of each certificate login."""
    digest = hashlib.sha256(base64.b64decode(line.split()[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _nodes_task(hosts, config, user, key, known_hosts, image, exe, node_scripts_dir, timeout,
                trust_ca, sshd_config, change=False, dry_run=False):  # fmt: skip
    split = [p for p in known_hosts.split(",") if p]
    try:
        hub_config = settings_mod.read_hub_config(config) if config else {}
        ca = ca_public_key(trust_ca, hub_config.get("ssh_ca_key_file", ""))
        settings, warnings = settings_mod.make_settings(
            hub_config, hosts=hosts, exe=exe, image=image, node_scripts_dir=node_scripts_dir,
            known_hosts=split, ca=ca, sshd_config=sshd_config,
        )  # fmt: skip
    except DeployError as e:
        raise Exit(f"error: {e}") from None
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    keys = [k for k in key.split(",") if k] or deploy_mod.default_key_files()
    reports, bundle = deploy_mod.run(
        settings, user, keys, change=change, dry_run=dry_run, connect_timeout=timeout
    )
    action = " (dry run: nothing changed)" if dry_run else ""
    print(f"scripts version {bundle.version} in {settings.node_scripts_dir}/{bundle.version}{action}")
    print(f"image {settings.image}, runtime {settings.exe}")
    if settings.submit_host is not None:
        submit = settings.submit_host
        print(f"placement slurm: submit host {submit.label} ({submit.address}) and the nodes its sinfo lists")
    if settings.ca_key:
        fingerprint = ca_fingerprint(settings.ca_key)
        print(f"CA {fingerprint} from {settings.ca_source}, sshd config {settings.sshd_config}")
    print()
    print(deploy_mod.format_table(reports))
    unfit = [r.node.label for r in reports if not r.fit]
    if unfit:
        raise Exit(f"\nnot fit for servers: {', '.join(unfit)}", code=1)


@task(help=_NODE_HELP)
def check(c, hosts="", config="", user="root", key="", known_hosts="", image="", exe="",
          node_scripts_dir="", timeout=10, trust_ca="", sshd_config=""):  # fmt: skip
    """Inspect each compute node over SSH and print a table; change nothing.

    Per node: SSH login (host key verified), the runtime and its version, the
    image, the node-wide scripts and, given a CA, whether sshd trusts it. With
    placement slurm in --config (and no --hosts), the nodes are the submit
    host (role submit: the Slurm client sbatch, squeue, scancel and sinfo,
    not the runtime or image) and the nodes its sinfo lists (role compute).
    Exits 1 if any node is unfit for servers, or sinfo lists no node.
    """
    _nodes_task(hosts, config, user, key, known_hosts, image, exe, node_scripts_dir, timeout,
                trust_ca, sshd_config)  # fmt: skip


@task(help={**_NODE_HELP, "dry_run": "only show what would be installed or changed"})
def deploy(c, hosts="", config="", user="root", key="", known_hosts="", image="", exe="",
           node_scripts_dir="", timeout=10, trust_ca="", sshd_config="", dry_run=False):  # fmt: skip
    """Check each compute node, install the scripts node-wide and make sshd trust the CA.

    Installs this version of the scripts into NODE_SCRIPTS_DIR/<version>
    (root-owned, 0755/0644), which the spawner then uses instead of putting
    a copy in each user's home. Given a CA (--trust-ca, or ssh_ca_key_file in
    --config), adds its public key to remote-singularity-spawner_ca.pub beside
    sshd's config and points a drop-in of sshd's Include directory at it
    (TrustedUserCAKeys), then reloads sshd if `sshd -t` passes, else puts
    back what was there. Keys trusted before stay (CA rotation). Idempotent:
    a node that has it all is left alone. With placement slurm, the submit
    host and the nodes its sinfo lists, all of them made to trust the CA.
    Prints the table of `check`; exits 1 if any node is unfit for servers.
    """
    _nodes_task(hosts, config, user, key, known_hosts, image, exe, node_scripts_dir, timeout,
                trust_ca, sshd_config, change=True, dry_run=dry_run)  # fmt: skip


program = Program(
    name="remote-singularity-spawner",
    binary="remote-singularity-spawner",
    version=__version__,
    namespace=Collection(check, deploy),
)


def main() -> None:
    """The console script's entry point."""
    program.run()
