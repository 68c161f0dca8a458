"""End to end: a known_hosts file as sites have it.

The Hub reads one file alone: a @cert-authority line at the top, comments, a
malformed line, and the nodes' host keys under hashed names (ssh-keygen -H),
as a site with host certificates keeps /etc/ssh/ssh_known_hosts. paramiko's own
loader gives up on such a file; the spawner spawns through it, and refuses a
node whose key a @revoked line names before any login.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from conftest import nothing_left, servers_of, spawn_failure, user_processes, wait_until
from test_security import sshd_log

NODE1, NODE2 = "rss-node1", "rss-node2"
CA_WARNING = "@cert-authority lines are not used: host certificates cannot be verified"
MALFORMED = "rss-node3 ssh-ed25519 this-is-not-base64!"


def host_key_line(cluster, node: str, key_type: str) -> str:
    """'TYPE BASE64' of *node*'s host key of *key_type* (ssh-ed25519, ...)."""
    for private in cluster.node(node).host_keys:
        key_type_found, blob, *_ = Path(f"{private}.pub").read_text().split()
        if key_type_found == key_type:
            return f"{key_type_found} {blob}"
    raise AssertionError(f"{node} has no {key_type} host key")


def site_known_hosts(cluster, tmp_path: Path) -> tuple[Path, int]:
    """The site's file (root's, 0644) and the line number of its malformed line."""
    ca = tmp_path / "host_ca"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "host CA", "-f", ca], check=True)
    # Both nodes, all their key types, port 22: "name,ip type key" lines, each name hashed.
    plain = [x for x in cluster.known_hosts.read_text().splitlines() if x and not x.startswith("[")]
    to_hash = tmp_path / "to-hash"
    to_hash.write_text("\n".join(plain) + "\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", to_hash], check=True, capture_output=True)
    hashed = to_hash.read_text().splitlines()
    assert len(hashed) == 2 * len(plain) and all(x.startswith("|1|") for x in hashed)
    assert not any(n.ip in x for n in cluster.nodes for x in hashed), "no address left in clear"
    ca_pub = (tmp_path / "host_ca.pub").read_text().split()
    lines = [
        f"@cert-authority *.cluster.example,10.213.47.* {ca_pub[0]} {ca_pub[1]} site host CA",
        "# The cluster's host keys, kept by the sysadmins.",
        "",
        *hashed[: len(hashed) // 2],
        "# a line someone broke:",
        MALFORMED,
        *hashed[len(hashed) // 2 :],
    ]
    path = tmp_path / "ssh_known_hosts"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)
    return path, lines.index(MALFORMED) + 1


def logins_on(node: str, user: str, since: int) -> list[str]:
    """sshd's lines about logins *user* attempted on *node* since the log offset *since*."""
    attempts = r"^(?:Accepted \w+ for|Failed \w+ for|Invalid user|Postponed \w+ for) (?:invalid user )?(\S+) "
    return [m.group(0) for m in re.finditer(attempts, sshd_log(node)[since:], re.M) if m.group(1) == user]


def spawn_and_stop(hub, user: str, node: str) -> None:
    r = hub.spawn(user, options={"host": node})
    assert r.status_code in (201, 202), r.text
    model = hub.wait_ready(user)
    assert model["state"]["node"] == node
    assert hub.through_proxy(user).status_code == 200
    assert len(servers_of(node, user)) == 1, user_processes(node, user)
    hub.stop_server(user)
    assert wait_until(lambda: nothing_left(node, user)), user_processes(node, user)
    assert hub.through_proxy(user).status_code != 200


def test_a_site_known_hosts_file_works_and_a_revoked_key_is_refused_before_login(cluster, alt_hub, tmp_path):
    path, malformed_at = site_known_hosts(cluster, tmp_path)
    # That file alone: nothing from the users' homes, nor /etc/ssh/ssh_known_hosts.
    hub = alt_hub(f"c.RemoteSingularitySpawner.known_hosts_files = [{str(path)!r}]")

    spawn_and_stop(hub, "rss-alice", NODE1)
    log = hub.log_path.read_text(errors="replace")
    assert f"{path}: {CA_WARNING}; list the nodes' host keys too" in log
    assert f"known_hosts file {path} line {malformed_at} skipped" in log

    # The sysadmins revoke rss-node2's ed25519 key (the type the spawner asks for first),
    # leaving its plain lines: the @revoked line wins.
    node2 = cluster.node(NODE2)
    with open(path, "a") as f:
        f.write(f"@revoked {node2.ip} {host_key_line(cluster, NODE2, 'ssh-ed25519')} compromised\n")
    since = len(sshd_log(NODE2))
    message = spawn_failure(hub, "rss-bob", {"host": NODE2})
    assert f"Cannot start your server on {NODE2}: the host key of {node2.ip} (ssh-ed25519 " in message
    assert "is marked @revoked: refusing to connect" in message and str(path) not in message
    assert f"is marked @revoked in {path}: refusing to connect" in hub.log_path.read_text(errors="replace")
    assert hub.server_model("rss-bob") is None
    # Refused before any login: sshd saw the connection, not a login of rss-bob.
    assert f"Connection from {cluster.hub_ip}" in sshd_log(NODE2)[since:]
    assert logins_on(NODE2, "rss-bob", since) == []
    assert wait_until(lambda: nothing_left(NODE2, "rss-bob"))

    # The revocation is rss-node2's alone: rss-node1 still works from the re-read file.
    spawn_and_stop(hub, "rss-carol", NODE1)
    log = hub.log_path.read_text(errors="replace")
    assert log.count(CA_WARNING) == 1, "one warning per file per process"
    assert log.count(f"known_hosts file {path} line {malformed_at} skipped") == 2, "once per version read"
