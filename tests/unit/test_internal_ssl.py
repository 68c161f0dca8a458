"""internal_ssl without a cluster: the certificate's names, the private upload, the clean-up."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
from certipy import Certipy
from cryptography import x509
from traitlets import Union

from remotesingularityspawner import RemoteSingularitySpawner, remote
from remotesingularityspawner import spawner as spawner_module

# --- the private upload ---------------------------------------------------------------------


class LocalSFTP:
    """paramiko's SFTPClient on a local directory, as OpenSSH's sftp-server
    serves a home: relative paths under it, new files and directories get the
    process umask. Records whether another user could read a file when it is
    created and when it is written."""

    def __init__(self, home: Path, fail_on: str = ""):
        self.home = home
        self.fail_on = fail_on
        self.exposed: list[str] = []

    def _p(self, path: str) -> Path:
        return self.home / path

    def stat(self, path):
        return os.stat(self._p(path))

    def mkdir(self, path, mode=0o777):
        os.mkdir(self._p(path), mode)

    def chmod(self, path, mode):
        os.chmod(self._p(path), mode)

    def listdir(self, path):
        return os.listdir(self._p(path))

    def remove(self, path):
        os.remove(self._p(path))

    def rmdir(self, path):
        os.rmdir(self._p(path))

    def rename(self, old, new):
        if self._p(new).exists():
            raise OSError("Failure")  # SFTP v3 rename does not replace
        os.rename(self._p(old), self._p(new))

    def normalize(self, path):
        return str(self._p(path).resolve())

    def open(self, path, mode="r"):
        return LocalFile(self, self._p(path))

    def check(self, path: Path) -> None:
        """Note *path* if another user could read it now."""
        if path.stat().st_mode & stat.S_IROTH and all(
            d.stat().st_mode & stat.S_IXOTH for d in path.parents if self.home in (d, *d.parents)
        ):
            self.exposed.append(path.name)


class LocalFile:
    def __init__(self, sftp: LocalSFTP, path: Path):
        self.sftp, self.path = sftp, path
        self.f = open(path, "wb")  # noqa: SIM115 -- closed in __exit__
        self.sftp.check(path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def chmod(self, mode):
        os.chmod(self.path, mode)

    def write(self, data):
        if self.sftp.fail_on and self.path.name == self.sftp.fail_on:
            raise OSError("No space left on device")
        self.sftp.check(self.path)
        self.f.write(data)


@pytest.fixture
def home(tmp_path):
    old = os.umask(0o022)
    home = tmp_path / "alice"
    home.mkdir(mode=0o755)
    yield home
    os.umask(old)


FILES = {"server.key": b"KEY", "server.crt": b"CERT", "ca.crt": b"CA"}


def test_private_files_are_0600_in_0700_and_never_readable_by_others_meanwhile(home):
    sftp = LocalSFTP(home)
    (home / ".rss").mkdir(mode=0o755)  # a parent someone made open
    where = remote.put_private_files(sftp, ".rss/servers/x/certs", FILES)
    certs = home / ".rss/servers/x/certs"
    assert where == str(certs)
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700
    assert {p.name: (stat.S_IMODE(p.stat().st_mode), p.read_bytes()) for p in certs.iterdir()} == {
        name: (0o600, data) for name, data in FILES.items()
    }
    assert sftp.exposed == []
    assert sorted(p.name for p in certs.parent.iterdir()) == ["certs"], "no staging left"


def test_private_files_replace_the_previous_ones(home):
    sftp = LocalSFTP(home)
    remote.put_private_files(sftp, "certs", {"server.key": b"OLD", "old.pem": b"x"})
    remote.put_private_files(sftp, "certs", FILES)
    assert {p.name: p.read_bytes() for p in (home / "certs").iterdir()} == FILES


def test_a_failed_upload_leaves_the_previous_files_and_no_staging(home):
    remote.put_private_files(LocalSFTP(home), "certs", {"server.key": b"OLD"})
    with pytest.raises(OSError, match="No space"):
        remote.put_private_files(LocalSFTP(home, fail_on="server.crt"), "certs", FILES)
    assert sorted(p.name for p in home.iterdir()) == ["certs"]
    assert (home / "certs/server.key").read_bytes() == b"OLD"


def test_removing_private_files_twice_is_fine(home):
    sftp = LocalSFTP(home)
    remote.put_private_files(sftp, "a/certs", FILES)
    remote.remove_private_files(sftp, "a/certs")
    remote.remove_private_files(sftp, "a/certs")
    assert list((home / "a").iterdir()) == []


# --- the spawner's hooks ------------------------------------------------------------------


@pytest.fixture
def ca_store(tmp_path):
    """The notebooks CA the Hub makes at start-up (JupyterHub.init_internal_ssl)."""
    store = tmp_path / "internal-ssl"
    ca = Certipy(store_dir=str(store)).create_ca("notebooks-ca", bits=1024)
    return store, ca["files"]["cert"]


def make_spawner(ca_store, name="", internal_ssl=True, **traits):
    spawner_module._node_cache.clear()
    store, ca = ca_store
    user = SimpleNamespace(name="alice", url="/user/alice/", id=1)
    s = RemoteSingularitySpawner(
        user=user,
        orm_spawner=SimpleNamespace(name=name, server=None),
        nodelist="n1:10.0.0.1,n2:10.0.0.2,:10.0.0.3",
        singularity_container_path="/img.sif",
        internal_ssl=internal_ssl,
        internal_certs_location=str(store),
        internal_trust_bundles={"notebooks-ca": ca},
        **traits,
    )
    s.user_options = {"host": "n2"}
    return s


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
async def test_the_certificate_names_the_chosen_node_and_the_configured_names(ca_store, configured):
    s = make_spawner(ca_store, ssl_alt_names=configured)
    paths = await s.create_certs()
    assert alt_names(paths["certfile"]) == {
        "IP:10.0.0.2", "DNS:n2", "DNS:jupyter.example.org", "DNS:localhost", "IP:127.0.0.1",
    }  # fmt: skip
    assert s.ssl_alt_names == configured, "the configuration is left as it was"


async def test_a_node_without_a_name_is_named_by_its_address(ca_store):
    s = make_spawner(ca_store, ssl_alt_names_include_local=False)
    s.user_options = {"host": "10.0.0.3"}
    paths = await s.create_certs()
    assert alt_names(paths["certfile"]) == {"IP:10.0.0.3"}
    assert spawner_module.node_alt_names(spawner_module.Node("10.0.0.3", "10.0.0.3")) == ["IP:10.0.0.3"]


async def test_bad_options_refused_before_a_certificate_is_made(ca_store):
    s = make_spawner(ca_store)
    s.user_options = {"host": "n9"}
    with pytest.raises(Exception, match="n9"):
        await s.create_certs()
    assert not list(Path(ca_store[0]).glob("user-*"))


class Uploads:
    """Stands in for the SFTP side of the spawner: what went where."""

    def __init__(self):
        self.put, self.dropped = [], []

    def put_certs(self, target, certs_dir, files):
        self.put.append((target.host, target.username, certs_dir, files))
        return f"/home/{target.username}/{certs_dir}"

    def drop_certs(self, target, certs_dir):
        self.dropped.append((target.host, certs_dir))


@pytest.fixture
def uploads(monkeypatch):
    u = Uploads()
    monkeypatch.setattr(RemoteSingularitySpawner, "_put_certs", lambda self, *a: u.put_certs(*a))
    monkeypatch.setattr(RemoteSingularitySpawner, "_drop_certs", lambda self, *a: u.drop_certs(*a))
    return u


async def test_move_certs_uploads_to_the_chosen_node_and_returns_the_paths_there(ca_store, uploads):
    s = make_spawner(ca_store, name="gpu")
    paths = await s.create_certs()
    written = {k: Path(p).read_bytes() for k, p in paths.items()}
    # Another server of alice gets its certificate meanwhile: the Hub rewrites the same files.
    other = make_spawner(ca_store, name="other")
    other.user_options = {"host": "n1"}
    assert await other.create_certs() == paths
    assert Path(paths["certfile"]).read_bytes() != written["certfile"]

    moved = await s.move_certs(paths)

    ((host, login, certs_dir, files),) = uploads.put
    assert (host, login) == ("10.0.0.2", "alice")
    assert certs_dir == f"{s._server_dir()}/certs" and certs_dir.startswith(".remote-singularity-spawner/")
    assert files == {"server.key": written["keyfile"], "server.crt": written["certfile"],
                     "ca.crt": written["cafile"]}  # fmt: skip
    home_dir = f"/home/alice/{certs_dir}"
    assert moved == {
        "keyfile": f"{home_dir}/server.key",
        "certfile": f"{home_dir}/server.crt",
        "cafile": f"{home_dir}/ca.crt",
    }
    assert s.certs_dir == home_dir
    s.pid = 7
    assert s.get_state()["certs_dir"] == home_dir, "a restarted Hub can still remove them"


async def test_an_upload_that_fails_fails_the_spawn_with_a_message(ca_store, monkeypatch):
    s = make_spawner(ca_store)
    paths = await s.create_certs()

    def refuse(*args):
        raise remote.RemoteError("cannot copy files to 10.0.0.2:x: Permission denied")

    monkeypatch.setattr(s, "_put_certs", refuse)
    with pytest.raises(Exception, match="Cannot copy the TLS certificates to n2.*Permission denied"):
        await s.move_certs(paths)
    assert s.certs_dir == ""


def reply(code, **data):
    data.setdefault("scripts_version", "v1")
    return remote.Reply(exit_code=code, data=data, stderr="the server exited" if code else "")


@pytest.mark.parametrize(
    "how",
    ["stop", "start fails", "poll finds it dead"],
)
async def test_the_certificates_go_with_the_server(ca_store, uploads, monkeypatch, how):
    s = make_spawner(ca_store)
    monkeypatch.setattr(s, "get_env", lambda: {"JUPYTERHUB_SERVICE_URL": "https://10.0.0.2:0/user/alice/"})
    await s.move_certs(await s.create_certs())
    certs_dir = s.certs_dir
    if how == "start fails":
        monkeypatch.setattr(s, "_run_script", lambda *a: reply(remote.ExitCode.SERVER_DIED))
        with pytest.raises(Exception, match="did not start"):
            await s.start()
    else:
        monkeypatch.setattr(s, "_run_script", lambda *a: reply(0, pid=99, start_time=5, port=50000))
        assert await s.start() == ("10.0.0.2", 50000)
        if how == "stop":
            monkeypatch.setattr(s, "_run_script", lambda *a: reply(0, signal="TERM"))
            await s.stop()
        else:
            monkeypatch.setattr(s, "_run_script", lambda *a: reply(remote.ExitCode.NOT_RUNNING))
            assert await s.poll() == 0
    assert uploads.dropped == [("10.0.0.2", certs_dir)]
    assert s.certs_dir == ""


async def test_without_internal_ssl_nothing_is_removed(ca_store, uploads, monkeypatch):
    s = make_spawner(ca_store, internal_ssl=False)
    monkeypatch.setattr(s, "get_env", lambda: {"JUPYTERHUB_SERVICE_URL": "http://10.0.0.2:0/user/alice/"})
    monkeypatch.setattr(s, "_run_script", lambda *a: reply(0, pid=99, start_time=5, port=50000))
    await s.start()
    monkeypatch.setattr(s, "_run_script", lambda *a: reply(0, signal="TERM"))
    await s.stop()
    assert uploads.dropped == []


async def test_the_certificates_of_a_start_the_hub_gave_up_on_go_when_it_completes(
    ca_store, uploads, monkeypatch
):
    import asyncio
    import threading

    s = make_spawner(ca_store)
    monkeypatch.setattr(s, "get_env", lambda: {"JUPYTERHUB_SERVICE_URL": "https://10.0.0.2:0/user/alice/"})
    await s.move_certs(await s.create_certs())
    certs_dir = s.certs_dir
    release = threading.Event()

    def run(target, script, args, stdin="", on_progress=None):
        if script == "start_singleuser.sh":
            release.wait(10)
            return reply(0, pid=99, start_time=5, port=50000)
        return reply(0, signal="TERM")

    monkeypatch.setattr(s, "_run_script", run)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(s.start(), timeout=0.2)
    s.clear_state()  # as the Hub does when it stops the server that did not start
    assert uploads.dropped == []
    release.set()
    for _ in range(100):
        if uploads.dropped:
            break
        await asyncio.sleep(0.05)
    assert uploads.dropped == [("10.0.0.2", certs_dir)]
