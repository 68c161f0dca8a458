"""placement = "slurm": which hosts check and deploy look at, and the role of each.

The submit host (``slurm_submit_host``, else the first node of nodelist) is
where users run sbatch, squeue, scancel and sinfo; no server runs there, so
it is checked for the login, the Slurm client, the scripts and the CA, not
for the runtime or the image. The compute nodes are the ones its ``sinfo``
lists (``check_node.sh --role submit`` runs ``sinfo -h -N -o '%N|%o'``
there, over the admin's login), reached as the spawner reaches the node of
a job (``nodes.slurm_node``, which both use): at its nodelist address when
nodelist names it, else at its NodeAddr if that is an IP address, else at its
NodeAddr resolved. They are checked as any node. A host that is both
(by address) is checked for both.

Every name and address here comes from a node's answer: each is validated
before anything connects to it. Pure but for name resolution (injected);
the question to the submit host is the caller's (deploy.run).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import paramiko

from .. import remote
from ..placement.nodes import Node, Resolver, resolve_address, slurm_node

SUBMIT, COMPUTE = "submit", "compute"
BOTH = f"{SUBMIT}, {COMPUTE}"

# check_node.sh --role submit on a host: its JSON reply.
Ask = Callable[[Node], dict]


def has_role(role: str, which: str) -> bool:
    """Whether *role* (``compute``, ``submit`` or ``submit, compute``) includes *which*."""
    return which in role.split(", ")


def script_role(role: str) -> str:
    """*role* as check_node.sh's ``--role`` takes it (``submit,compute``)."""
    return role.replace(" ", "")


def listing(probe: dict) -> tuple[list[tuple[str, str]], str]:
    """(name, NodeAddr) of each node the reply's sinfo listed, once each; and why none, or ""."""
    state = probe.get("sinfo")
    if state != "ok":
        why = "it is not on the PATH" if state == "missing" else f"it failed: {probe.get('sinfo_error')}"
        return [], f"sinfo cannot list the compute nodes ({why}): no compute node was checked"
    lines = probe.get("slurm_nodes")
    pairs: dict[str, str] = {}
    for line in lines if isinstance(lines, list) else []:
        name, _, address = str(line).partition("|")
        pairs.setdefault(name.strip(), address.strip())  # sinfo -N: once per partition
    if not pairs:
        return [], "sinfo lists no node: no compute node was checked"
    return list(pairs.items()), ""


def compute_nodes(
    probe: dict, listed: Sequence[Node], resolve: Resolver = resolve_address
) -> tuple[list[Node], list[str]]:
    """The nodes the reply's sinfo listed, where they are reached; and one problem per node
    that cannot be (not checked, and no server could start there), or why none was listed."""
    pairs, why = listing(probe)
    by_name = {node.label: node for node in listed}
    nodes, problems = [], [why] if why else []
    for name, address in pairs:
        try:
            nodes.append(slurm_node(name, address, by_name, resolve))
        except ValueError as e:
            problems.append(f"sinfo lists node {name!r} at {address!r}: {e}: not checked")
    return nodes, problems


def find_hosts(
    submit: Node, listed: Sequence[Node], ask: Ask, resolve: Resolver = resolve_address
) -> tuple[list[tuple[Node, str]], list[str]]:
    """The hosts to check with their roles, each once: the submit host first, then the nodes its
    sinfo lists. Also what stands in the way of listing them, for the submit host's report.

    *ask* runs check_node.sh --role submit on the submit host; a failure leaves it alone.
    """
    try:
        probe = ask(submit)
    except (OSError, EOFError, paramiko.SSHException, remote.RemoteError) as e:
        return [(submit, SUBMIT)], [f"cannot list the compute nodes: {e or type(e).__name__}"]
    computes, problems = compute_nodes(probe, listed, resolve)
    hosts = {submit.address: (submit, SUBMIT)}
    for node in computes:
        if node.address == submit.address:
            hosts[node.address] = (submit, BOTH)
        else:
            hosts.setdefault(node.address, (node, COMPUTE))
    return list(hosts.values()), problems


def slurm_client_verdict(probe: dict) -> tuple[str, str]:
    """(the SLURM column, problem or "") for a submit host: the client commands check_node.sh missed."""
    missing = str(probe.get("slurm_missing", "")).split()
    if not missing:
        return "ok", ""
    listed = ", ".join(missing)
    return "MISSING", f"the Slurm client is incomplete: {listed} not on the login PATH (users run them here)"
