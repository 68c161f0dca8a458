"""internal_ssl against fake nodes: the certificate's names, the upload to the node, the clean-up."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from certipy import Certipy
from cryptography import x509
from fakes import FakeNode, reply
from traitlets import Union

from remotesingularityspawner import RemoteSingularitySpawner, remote
from remotesingularityspawner.internal_tls import node_alt_names
from remotesingularityspawner.placement import Placed
from remotesingularityspawner.placement.nodes import Node
from remotesingularityspawner.server_process import ServerProcess

HTTPS_ENV = {"JUPYTERHUB_SERVICE_URL": "https://10.0.0.2:0/user/alice/"}


@pytest.fixture
def ca_store(tmp_path):
    """The notebooks CA the Hub makes at start-up (JupyterHub.init_internal_ssl)."""
    store = tmp_path / "internal-ssl"
    ca = Certipy(store_dir=str(store)).create_ca("notebooks-ca", bits=1024)
    return store, ca["files"]["cert"]


@pytest.fixture
def ssl_traits(ca_store):
    """make_spawner(**ssl_traits): a spawner with internal_ssl whose user chose n2."""
    store, ca = ca_store
    return {
        "nodelist": "n1:10.0.0.1,n2:10.0.0.2,:10.0.0.3",
        "singularity_container_path": "/img.sif",
        "internal_ssl": True,
        "internal_certs_location": str(store),
        "internal_trust_bundles": {"notebooks-ca": ca},
        "user_options": {"host": "n2"},
        "env": HTTPS_ENV,
    }


def put_files(fake_ssh, action):
    """(node, login, args after the action) of each put_files.sh *action* ("put", "remove")."""
    return [
        (host, r.login, r.args[1:])
        for host, node in fake_ssh.nodes.items()
        for r in node.runs
        if r.script == "put_files.sh" and r.args[0] == action
    ]


def alt_names(path) -> set[str]:
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)} | {
        f"IP:{ip}" for ip in san.get_values_for_type(x509.IPAddress)
    }


async def configured_names(spawner):
    return ["DNS:jupyter.example.org"]


# JupyterHub >= 5.4.1 lets ssl_alt_names be a callable.
callable_names = pytest.param(
    configured_names,
    id="async",
    marks=pytest.mark.skipif(
        not isinstance(RemoteSingularitySpawner.class_traits()["ssl_alt_names"], Union),
        reason="this JupyterHub takes only a list",
    ),
)


@pytest.mark.parametrize("configured", [pytest.param(["DNS:jupyter.example.org"], id="list"), callable_names])
async def test_the_certificate_names_the_chosen_node_and_the_configured_names(
    make_spawner, ssl_traits, configured
):
    s = make_spawner(**ssl_traits, ssl_alt_names=configured)
    paths = await s.create_certs()
    assert alt_names(paths["certfile"]) == {
        "IP:10.0.0.2", "DNS:n2", "DNS:jupyter.example.org", "DNS:localhost", "IP:127.0.0.1",
    }  # fmt: skip
    assert s.ssl_alt_names == configured, "the configuration is left as it was"


async def test_a_node_without_a_name_is_named_by_its_address(make_spawner, ssl_traits):
    s = make_spawner(**ssl_traits, ssl_alt_names_include_local=False)
    s.user_options = {"host": "10.0.0.3"}
    paths = await s.create_certs()
    assert alt_names(paths["certfile"]) == {"IP:10.0.0.3"}
    assert node_alt_names(Node("10.0.0.3", "10.0.0.3")) == ["IP:10.0.0.3"]


async def test_bad_options_refused_before_a_certificate_is_made(make_spawner, ssl_traits, ca_store):
    s = make_spawner(**ssl_traits)
    s.user_options = {"host": "n9"}
    with pytest.raises(Exception, match="n9"):
        await s.create_certs()
    assert not list(Path(ca_store[0]).glob("user-*"))


async def test_move_certs_uploads_to_the_chosen_node_and_returns_the_paths_there(
    make_spawner, ssl_traits, fake_ssh
):
    s = make_spawner(**ssl_traits, name="gpu")
    paths = await s.create_certs()
    written = {k: Path(p).read_bytes() for k, p in paths.items()}
    # Another server of alice gets its certificate meanwhile: the Hub rewrites the same files.
    other = make_spawner(**{**ssl_traits, "user_options": {"host": "n1"}}, name="other")
    assert await other.create_certs() == paths
    assert Path(paths["certfile"]).read_bytes() != written["certfile"]

    moved = await s.move_certs(paths)

    ((host, login, args),) = put_files(fake_ssh, "put")
    assert (host, login) == ("10.0.0.2", "alice")
    assert args[0] == "--dir"
    certs_dir = args[1]
    assert certs_dir == f"{s.parts.server.server_dir}/certs"
    assert certs_dir.startswith(".remote-singularity-spawner/")
    # What the node received (put_files.sh writes them 0600 in a 0700 directory: see the bats tests).
    assert fake_ssh.node("10.0.0.2").dirs[f"/home/alice/{certs_dir}"] == {
        "server.key": written["keyfile"].decode(),
        "server.crt": written["certfile"].decode(),
        "ca.crt": written["cafile"].decode(),
    }
    home_dir = f"/home/alice/{certs_dir}"
    assert moved == {
        "keyfile": f"{home_dir}/server.key",
        "certfile": f"{home_dir}/server.crt",
        "cafile": f"{home_dir}/ca.crt",
    }
    assert s.parts.tls.on_node.directory == home_dir
    s.placed, s.process = Placed("n2", "10.0.0.2", "alice"), ServerProcess(7, 1, 50000)
    assert s.get_state()["certs_dir"] == home_dir, "a restarted Hub can still remove them"


class NodeThatCannotWrite(FakeNode):
    """A node whose put_files.sh cannot write the user's private files."""

    def _put_files(self, run):
        if run.args[0] == "put":
            return reply(
                remote.ExitCode.CANNOT_WRITE, stderr="mkdir: cannot create directory: Permission denied"
            )
        return super()._put_files(run)


async def test_an_upload_that_fails_fails_the_spawn_with_a_message(make_spawner, ssl_traits, fake_ssh):
    fake_ssh.nodes["10.0.0.2"] = NodeThatCannotWrite("10.0.0.2")
    s = make_spawner(**ssl_traits)
    paths = await s.create_certs()
    with pytest.raises(Exception, match="Cannot copy the TLS certificates to n2.*Permission denied"):
        await s.move_certs(paths)
    assert s.parts.tls.on_node is None
    assert [args[0] for _, _, args in put_files(fake_ssh, "put")] == ["--dir"], "it was tried"


@pytest.mark.parametrize(
    "how",
    ["stop", "start fails", "poll finds it dead"],
)
async def test_the_certificates_go_with_the_server(make_spawner, ssl_traits, fake_ssh, how):
    s = make_spawner(**ssl_traits)
    node = fake_ssh.node("10.0.0.2")
    await s.move_certs(await s.create_certs())
    certs_dir = s.parts.tls.on_node.directory
    if how == "start fails":
        node.on("start_singleuser.sh", reply(remote.ExitCode.SERVER_DIED, stderr="the server exited"))
        with pytest.raises(Exception, match="did not start"):
            await s.start()
    else:
        node.on("start_singleuser.sh", reply(pid=99, start_time=5, port=50000))
        assert await s.start() == ("10.0.0.2", 50000)
        if how == "stop":
            node.on("stop.sh", reply(signal="TERM"))
            await s.stop()
        else:
            node.on("check_pid.sh", reply(remote.ExitCode.NOT_RUNNING))
            assert await s.poll() == 0
    assert put_files(fake_ssh, "remove") == [("10.0.0.2", "alice", ["--dir", certs_dir])]
    assert certs_dir not in node.dirs, "the files are gone from the node"
    assert s.parts.tls.on_node is None


async def test_without_internal_ssl_nothing_is_removed(make_spawner, ssl_traits, fake_ssh):
    s = make_spawner(**{**ssl_traits, "internal_ssl": False, "env": {
        "JUPYTERHUB_SERVICE_URL": "http://10.0.0.2:0/user/alice/"
    }})  # fmt: skip
    node = fake_ssh.node("10.0.0.2")
    node.on("start_singleuser.sh", reply(pid=99, start_time=5, port=50000))
    node.on("stop.sh", reply(signal="TERM"))
    await s.start()
    await s.stop()
    assert node.scripts_run() == ["start_singleuser.sh", "stop.sh"]
    assert put_files(fake_ssh, "remove") == []


async def test_the_certificates_of_a_start_the_hub_gave_up_on_go_when_it_completes(
    make_spawner, ssl_traits, fake_ssh
):
    s = make_spawner(**ssl_traits)
    node = fake_ssh.node("10.0.0.2")
    await s.move_certs(await s.create_certs())
    certs_dir = s.parts.tls.on_node.directory
    release = threading.Event()

    def start(args, stdin):
        release.wait(10)
        return reply(pid=99, start_time=5, port=50000)

    node.on("start_singleuser.sh", start)
    node.on("stop.sh", reply(signal="TERM"))
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(s.start(), timeout=0.2)
    s.clear_state()  # as the Hub does when it stops the server that did not start
    assert put_files(fake_ssh, "remove") == []
    release.set()
    for _ in range(100):
        if put_files(fake_ssh, "remove"):
            break
        await asyncio.sleep(0.05)
    assert put_files(fake_ssh, "remove") == [("10.0.0.2", "alice", ["--dir", certs_dir])]
    assert node.scripts_run() == ["start_singleuser.sh", "stop.sh"]


# --- placement slurm: the node is known only once the job runs ---------------------------------


async def test_with_slurm_the_certificate_names_the_allocated_node_and_goes_there_before_the_server(
    make_spawner, ssl_traits, fake_ssh
):
    """The Hub asks for certificates before start(); the node is Slurm's choice, made later."""
    submit = fake_ssh.node("10.0.0.1")  # the first node of the list: the default submit host
    partition = {
        "name": "debug", "available": True, "default": True, "nodes": ["n1", "n2"], "nodes_idle": 2,
        "nodes_total": 2, "cpus_idle": 4, "cpus_total": 4, "cpus_per_node": 2, "memory_mb_per_node": 2000,
        "gpus_per_node": 0, "max_time": "1:00:00",
    }  # fmt: skip
    answers = {
        "partitions": reply(partitions=[partition]),
        "submit": reply(job_id="77"),
        "state": reply(job_id="77", state="RUNNING", node="n2", partition="debug"),
        "cancel": reply(job_id="77", state="CANCELLED"),
    }
    submit.on("slurm_job.sh", lambda args, stdin: answers[args[0]])
    node = fake_ssh.node("10.0.0.2")
    seen_at_start = {}

    def start(args, stdin):
        seen_at_start.update(dirs=dict(node.dirs), env=stdin)
        return reply(pid=99, start_time=5, port=50000)

    node.on("start_singleuser.sh", start)
    node.on("stop.sh", reply(signal="TERM"))
    traits = {**ssl_traits, "placement": "slurm", "user_options": {"partition": "debug"}}
    s = make_spawner(**traits)
    # As JupyterHub's get_env: the files' paths from cert_paths.
    s.get_env = lambda: {**HTTPS_ENV, **{f"JUPYTERHUB_SSL_{k.upper()}": v for k, v in s.cert_paths.items()}}
    await s.apply_user_options(s, s.user_options)
    hub_paths = await s.create_certs()
    s.cert_paths = await s.move_certs(hub_paths)
    assert s.cert_paths == {} and put_files(fake_ssh, "put") == [], "no node is known yet"

    assert await s.start() == ("10.0.0.2", 50000)
    ((host, login, args),) = put_files(fake_ssh, "put")
    assert (host, login) == ("10.0.0.2", "alice"), "the allocated node, not the submit host"
    certs_dir = s.parts.tls.on_node.directory
    assert f"{certs_dir}/server.crt" in seen_at_start["env"], "the server is told where its files are"
    assert certs_dir in seen_at_start["dirs"], "the files were there before the server started"
    assert alt_names_of_text(seen_at_start["dirs"][certs_dir]["server.crt"]) >= {"IP:10.0.0.2", "DNS:n2"}
    assert s.get_state()["certs_dir"] == certs_dir

    await s.stop()
    assert put_files(fake_ssh, "remove") == [("10.0.0.2", "alice", ["--dir", certs_dir])]
    assert [r.args[0] for r in submit.runs if r.script == "slurm_job.sh"][-1] == "cancel", "the job ended"


def alt_names_of_text(pem: str) -> set[str]:
    cert = x509.load_pem_x509_certificate(pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)} | {
        f"IP:{ip}" for ip in san.get_values_for_type(x509.IPAddress)
    }


async def test_the_options_are_validated_once_per_spawn(make_spawner, ssl_traits, fake_ssh):
    s = make_spawner(**ssl_traits)
    fake_ssh.node("10.0.0.2").on("start_singleuser.sh", reply(pid=99, start_time=5, port=50000))
    validate, calls = s.parts.placer.validate, []

    async def counted(options):
        calls.append(options)
        return await validate(options)

    s.parts.placer.validate = counted
    # As JupyterHub's spawn: the hook, the certificates, then start().
    await s.apply_user_options(s, s.user_options)
    await s.move_certs(await s.create_certs())
    await s.start()
    assert calls == [{"host": "n2"}]
    # The next spawn validates its own options again.
    s.user_options = {"host": "n1"}
    fake_ssh.node("10.0.0.1").on("start_singleuser.sh", reply(pid=98, start_time=5, port=50001))
    await s.apply_user_options(s, s.user_options)
    await s.move_certs(await s.create_certs())
    assert await s.start() == ("10.0.0.1", 50001)
    assert calls == [{"host": "n2"}, {"host": "n1"}]
