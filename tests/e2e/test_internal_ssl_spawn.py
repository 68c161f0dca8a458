"""End to end with ``c.JupyterHub.internal_ssl = True``.

The Hub makes a certificate per server, the spawner copies it to the node;
the Hub, the proxy and the server then talk TLS with each other and check
each other's certificates, so a certificate that does not name the node's
address, or files the server cannot read, make the spawn fail.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
from pathlib import Path

import cluster as cluster_mod
import pytest
import requests
from conftest import USERS, make_hub, servers_of, spawn_failure, wait_until
from cryptography import x509

NODE1, NODE2 = "rss-node1", "rss-node2"


@pytest.fixture(scope="module")
def hub(cluster, tmp_path_factory):
    """A Hub with internal TLS (named ``hub`` so a failure prints its log)."""
    h = make_hub(
        cluster,
        tmp_path_factory.mktemp("tls-hub"),
        offset=300,
        internal_ssl=True,
        extra_config="c.Spawner.poll_interval = 3",
    )
    h.start()
    for user in USERS:
        h.ensure_user(user)
    yield h
    h.stop()


def group(node: str, pid: int) -> list[dict]:
    """The processes of the server started as *pid* (its process group) on *node*.

    Other runs on this machine may have servers of the same user on the
    same node: these tests look only at their own."""
    return [p for p in cluster_mod.node_processes(node) if p["pgid"] == pid]


def gone(node: str, pid: int) -> bool:
    return wait_until(lambda: not group(node, pid))


def certs_left(user: str) -> list[Path]:
    """Certificate directories on the node (the homes are shared with the Hub host)."""
    home = cluster_mod.describe().user(user).home
    return sorted(home.glob(".remote-singularity-spawner/servers/*/certs"))


def server_env(node: str, pid: int) -> dict[str, str]:
    environ = cluster_mod.node_run(node, ["cat", f"/proc/{pid}/environ"]).stdout
    return dict(item.split("=", 1) for item in environ.split("\0") if "=" in item)


def tls_handshake(hub, address: str, port: int) -> x509.Certificate:
    """Connect as the proxy does (its client certificate), checking the server's
    certificate against the Hub's CAs and the node's address; the server's certificate."""
    client = hub.certs_dir / "proxy-client"
    context = ssl.create_default_context(cafile=hub.certs_dir / "proxy-client-ca_trust.crt")
    context.load_cert_chain(client / "proxy-client.crt", client / "proxy-client.key")
    with socket.create_connection((address, port), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname=address) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


@pytest.mark.parametrize("user, node", [("rss-alice", NODE1), ("rss-bob", NODE2)])
def test_spawn_over_tls_with_a_certificate_for_the_node_and_private_files(hub, user, node):
    hub.spawn(user, options={"host": node})
    model = hub.wait_ready(user)  # the Hub reached the server over TLS
    assert hub.through_proxy(user).status_code == 200  # and so did the proxy
    state = model["state"]
    node_ip = cluster_mod.describe().node(node).ip
    routes = hub.api("GET", "/proxy").json()
    assert routes[f"/user/{user}/"]["target"] == f"https://{node_ip}:{state['port']}", routes

    # The certificate names the chosen node, by address and by name; it checks
    # out against the Hub's CAs when connecting to the node's address.
    cert = tls_handshake(hub, node_ip, state["port"])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address(node_ip) in san.get_values_for_type(x509.IPAddress)
    assert node in san.get_values_for_type(x509.DNSName)
    # Plain HTTP is not served.
    with pytest.raises(requests.RequestException):
        requests.get(f"http://{node_ip}:{state['port']}/user/{user}/api/status", timeout=10)

    # The server reads its key, certificate and CA from private files under the user's home.
    certs = Path(state["certs_dir"])
    assert certs_left(user) == [certs]
    home = cluster_mod.describe().user(user).home
    assert certs.is_relative_to(home)
    assert certs.stat().st_mode & 0o777 == 0o700
    uid = home.stat().st_uid
    for name in ("server.key", "server.crt", "ca.crt"):
        path = certs / name
        assert (path.stat().st_mode & 0o777, path.stat().st_uid) == (0o600, uid), path
    assert x509.load_pem_x509_certificate((certs / "server.crt").read_bytes()) == cert
    (server,) = [p for p in servers_of(node, user) if p["pgid"] == state["pid"]]
    env = server_env(node, server["pid"])
    assert env["JUPYTERHUB_SSL_KEYFILE"] == str(certs / "server.key")
    assert env["JUPYTERHUB_SSL_CERTFILE"] == str(certs / "server.crt")
    assert env["JUPYTERHUB_SSL_CLIENT_CA"] == str(certs / "ca.crt")
    assert re.match(r"https://", env["JUPYTERHUB_API_URL"]), env["JUPYTERHUB_API_URL"]

    # Stopping removes them with the server.
    hub.stop_server(user)
    assert gone(node, state["pid"]), group(node, state["pid"])
    assert certs_left(user) == []


def test_certificates_of_a_server_that_failed_to_start_are_removed(hub):
    user = "rss-carol"
    message = spawn_failure(hub, user, {"host": NODE1, "binds": ["/no/such/dir:/mnt"]})
    assert "mount source /no/such/dir doesn't exist" in message
    assert certs_left(user) == []


def test_certificates_of_a_server_that_died_are_removed(hub):
    user, node = "rss-carol", NODE2
    hub.spawn(user, options={"host": node})
    state = hub.wait_ready(user)["state"]
    assert certs_left(user) == [Path(state["certs_dir"])]
    cluster_mod.node_run(node, ["kill", "-KILL", str(state["pid"])])
    # poll_interval is 3 s in this Hub.
    assert wait_until(lambda: hub.server_model(user) is None, timeout=60), hub.server_model(user)
    assert certs_left(user) == []
    assert gone(node, state["pid"]), group(node, state["pid"])


def test_two_servers_of_one_user_on_both_nodes_each_get_their_own_certificate(hub):
    """JupyterHub writes every server of a user to the same files: spawned at
    once, each server must still get a certificate for its own node."""
    user = "rss-alice"
    assert hub.spawn(user, options={"host": NODE1}).status_code in (201, 202)
    assert hub.spawn(user, "second", {"host": NODE2}).status_code in (201, 202)
    pids = {}
    for name, node in (("", NODE1), ("second", NODE2)):
        state = hub.wait_ready(user, name)["state"]
        pids[node] = state["pid"]
        assert hub.through_proxy(user, name).status_code == 200
        node_ip = cluster_mod.describe().node(node).ip
        san = tls_handshake(hub, node_ip, state["port"]).extensions
        assert node in san.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )
    assert len(certs_left(user)) == 2
    hub.stop_server(user)
    hub.stop_server(user, "second")
    assert certs_left(user) == []
    assert all(gone(node, pid) for node, pid in pids.items())


def test_a_tls_server_survives_a_hub_restart_and_its_certificates_go_at_stop(cluster, alt_hub):
    user = "rss-bob"
    hub = alt_hub("", cleanup_servers=False, internal_ssl=True)
    hub.spawn(user, options={"host": NODE1})
    state = hub.wait_ready(user)["state"]
    hub.stop()
    hub.start()
    model = hub.server_model(user)
    assert model and model["ready"] and model["state"]["certs_dir"] == state["certs_dir"]
    assert hub.through_proxy(user).status_code == 200
    hub.stop_server(user)
    assert certs_left(user) == []
    assert gone(NODE1, state["pid"]), group(NODE1, state["pid"])
