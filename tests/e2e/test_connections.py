"""End to end: the Hub keeps one SSH connection per user and node.

What an HPC sysadmin sees in the nodes' sshd logs: a server's start, its
polls and its stop arrive as sessions (channels) on one connection, not as a
new login every poll interval.
"""

from __future__ import annotations

import re

import cluster as cluster_mod
from test_spawn import NODE1, NODE2, nothing_left, wait_until


def _sshd_log(node: str) -> str:
    return cluster_mod.describe().node(node).sshd_log.read_text(errors="replace")


def _sessions(log_text: str, user: str) -> list[str]:
    """The client port of every command session *user* opened, in order."""
    return re.findall(rf"Starting session: command for {re.escape(user)} from \S+ port (\d+)", log_text)


def _polls(hub, user: str, node_ip: str) -> int:
    text = hub.log_path.read_text(errors="replace")
    return len(re.findall(rf"on {re.escape(node_ip)} as {re.escape(user)}: bash \S+/check_pid\.sh", text))


def test_start_polls_and_stop_share_one_connection(hub):
    user, node = "rss-carol", NODE1
    node_ip = cluster_mod.describe().node(node).ip
    offset = len(_sshd_log(node))
    polls_before = _polls(hub, user, node_ip)

    hub.spawn(user, options={"host": node})
    hub.wait_ready(user)
    # poll_interval is 3 s in this Hub: wait for a few polls.
    assert wait_until(lambda: _polls(hub, user, node_ip) >= polls_before + 3, timeout=60)
    hub.stop_server(user)
    assert wait_until(lambda: nothing_left(node, user))

    ports = _sessions(_sshd_log(node)[offset:], user)
    assert len(ports) >= 5, ports  # start, three polls, stop
    assert len(set(ports)) == 1, f"{len(set(ports))} connections for {len(ports)} operations"


def test_a_dropped_connection_is_replaced_without_the_server_being_lost(hub):
    user, node = "rss-carol", NODE2
    hub.spawn(user, options={"host": node})
    model = hub.wait_ready(user)
    node_ip = cluster_mod.describe().node(node).ip
    offset = len(_sshd_log(node))
    polls = _polls(hub, user, node_ip)

    # sshd restarts and drops every session: the kept connection is dead.
    cluster_mod.restart_sshd(node, drop_sessions=True)
    assert wait_until(lambda: len(set(_sessions(_sshd_log(node)[offset:], user))) >= 1, timeout=60)
    assert wait_until(lambda: _polls(hub, user, node_ip) >= polls + 2, timeout=60)
    after = hub.server_model(user)
    assert after and after["ready"] and after["state"]["pid"] == model["state"]["pid"]
    assert "Cannot check" not in hub.log_path.read_text(errors="replace")[-20000:]

    hub.stop_server(user)
    assert wait_until(lambda: nothing_left(node, user))
