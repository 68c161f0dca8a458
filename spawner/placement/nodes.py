"""The node list: parse the admin's ``nodelist`` string into nodes.

Pure apart from name resolution, which is injected so that callers decide
where it runs (the spawner runs it in a thread, never on the event loop).

Formats, as in the original RemoteSingularitySpawner::

    "h1:10.0.0.1,h2:10.0.0.2"   names and addresses (the address is used)
    "h1:,h2:"                   names only (resolved)
    ":10.0.0.1,:10.0.0.2"       addresses only (shown as the address)
    "h1:,:10.0.0.2,h3:10.0.0.3" any mix

A record that does not parse, whose address is invalid or whose name does
not resolve is dropped with a warning naming it. The first valid record is
the default node.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
HOSTNAME_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")


@dataclass(frozen=True)
class Node:
    """One compute node a user may choose.

    ``label`` is what the user sees and chooses (the name, or the address
    when no name was given); ``address`` is the IP address the Hub connects
    to and proxies to.
    """

    label: str
    address: str


Resolver = Callable[[str], str]


def resolve_address(name: str) -> str:
    """Resolve *name* to one address string (blocking: call it in a thread)."""
    infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    return str(infos[0][4][0])


def _valid_ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def parse_nodelist(text: str, resolve: Resolver = resolve_address) -> tuple[list[Node], list[str]]:
    """Parse *text* into ``(nodes, warnings)``.

    *resolve* maps a host name to an address or raises ``OSError``.
    Duplicate labels keep their first occurrence.
    """
    nodes: list[Node] = []
    warnings: list[str] = []
    seen: set[str] = set()
    for raw in text.split(","):
        record = raw.strip()
        if not record:
            continue
        node, problem = _parse_record(record, resolve)
        if problem:
            warnings.append(f"nodelist record {record!r} ignored: {problem}")
        elif node.label in seen:
            warnings.append(f"nodelist record {record!r} ignored: {node.label!r} is listed twice")
        else:
            seen.add(node.label)
            nodes.append(node)
    return nodes, warnings


def _parse_record(record: str, resolve: Resolver) -> tuple[Node | None, str]:
    if record.count(":") != 1:
        # A bare IPv6 address has several colons; the format has exactly one.
        return None, "expected 'name:address', 'name:' or ':address'"
    name, address = (part.strip() for part in record.split(":"))
    if not name and not address:
        return None, "neither a name nor an address"
    if name and not HOSTNAME_RE.match(name):
        return None, f"{name!r} is not a valid host name"
    if address:
        ip = _valid_ip(address)
        if ip is None:
            return None, f"{address!r} is not a valid IP address"
        return Node(label=name or ip, address=ip), ""
    try:
        resolved = resolve(name)
    except (OSError, UnicodeError) as e:
        return None, f"the name {name!r} does not resolve ({e})"
    ip = _valid_ip(resolved)
    if ip is None:
        return None, f"the name {name!r} resolved to {resolved!r}, not an IP address"
    return Node(label=name, address=ip), ""


def slurm_node(
    name: str, node_addr: str, listed: Mapping[str, Node], resolve: Resolver = resolve_address
) -> Node:
    """Where Slurm's node *name* (NodeAddr *node_addr*) is reached, as the spawner and the admin
    command both reach it: its nodelist address when *listed* (nodelist by name) names it, else
    its NodeAddr, an IP address or a host name resolved (blocking: call it in a thread).

    ValueError saying why it cannot be reached (nothing connects to it then).
    """
    if name in listed:
        return listed[name]
    if not HOSTNAME_RE.fullmatch(name):
        raise ValueError("not a valid host name")
    ip = _valid_ip(node_addr)
    if ip is not None:
        return Node(name, ip)
    if not HOSTNAME_RE.fullmatch(node_addr):
        raise ValueError("not in nodelist, and its NodeAddr is neither an IP address nor a host name")
    try:
        ip = _valid_ip(resolve(node_addr))
    except (OSError, UnicodeError) as e:
        raise ValueError(f"not in nodelist, and its NodeAddr does not resolve ({e})") from None
    if ip is None:
        raise ValueError("not in nodelist, and its NodeAddr does not resolve to an IP address")
    return Node(name, ip)
