"""Every combination: placement x login method x internal TLS, end to end on the test cluster.

In each, a user's named server spawns (with Slurm, inside its job), is
reached through the proxy, survives a poll and a Hub restart that keeps it
(cleanup_servers False), and is stopped, leaving no process, no job and no
certificate directory behind. With certificates the Hub runs as the
unprivileged account of the certificate tests, for users whose homes hold no
key. Every Hub offers two images (images): the Hub's JupyterHub and another
minor version; the plain combinations start the first, the TLS ones the
second, so each placement and login method starts each image. A new setting
is one more parameter here.
"""

from __future__ import annotations

import time

import cluster as cluster_mod
import pytest
import slurm_cluster
from conftest import make_hub, nothing_left, servers_of, user_processes, wait_until
from cryptography import x509
from test_certificate_mode import (  # noqa: F401 - fixtures
    HUB_ACCOUNT,
    hub_account,
    hub_python,
    keyless_users,
    trusted_ca,
    workroot,
)
from test_internal_ssl_spawn import certs_left, tls_handshake
from test_slurm import job_of_server, slurm  # noqa: F401 - slurm: a fixture

POLL = 3  # the Hubs' poll_interval
SSH_CHOICE = {"host": "rss-node2"}
SLURM_CHOICE = {"partition": "debug", "cpus": 1, "memory": "512M", "time": "0:10:00"}
SLURM_CONFIG = """
c.RemoteSingularitySpawner.placement = "slurm"
c.RemoteSingularitySpawner.slurm_partitions = ["debug", "small"]
c.Spawner.start_timeout = 60
"""
PLACEMENTS = ("ssh", "slurm")
LOGINS = ("user-key", "certificate")
TLS = (False, True)
COMBINATIONS = [(p, login, tls) for p in PLACEMENTS for login in LOGINS for tls in TLS]
IMAGE_OF_TLS = {False: "jupyter", True: "jupyter-minor"}  # by the cluster's image names


def images_config(cluster) -> str:
    images = [{"name": name, "path": str(cluster.images[name])} for name in IMAGE_OF_TLS.values()]
    # The spawn request answers at once (202), and its progress is read from the start.
    slow_spawn = 'c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}\n'
    return f"c.RemoteSingularitySpawner.images = {images!r}\n" + slow_spawn


def combination_id(combination) -> str:
    placement, login, tls = combination
    return f"{placement}-{login}-{'tls' if tls else 'plain'}"


def matrix_hub(cluster, root, placement, login, tls, offset, python, ca):
    """A Hub of this combination, keeping its servers across a restart."""
    extra = f"c.Spawner.poll_interval = {POLL}\n" + images_config(cluster)
    if placement == "slurm":
        extra += SLURM_CONFIG
    kwargs = {}
    if login == "certificate":
        extra += (
            'c.RemoteSingularitySpawner.ssh_auth = "certificate"\n'
            f'c.RemoteSingularitySpawner.ssh_ca_key_file = "{ca}"\n'
            f'c.RemoteSingularitySpawner.known_hosts_files = ["{cluster.known_hosts}"]\n'
        )
        kwargs = {"python": python, "run_as": HUB_ACCOUNT}
    workdir = root / f"matrix-{offset}"
    # Ports at offset 600 and up: clear of the other tests' Hubs.
    return make_hub(
        cluster, workdir, offset=600 + offset, cleanup_servers=False, internal_ssl=tls,
        extra_config=extra, **kwargs,
    )  # fmt: skip


def slurm_jobs(user: str) -> list[dict]:
    return slurm_cluster.jobs(user)


@pytest.mark.parametrize(
    "placement, login, tls", COMBINATIONS, ids=[combination_id(c) for c in COMBINATIONS]
)
def test_a_named_server_lives_through_a_poll_a_restart_and_a_stop(
    cluster, slurm, workroot, hub_account, hub_python, trusted_ca, keyless_users, placement, login, tls  # noqa: F811
):
    offset = COMBINATIONS.index((placement, login, tls)) * 10
    user = "rss-alice" if login == "user-key" else keyless_users[0].name
    choice = SSH_CHOICE if placement == "ssh" else SLURM_CHOICE
    hub = matrix_hub(cluster, workroot, placement, login, tls, offset, hub_python, trusted_ca)
    hub.start()
    try:
        hub.ensure_user(user)
        image = IMAGE_OF_TLS[tls]
        r = hub.spawn(user, "matrix", options={**choice, "image": image})
        assert r.status_code in (201, 202), r.text
        messages = [e["message"] for e in hub.progress_events(user, "matrix")]
        model = hub.wait_ready(user, "matrix")
        node = model["state"]["node"]
        assert f"starting image {image} on {node}" in messages and model["state"]["image"] == image
        (server,) = servers_of(node, user)
        assert f"{cluster_mod.CONFIG.image_venvs[image]}/bin/" in server["args"], "runs the chosen image"
        if placement == "slurm":
            (job,) = slurm_jobs(user)
            assert job["state"] == "RUNNING" and job["node"] == node
            assert model["state"]["job_id"] == job["id"] == job_of_server(node, user), "in its job"
        if tls:
            state = model["state"]
            cert = tls_handshake(hub, state["address"], state["port"])  # as the proxy connects
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert state["address"] in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
            assert node in san.get_values_for_type(x509.DNSName), "named for the node it runs on"
            assert certs_left(user), "its certificate is on the node"
        assert hub.through_proxy(user, "matrix").status_code == 200

        # A poll round, then a restart that keeps the server and finds it from the state.
        time.sleep(POLL + 2)
        assert hub.server_model(user, "matrix")["ready"], "still running after a poll"
        hub.stop()
        assert servers_of(node, user), "the Hub's exit left the server running"
        hub.start()
        assert hub.server_model(user, "matrix") is not None, "kept across the restart"
        assert hub.through_proxy(user, "matrix").status_code == 200
        time.sleep(POLL + 2)
        assert hub.server_model(user, "matrix") is not None, "polled after the restart"

        hub.stop_server(user, "matrix")
        assert wait_until(lambda: nothing_left(node, user)), user_processes(node, user)
        assert wait_until(lambda: not slurm_jobs(user)), slurm_jobs(user)
        assert certs_left(user) == [], "no certificate directory is left"
    finally:
        for name in list(hub.api("GET", f"/users/{user}").json().get("servers") or {}):
            hub.stop_server(user, name)
        hub.stop()
        slurm_cluster.cancel_all(user)
