"""The admin command: ``remote-singularity-spawner check|deploy`` (also ``invoke check|deploy``).

Inspect the compute nodes over SSH and install the scripts node-wide (see
deploy.py). The same Invoke tasks serve the console script that ``pip
install`` gives and ``invoke`` in a clone of the repository (tasks.py
imports them).
"""

from __future__ import annotations

import sys

from invoke import Collection, Exit, Program, task

from . import __version__
from . import deploy as deploy_mod

_NODE_HELP = {
    "hosts": "the nodes, comma separated: names, name:ip or :ip (default: the config's nodelist)",
    "config": "a jupyterhub_config.py: nodelist, singularity_exe_path, singularity_container_path, "
    "node_scripts_dir, scripts_dir, known_hosts_files, ssh_port",
    "user": "log in to the nodes as this user (default root: the node-wide files must be root's)",
    "key": "private key(s) for that login, comma separated (default ~/.ssh/id_ed25519, id_ecdsa, id_rsa)",
    "known_hosts": "extra known_hosts file(s), comma separated (always: /etc/ssh/ssh_known_hosts, "
    "~/.ssh/known_hosts and the config's)",
    "image": "the image path on the nodes (default: the config's singularity_container_path)",
    "exe": "the runtime on the nodes (default: the config's singularity_exe_path)",
    "node_scripts_dir": "the node-wide scripts directory (default: the config's, or the spawner's default)",
    "timeout": "seconds to wait for each node's sshd",
}


def _nodes_task(hosts, config, user, key, known_hosts, image, exe, node_scripts_dir, timeout,
                change=False, dry_run=False):  # fmt: skip
    split = [p for p in known_hosts.split(",") if p]
    try:
        hub_config = deploy_mod.read_hub_config(config) if config else {}
        settings, warnings = deploy_mod.make_settings(
            hub_config, hosts=hosts, exe=exe, image=image, node_scripts_dir=node_scripts_dir,
            known_hosts=split,
        )  # fmt: skip
    except deploy_mod.DeployError as e:
        raise Exit(f"error: {e}") from None
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    keys = [k for k in key.split(",") if k] or deploy_mod.default_key_files()
    reports, bundle = deploy_mod.run(
        settings, user, keys, change=change, dry_run=dry_run, connect_timeout=timeout
    )
    action = " (dry run: nothing changed)" if dry_run else ""
    print(f"scripts version {bundle.version} in {settings.node_scripts_dir}/{bundle.version}{action}")
    print(f"image {settings.image}, runtime {settings.exe}\n")
    print(deploy_mod.format_table(reports))
    unfit = [r.node.label for r in reports if not r.fit]
    if unfit:
        raise Exit(f"\nnot fit for servers: {', '.join(unfit)}", code=1)


@task(help=_NODE_HELP)
def check(c, hosts="", config="", user="root", key="", known_hosts="", image="", exe="",
          node_scripts_dir="", timeout=10):  # fmt: skip
    """Inspect each compute node over SSH and print a table; change nothing.

    Per node: SSH login (host key verified), the runtime and its version, the
    image, the node-wide scripts. Exits 1 if any node is unfit for servers.
    """
    _nodes_task(hosts, config, user, key, known_hosts, image, exe, node_scripts_dir, timeout)


@task(help={**_NODE_HELP, "dry_run": "only show what would be installed"})
def deploy(c, hosts="", config="", user="root", key="", known_hosts="", image="", exe="",
           node_scripts_dir="", timeout=10, dry_run=False):  # fmt: skip
    """Check each compute node and install the scripts into its node-wide directory.

    Installs this version of the scripts into NODE_SCRIPTS_DIR/<version>
    (root-owned, 0755/0644), which the spawner then uses instead of putting
    a copy in each user's home. Idempotent: a node that has it is left alone.
    Prints the table of `check`; exits 1 if any node is unfit for servers.
    """
    _nodes_task(hosts, config, user, key, known_hosts, image, exe, node_scripts_dir, timeout,
                change=True, dry_run=dry_run)  # fmt: skip


program = Program(
    name="remote-singularity-spawner",
    binary="remote-singularity-spawner",
    version=__version__,
    namespace=Collection(check, deploy),
)


def main() -> None:
    """The console script's entry point."""
    program.run()
