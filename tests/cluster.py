#!/usr/bin/env python3
"""Local emulated two-node HPC cluster for the remote-singularity-spawner tests.

Run as root with the Python that has JupyterHub installed (the pyenv one)::

    python tests/cluster.py up                 # build it; if already up, verify and return
    python tests/cluster.py status             # exit 0 when healthy, 1 (and the problems) otherwise
    python tests/cluster.py down [--keep-venv] # remove everything up() created

From Python (pytest fixtures, tasks.py)::

    import cluster                             # with tests/ on sys.path
    c = cluster.up()                           # -> Cluster (idempotent, fast when already up)
    cluster.node_run("rss-node1", ["hostname", "-I"], user="rss-alice").stdout
    [p for p in cluster.node_processes("rss-node2") if p["user"] == "rss-bob"]
    cluster.kill_node("rss-node1"); cluster.start_node("rss-node1")
    cluster.restart_sshd("rss-node2"); cluster.stop_sshd("rss-node2")
    cluster.untrust_ca()                       # /etc/ssh of each node as up() made it
    cluster.set_link("rss-node1", up=False); cluster.set_link("rss-node1", up=True)

What up() builds (all constants are in CONFIG):

* bridge ``rssbr0`` with 10.213.47.1/24 in the root namespace (the hub's address as the
  nodes see it); no NAT, no forwarding: the nodes reach nothing but the bridge;
* nodes ``rss-node1`` (10.213.47.11) and ``rss-node2`` (10.213.47.12): a network namespace of
  the same name, a veth pair on the bridge, and a detached init
  (``unshare --pid --mount --uts ... tini -s -- sh -c 'sshd ...; exec sleep infinity'``), so
  each node has its own PID namespace, /proc and hostname, and sshd can be restarted alone;
* a per-node sshd (keys only, own host keys, SFTP via internal-sftp) on NODE_IP:22, run from
  the node's own /etc/ssh: ``/var/lib/rss-cluster/nodes/<node>/etc-ssh`` bind-mounted over
  /etc/ssh in the node's mount namespace before sshd starts (``Node.etc_ssh``), holding
  ``sshd_config`` (``Include /etc/ssh/sshd_config.d/*.conf`` first, as Debian has it), an
  empty ``sshd_config.d/`` and copies of the host's ``moduli`` and ``ssh_config``; so
  ``invoke deploy --trust-ca`` works on a node with its default paths as on a real host.
  The host keys stay in the node's state directory, where HostKey points;
* a second sshd on every node, on NODE_IP:2222 (``CONFIG.nosftp_port``): the same host keys
  and settings but no ``Subsystem`` line, so an SFTP session there fails while commands run,
  as on a site that disabled SFTP; its own config, PidFile and log (``Node.nosftp_sshd_*``).
  restart_sshd() and stop_sshd() act on the main sshd (port 22) only;
* users rss-alice (ed25519), rss-bob (ecdsa), rss-carol (rsa 3072), rss-demo (ed25519) with
  ``~/.ssh/id_<type>``, authorized_keys and known_hosts (both nodes, by name and address, and
  as ``[name]:2222`` and ``[address]:2222`` for the sshd without sftp),
  login shell /bin/bash and Debian's start-up files;
  /etc/ssh/ssh_known_hosts is never touched; a root-owned copy of the host keys list is at
  ``/var/lib/rss-cluster/known_hosts``;
* users whose start-up files print a banner on stdout (BANNER_STDOUT) and one on stderr
  (BANNER_STDERR) for every shell sshd starts, also for ``ssh node command``, as module
  systems and welcome messages do: rss-bash (/bin/bash, ~/.bashrc at its very top, and
  ~/.bash_profile), rss-tcsh (tcsh, ~/.tcshrc and ~/.cshrc), rss-zsh (zsh, ~/.zshenv);
  ed25519 keys;
* rss-rohome (ed25519), whose home the user cannot write (a full or read-only home): it is
  root's, 0755, and holds nothing but ~/.ssh (the user's, 0700), so key logins work but
  the user can create nothing in the home itself;
* a world-readable single-user venv /opt/rss-singleuser (jupyterhub pinned to the hub's
  version, jupyter_server, jupyterlab);
* two world-readable venvs with another JupyterHub (``CONFIG.overlays``), each holding only
  its jupyterhub (pip ``--no-deps``) and a .pth file that adds /opt/rss-singleuser's
  site-packages behind it, so everything else comes from there:
  /opt/rss-singleuser-minor has the Hub's major version with another minor (Hub 6.1 ->
  the newest 6.0.x; Hub 6.0 -> 6.1.x) and runs a real server;
  /opt/rss-singleuser-major has the newest release of the previous major (Hub 6 -> 5.x);
* the singularity stand-in (tests/bin/singularity, copied to /opt/rss-cluster/bin with an
  ``apptainer`` symlink) and, made by tests/bin/make-fake-image, one image per venv whose
  %environment puts the venv's bin first on PATH: /opt/rss-cluster/images/jupyter.sif
  (/opt/rss-singleuser), jupyter-minor.sif and jupyter-major.sif (``Cluster.images``, with
  the jupyterhub version each carries in ``Cluster.image_versions``);
* root may log in to the nodes with ``/var/lib/rss-cluster/root_id_ed25519`` only (for
  ``invoke deploy``; the host's own root keys are not used), and each node has a node-wide
  directory of its own: /opt/remote-singularity-spawner is bind-mounted per node from
  ``/var/lib/rss-cluster/nodes/<node>/node-wide`` (the nodes otherwise share the host's files).

Nothing needs the node names to resolve: everything is addressed by IP.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

# --------------------------------------------------------------------------- configuration

KEY_TYPES = ("ed25519", "ecdsa", "rsa")
_KEYGEN_ARGS = {
    "ed25519": ["-t", "ed25519"],
    "ecdsa": ["-t", "ecdsa", "-b", "256"],
    "rsa": ["-t", "rsa", "-b", "3072"],
}
_SYS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MARKER_VAR = "RSS_CLUSTER_NODE"  # in the environment of every node's init: NAME:NONCE
_HELD_VAR = "RSS_CLUSTER_HELD"  # set while this process (or an ancestor) holds exclusive()
_SSHD = "/usr/sbin/sshd"
_NODE_ETC_SSH = Path("/etc/ssh")  # inside a node: its own directory, bind-mounted
_NODE_SSHD_CONFIG = _NODE_ETC_SSH / "sshd_config"  # the main sshd's config, as the node sees it
_DROP_INS = "sshd_config.d"
_HOST_ETC_SSH_COPIES = ("moduli", "ssh_config")  # the host's, copied into each node's /etc/ssh
_TOOLS = "ip unshare tini nsenter setpriv setsid ssh-keygen useradd usermod userdel".split()
# What the banner users' start-up files print for every shell, on stdout and on stderr.
BANNER_STDOUT = "Welcome to the cluster (stdout banner)"
BANNER_STDERR = "module: loaded defaults (stderr banner)"
_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class NodeSpec:
    name: str
    ip: str

    @property
    def netns(self) -> str:
        return self.name

    @property
    def veth(self) -> str:
        """Root-namespace end of the node's veth pair (the node's end is ``eth0``)."""
        return "v" + self.name


@dataclass(frozen=True)
class UserSpec:
    name: str
    key_type: str
    shell: str = "bash"  # the login shell, by name (found on the system PATH)
    banners: bool = False  # start-up files print BANNER_STDOUT and BANNER_STDERR for every shell
    read_only_home: bool = False  # the home is root's: the user can create nothing in it


@dataclass(frozen=True)
class OverlaySpec:
    """A venv with another jupyterhub than the Hub's, over the main single-user venv.

    It holds only its jupyterhub (pip --no-deps) and a .pth file adding the main venv's
    site-packages after its own, so its jupyterhub shadows the main one and the rest
    (jupyter_server, jupyterlab, the dependencies) comes from the main venv.
    """

    image: str  # the image's name: opt_dir/images/<image>.sif
    venv: Path
    step: str  # which jupyterhub, relative to the Hub's: "minor" or "major" (_overlay_requirement)
    runs_server: bool  # up() checks that its jupyterhub-singleuser runs


@dataclass(frozen=True)
class Config:
    state_dir: Path = Path("/var/lib/rss-cluster")
    opt_dir: Path = Path("/opt/rss-cluster")
    venv: Path = Path("/opt/rss-singleuser")
    lock_file: Path = Path("/run/lock/rss-cluster.lock")
    session_lock_file: Path = Path("/run/lock/rss-cluster-session.lock")
    tests_bin: Path = _HERE / "bin"
    home_root: Path = Path("/home")
    bridge: str = "rssbr0"
    hub_ip: str = "10.213.47.1"
    prefix_len: int = 24
    ssh_port: int = 22
    nosftp_port: int = 2222  # the second sshd on every node: no SFTP subsystem
    nodes: tuple[NodeSpec, ...] = (
        NodeSpec("rss-node1", "10.213.47.11"),
        NodeSpec("rss-node2", "10.213.47.12"),
    )
    users: tuple[UserSpec, ...] = (
        UserSpec("rss-alice", "ed25519"),
        UserSpec("rss-bob", "ecdsa"),
        UserSpec("rss-carol", "rsa"),
        UserSpec("rss-demo", "ed25519"),
        UserSpec("rss-bash", "ed25519", banners=True),
        UserSpec("rss-tcsh", "ed25519", shell="tcsh", banners=True),
        UserSpec("rss-zsh", "ed25519", shell="zsh", banners=True),
        UserSpec("rss-rohome", "ed25519", read_only_home=True),
    )
    user_prefix: str = "rss-"  # the harness refuses to create or delete any other account
    singleuser_extras: tuple[str, ...] = ("jupyter_server", "jupyterlab")
    main_image: str = "jupyter"  # the image of venv: opt_dir/images/jupyter.sif
    overlays: tuple[OverlaySpec, ...] = (
        OverlaySpec("jupyter-minor", Path("/opt/rss-singleuser-minor"), "minor", runs_server=True),
        OverlaySpec("jupyter-major", Path("/opt/rss-singleuser-major"), "major", runs_server=False),
    )
    sshd_timeout: float = 30.0
    node_wide_dir: Path = Path("/opt/remote-singularity-spawner")  # per node (a bind mount)

    @property
    def singularity(self) -> Path:
        return self.opt_dir / "bin" / "singularity"

    @property
    def apptainer(self) -> Path:
        return self.opt_dir / "bin" / "apptainer"

    @property
    def image(self) -> Path:
        return self.image_file(self.main_image)

    def image_file(self, name: str) -> Path:
        return self.opt_dir / "images" / f"{name}.sif"

    @property
    def image_venvs(self) -> dict[str, Path]:
        """Each image's name and the venv its PATH puts first, the main image first."""
        return {self.main_image: self.venv, **{o.image: o.venv for o in self.overlays}}

    @property
    def venvs(self) -> tuple[Path, ...]:
        return tuple(self.image_venvs.values())

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def users_file(self) -> Path:
        return self.state_dir / "users.json"

    def node_dir(self, node: NodeSpec) -> Path:
        return self.state_dir / "nodes" / node.name

    @property
    def root_key(self) -> Path:
        return self.state_dir / "root_id_ed25519"

    @property
    def root_authorized_keys(self) -> Path:
        return self.state_dir / "root_authorized_keys"

    def node_wide_source(self, node: NodeSpec) -> Path:
        """The host directory each node sees at node_wide_dir."""
        return self.node_dir(node) / "node-wide"

    def etc_ssh_source(self, node: NodeSpec) -> Path:
        """The host directory each node sees at /etc/ssh."""
        return self.node_dir(node) / "etc-ssh"


CONFIG = Config()

# --------------------------------------------------------------------------- public types


class ClusterError(RuntimeError):
    """The cluster could not be built, inspected or driven; the message says why."""


class NodeCommandError(subprocess.CalledProcessError):
    """node_run(check=True) failed; str() includes the command's stderr."""

    def __str__(self) -> str:
        err = (self.stderr or "").strip()
        return super().__str__() + (f"\nstderr:\n{err[-2000:]}" if err else "")


@dataclass(frozen=True)
class Node:
    name: str
    ip: str
    netns: str
    init_pid: int | None  # host PID of the node's PID 1 (tini); None when the node is down
    sshd_config: Path  # as the host sees it (the node sees /etc/ssh/sshd_config)
    sshd_log: Path
    sshd_pid_file: Path  # holds sshd's PID *inside* the node's PID namespace
    console_log: Path  # stdout/stderr of the node's init
    host_keys: tuple[Path, ...]  # private keys; the public key is beside each, + ".pub"
    nosftp_port: int  # the second sshd, without an SFTP subsystem
    nosftp_sshd_config: Path
    nosftp_sshd_log: Path
    nosftp_sshd_pid_file: Path  # a PID inside the node's PID namespace
    etc_ssh: Path  # the host directory the node sees as /etc/ssh (sshd_config, sshd_config.d/)


@dataclass(frozen=True)
class User:
    name: str
    key_type: str
    private_key: Path
    public_key: Path
    home: Path
    uid: int
    gid: int
    shell: str = "/bin/bash"


@dataclass(frozen=True)
class Cluster:
    nodes: tuple[Node, ...]
    users: tuple[User, ...]
    hub_ip: str
    singularity: Path
    apptainer: Path
    image: Path  # images[CONFIG.main_image]: the Hub's own jupyterhub
    images: dict[str, Path]  # by name: "jupyter", "jupyter-minor", "jupyter-major"
    image_versions: dict[str, str]  # the jupyterhub version each image runs ("" if not installed)
    venv: Path
    known_hosts: Path  # root-owned, all nodes' host keys (name,ip keytype key; [name]:2222,[ip]:2222 ...)
    state_dir: Path
    root_key: Path = CONFIG.root_key  # root's login key for the nodes (invoke deploy)
    node_wide_dir: Path = CONFIG.node_wide_dir  # a different directory on each node

    def node_wide_source(self, name: str) -> Path:
        """Where the host sees the node's node_wide_dir."""
        return CONFIG.node_wide_source(_node_spec(name))

    @property
    def image_minor(self) -> Path:
        """The Hub's major version, another minor: a server starts (with a warning)."""
        return self.images["jupyter-minor"]

    @property
    def image_major(self) -> Path:
        """The previous major version of JupyterHub: the spawner refuses it."""
        return self.images["jupyter-major"]

    def node(self, name: str) -> Node:
        return _pick(self.nodes, name)

    def user(self, name: str) -> User:
        return _pick(self.users, name)


NodeRef = str | NodeSpec | Node
UserRef = UserSpec | tuple[str, str]
_T = TypeVar("_T", Node, User)


def _pick(items: Iterable[_T], name: str) -> _T:
    for item in items:
        if item.name == name:
            return item
    raise KeyError(name)


# --------------------------------------------------------------------------- small helpers


def _log(msg: str) -> None:
    print(f"rss-cluster: {msg}", file=sys.stderr, flush=True)


def _tool_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYENV", "VIRTUAL_ENV"))}
    env.update(PATH=_SYS_PATH, LANG="C.UTF-8")
    return env


def _run(
    cmd: Sequence[str | Path], *, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [str(c) for c in cmd]
    stdin = None if input is not None else subprocess.DEVNULL
    proc = subprocess.run(argv, input=input, stdin=stdin, capture_output=True, text=True, env=_tool_env())
    if check and proc.returncode != 0:
        raise ClusterError(
            f"command failed (exit {proc.returncode}): {shlex.join(argv)}\n{proc.stderr.strip()}"
        )
    return proc


def _wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def _write(path: Path, text: str, mode: int, owner: pwd.struct_passwd | None = None) -> None:
    path.write_text(text)
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, owner.pw_uid, owner.pw_gid)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Serialize up/down/... between processes (pytest-xdist workers, a demo, the CLI)."""
    CONFIG.lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(CONFIG.lock_file, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _require_root() -> None:
    if os.geteuid() != 0:
        raise ClusterError("the test cluster must be managed as root")


def _preflight() -> None:
    _require_root()
    missing = [t for t in _TOOLS if shutil.which(t, path=_SYS_PATH) is None]
    missing += [p for p in (_SSHD, "/usr/bin/python3") if not os.access(p, os.X_OK)]
    missing += [u.shell for u in CONFIG.users if _shell_path(u) is None]
    if missing:
        raise ClusterError(f"missing tools: {', '.join(missing)} (.ci/setup installs them)")
    _stand_in_files()
    _hub_version()


# --------------------------------------------------------------------------- processes


def _read_proc(pid: int, name: str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return None


def _host_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _alive(pid: int) -> bool:
    """True if PID exists and is not a zombie (kill -0 succeeds on zombies)."""
    stat = _read_proc(pid, "stat")
    return stat is not None and stat.rsplit(b")", 1)[1].split()[0] != b"Z"


def _has_env(pid: int, prefix: bytes) -> bool:
    environ = _read_proc(pid, "environ") or b""
    return any(var.startswith(prefix) for var in environ.split(b"\0"))


def _marker(node: NodeSpec, nonce: str = "") -> bytes:
    return f"{_MARKER_VAR}={node.name}:{nonce}".encode()


def _marked_pids(node: NodeSpec, nonce: str = "") -> list[int]:
    """Host PIDs of the launcher, init and anything else that inherited the node's marker."""
    prefix = _marker(node, nonce)
    return [pid for pid in _host_pids() if pid != os.getpid() and _has_env(pid, prefix)]


def _is_ns_init(pid: int) -> bool:
    """PID is 1 in a child PID namespace (status NSpid: HOSTPID 1)."""
    status = (_read_proc(pid, "status") or b"").decode(errors="replace")
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            ids = line.split()[1:]
            return len(ids) >= 2 and ids[-1] == "1"
    return False


def _netns_pids(netns: str) -> list[int]:
    """Host PIDs whose network namespace is the named one (leftovers hold it alive)."""
    try:
        st = os.stat(f"/run/netns/{netns}")
    except OSError:
        return []
    found = []
    for pid in _host_pids():
        with contextlib.suppress(OSError):
            ns = os.stat(f"/proc/{pid}/ns/net")
            if (ns.st_dev, ns.st_ino) == (st.st_dev, st.st_ino):
                found.append(pid)
    return found


def _kill_and_wait(pids: Iterable[int], timeout: float = 10.0) -> None:
    pids = [p for p in set(pids) if p != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if not _wait_for(lambda: not any(_alive(p) for p in pids), timeout):
        raise ClusterError(f"processes survived SIGKILL: {[p for p in pids if _alive(p)]}")


def _uid_pids(uid: int) -> list[int]:
    found = []
    for pid in _host_pids():
        status = (_read_proc(pid, "status") or b"").decode(errors="replace")
        for line in status.splitlines():
            if line.startswith("Uid:") and str(uid) in line.split()[1:3]:
                found.append(pid)
    return found


# --------------------------------------------------------------------------- network


def _ip_json(*args: str) -> list[dict[str, Any]]:
    proc = _run(["ip", "-j", *args], check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    return json.loads(proc.stdout)


def _bridge_ok() -> bool:
    links = _ip_json("addr", "show", "dev", CONFIG.bridge)
    if not links or "UP" not in links[0].get("flags", []):
        return False
    return any(
        a.get("local") == CONFIG.hub_ip and a.get("prefixlen") == CONFIG.prefix_len
        for a in links[0]["addr_info"]
    )


def _ensure_bridge() -> None:
    if _bridge_ok():
        return
    if not _ip_json("link", "show", "dev", CONFIG.bridge):
        _run(["ip", "link", "add", CONFIG.bridge, "type", "bridge"])
    _run(["ip", "addr", "replace", f"{CONFIG.hub_ip}/{CONFIG.prefix_len}", "dev", CONFIG.bridge])
    _run(["ip", "link", "set", CONFIG.bridge, "up"])


def _remove_bridge() -> None:
    if _ip_json("link", "show", "dev", CONFIG.bridge):
        _run(["ip", "link", "del", CONFIG.bridge])


def _node_net_ok(node: NodeSpec) -> bool:
    if not Path("/run/netns", node.netns).exists():
        return False
    host = _ip_json("link", "show", "dev", node.veth)
    inner = _ip_json("-n", node.netns, "addr", "show", "dev", "eth0")
    if not host or not inner:
        return False
    host_ok = host[0].get("master") == CONFIG.bridge and "UP" in host[0].get("flags", [])
    paired = host[0].get("link_index") == inner[0].get("ifindex")
    addr_ok = any(
        a.get("local") == node.ip and a.get("prefixlen") == CONFIG.prefix_len for a in inner[0]["addr_info"]
    )
    routes = _ip_json("-n", node.netns, "route", "show", "default")
    route_ok = any(r.get("gateway") == CONFIG.hub_ip for r in routes)
    return host_ok and paired and addr_ok and route_ok and "UP" in inner[0].get("flags", [])


def _node_mac(node: NodeSpec) -> str:
    """The node's eth0 keeps one MAC address across restarts, as a host's network card does.

    A new random one per restart left the Hub host's ARP entry pointing at the old address:
    until the entry expired (up to a minute), nothing reached the restarted node.
    """
    octets = [int(o) for o in node.ip.split(".")]
    return "02:72:73:" + ":".join(f"{o:02x}" for o in octets[1:])


def _create_node_net(node: NodeSpec) -> None:
    ns = ["ip", "-n", node.netns]
    _run(["ip", "netns", "add", node.netns])
    _run(["ip", "link", "add", node.veth, "type", "veth",
          "peer", "name", "eth0", "address", _node_mac(node), "netns", node.netns])  # fmt: skip
    _run(["ip", "link", "set", node.veth, "master", CONFIG.bridge])
    _run(["ip", "link", "set", node.veth, "up"])
    _run([*ns, "link", "set", "lo", "up"])
    _run([*ns, "addr", "add", f"{node.ip}/{CONFIG.prefix_len}", "dev", "eth0"])
    _run([*ns, "link", "set", "eth0", "up"])
    _run([*ns, "route", "add", "default", "via", CONFIG.hub_ip])
    _run(["ip", "neigh", "flush", "to", node.ip], check=False)  # a node made by an older cluster.py


def _teardown_node(node: NodeSpec) -> None:
    """Kill everything of the node (even from a killed earlier run), drop its veth and netns."""
    _kill_and_wait(_marked_pids(node) + _netns_pids(node.netns))
    if _ip_json("link", "show", "dev", node.veth):
        _run(["ip", "link", "del", node.veth])  # deletes both ends, wherever the peer lives
    ns_file = Path("/run/netns", node.netns)
    if ns_file.exists():
        _run(["ip", "netns", "del", node.netns], check=False)
        ns_file.unlink(missing_ok=True)  # a stale file that was no longer a mount
    d = CONFIG.node_dir(node)
    for name in ("init.json", "sshd.pid", "nosftp_sshd.pid"):
        (d / name).unlink(missing_ok=True)


# --------------------------------------------------------------------------- sshd on a node


def _host_key_paths(node: NodeSpec) -> tuple[Path, ...]:
    return tuple(CONFIG.node_dir(node) / f"ssh_host_{t}_key" for t in KEY_TYPES)


def _sshd_paths(node: NodeSpec, sftp: bool = True) -> tuple[Path, Path, Path]:
    """Config (as the host sees it), log and PID file of the main sshd, or (sftp=False) of the one
    without SFTP."""
    d = CONFIG.node_dir(node)
    if not sftp:
        return d / "nosftp_sshd_config", d / "nosftp_sshd.log", d / "nosftp_sshd.pid"
    return CONFIG.etc_ssh_source(node) / "sshd_config", d / "sshd.log", d / "sshd.pid"


def _node_sshd_config(node: NodeSpec, sftp: bool = True) -> Path:
    """The config of the main sshd (or, sftp=False, the one without SFTP) as the node sees it."""
    return _NODE_SSHD_CONFIG if sftp else _sshd_paths(node, sftp=False)[0]


def _port(sftp: bool) -> int:
    return CONFIG.ssh_port if sftp else CONFIG.nosftp_port


def _ssh_keygen(path: Path, key_type: str, comment: str) -> None:
    path.unlink(missing_ok=True)
    Path(f"{path}.pub").unlink(missing_ok=True)
    _run(["ssh-keygen", "-q", *_KEYGEN_ARGS[key_type], "-N", "", "-C", comment, "-f", path])


def _ensure_host_keys(node: NodeSpec) -> None:
    d = CONFIG.node_dir(node)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    for key_type, path in zip(KEY_TYPES, _host_key_paths(node), strict=True):
        if not (path.exists() and Path(f"{path}.pub").exists()):
            _ssh_keygen(path, key_type, f"root@{node.name}")
        os.chmod(path, 0o600)


def _sshd_config_text(node: NodeSpec, sftp: bool = True) -> str:
    """The main sshd's config, or (sftp=False) the same for the second port without a Subsystem."""
    _, _, pid_file = _sshd_paths(node, sftp)
    keys = "\n".join(f"HostKey {p}" for p in _host_key_paths(node))
    what = "" if sftp else " (no Subsystem: SFTP sessions fail, commands run)"
    include = f"Include {_NODE_ETC_SSH / _DROP_INS}/*.conf\n" if sftp else ""
    return f"""\
# Generated by tests/cluster.py for {node.name}{what}; rewritten whenever the node is (re)started.
{include}ListenAddress {node.ip}:{_port(sftp)}
{keys}
PidFile {pid_file}
AuthorizedKeysFile .ssh/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
StrictModes yes
MaxStartups 200:30:400
MaxSessions 200
LogLevel VERBOSE
PrintMotd no
PrintLastLog no
X11Forwarding no
# The Slurm clients' config (tests/slurm_cluster.py): not in /etc/slurm.
SetEnv SLURM_CONF={CONFIG.state_dir / "slurm" / "slurm.conf"}
{"Subsystem sftp internal-sftp" if sftp else "# no Subsystem line"}
Match User root
  AuthorizedKeysFile {CONFIG.root_authorized_keys}
"""


def _ensure_sshd_config(node: NodeSpec, sftp: bool = True) -> bool:
    """Write the node's sshd config; True if it changed (a running sshd must be restarted)."""
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    conf, _, _ = _sshd_paths(node, sftp)
    if sftp:
        _ensure_etc_ssh(node)
    changed = not _sshd_config_current(node, sftp)
    _write(conf, _sshd_config_text(node, sftp), 0o644)
    # Checked here, on the host: with the node's drop-ins, as the host sees them.
    check = conf.with_name(".sshd_config.check")
    node_drop_ins, host_drop_ins = f" {_NODE_ETC_SSH / _DROP_INS}/", f" {conf.parent / _DROP_INS}/"
    _write(check, conf.read_text().replace(node_drop_ins, host_drop_ins), 0o600)
    try:
        _run([_SSHD, "-t", "-f", check])
    finally:
        check.unlink()
    return changed


def _ensure_etc_ssh(node: NodeSpec) -> None:
    """The node's /etc/ssh, as the host sees it: a root-owned 0755 directory with sshd_config.d/
    (what tests or `invoke deploy` put there stays) and the host's files sshd and ssh read."""
    etc = CONFIG.etc_ssh_source(node)
    (etc / _DROP_INS).mkdir(parents=True, exist_ok=True)
    for d in (etc, etc / _DROP_INS):
        os.chmod(d, 0o755)
    for name in _HOST_ETC_SSH_COPIES:
        source = Path("/etc/ssh", name)
        if source.is_file() and not (etc / name).is_file():
            shutil.copyfile(source, etc / name)
            os.chmod(etc / name, 0o644)
    # Where the main config was before each node had its own /etc/ssh.
    (CONFIG.node_dir(node) / "sshd_config").unlink(missing_ok=True)


def _sshd_config_current(node: NodeSpec, sftp: bool = True) -> bool:
    conf, _, _ = _sshd_paths(node, sftp)
    with contextlib.suppress(OSError):
        return conf.read_text() == _sshd_config_text(node, sftp)
    return False


def _ensure_root_key() -> None:
    """A login key for root on the nodes, used for nothing else."""
    key = CONFIG.root_key
    if not (key.exists() and Path(f"{key}.pub").exists()):
        _ssh_keygen(key, "ed25519", "root@rss-cluster")
    os.chmod(key, 0o600)
    _write(CONFIG.root_authorized_keys, Path(f"{key}.pub").read_text(), 0o644)


def _root_key_ok() -> bool:
    pub = Path(f"{CONFIG.root_key}.pub")
    with contextlib.suppress(OSError):
        return CONFIG.root_key.is_file() and CONFIG.root_authorized_keys.read_text() == pub.read_text()
    return False


def _mounted(pid: int, mount_point: Path) -> bool:
    """Something is mounted at mount_point in the mount namespace of pid."""
    mounts = (_read_proc(pid, "mountinfo") or b"").decode(errors="replace")
    return any(line.split()[4] == str(mount_point) for line in mounts.splitlines())


def _node_wide_mounted(pid: int) -> bool:
    return _mounted(pid, CONFIG.node_wide_dir)


def _bind_in_node(pid: int, source: Path, mount_point: Path) -> bool:
    """Bind source on mount_point in the mount namespace of pid only; True if it was not there."""
    if _mounted(pid, mount_point):
        return False
    _run(["nsenter", "-t", str(pid), "-m", "--", "mount", "--bind", source, mount_point])
    return True


def _sshd_listener_configs(node: NodeSpec) -> set[str]:
    """The -f config of every sshd listener in the node (as the node sees the paths)."""
    found = set()
    for pid in _netns_pids(node.netns):
        args = (_read_proc(pid, "cmdline") or b"").decode(errors="replace").replace("\0", " ").split()
        if "[listener]" in args and "-f" in args[:-1]:
            found.add(args[args.index("-f") + 1])
    return found


def _sshd_runs_current(node: NodeSpec, sftp: bool = True) -> bool:
    """The config file is as generated, and the sshd listening runs from it."""
    running = _sshd_listener_configs(node)
    return _sshd_config_current(node, sftp) and str(_node_sshd_config(node, sftp)) in running


def _ensure_node_wide_mount(node: NodeSpec, pid: int) -> None:
    """Bind the node's own directory on node_wide_dir, inside the node's mount namespace only."""
    source = CONFIG.node_wide_source(node)
    source.mkdir(parents=True, exist_ok=True)
    os.chmod(source, 0o755)
    CONFIG.node_wide_dir.mkdir(parents=True, exist_ok=True)
    _bind_in_node(pid, source, CONFIG.node_wide_dir)


def _sshd_answers(node: NodeSpec, timeout: float = 2.0, sftp: bool = True) -> bool:
    """The main sshd (or, sftp=False, the one without SFTP) greets on its port."""
    try:
        with socket.create_connection((node.ip, _port(sftp)), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def _wait_sshd(node: NodeSpec, init_pid: int, sftp: bool = True) -> None:
    def ready() -> bool:
        if not _alive(init_pid):
            raise ClusterError(f"{node.name}: init died\n{_tail(CONFIG.node_dir(node) / 'console.log')}")
        return _sshd_answers(node, timeout=1.0, sftp=sftp)

    if not _wait_for(ready, CONFIG.sshd_timeout, interval=0.1):
        _, log, _ = _sshd_paths(node, sftp)
        console = _tail(CONFIG.node_dir(node) / "console.log", 5)
        raise ClusterError(
            f"{node.name}: sshd does not answer on {node.ip}:{_port(sftp)}\n{_tail(log)}\n{console}"
        )


# --------------------------------------------------------------------------- node lifecycle

_INIT_SCRIPT = (
    'hostname "$1" && mount --bind "$8" /etc/ssh && rm -f "$3" "$6" && /usr/sbin/sshd -f "$2" -E "$4"'
    ' || echo "rss-cluster: sshd failed to start on $1" >&2;'
    ' /usr/sbin/sshd -f "$5" -E "$7" || echo "rss-cluster: the sshd without sftp failed to start on $1" >&2;'
    " exec sleep infinity"
)


def _init_argv(node: NodeSpec) -> list[str]:
    _, log, pid_file = _sshd_paths(node)
    conf2, log2, pid_file2 = _sshd_paths(node, sftp=False)
    return [
        "setsid", "-f",  # double fork: the node is nobody's child, it outlives this process
        "ip", "netns", "exec", node.netns,
        "unshare", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "--uts",
        "--propagation", "private",
        "tini", "-s", "--",
        "/bin/sh", "-c", _INIT_SCRIPT, "rss-node-init", node.name, str(_NODE_SSHD_CONFIG), str(pid_file),
        str(log), str(conf2), str(pid_file2), str(log2), str(CONFIG.etc_ssh_source(node)),
    ]  # fmt: skip


def _find_init(node: NodeSpec, nonce: str = "") -> int | None:
    for pid in _marked_pids(node, nonce):
        if _is_ns_init(pid) and _alive(pid):
            return pid
    return None


def _launch_init(node: NodeSpec) -> int:
    nonce = uuid.uuid4().hex
    env = {"PATH": _SYS_PATH, "LANG": "C.UTF-8", _MARKER_VAR: f"{node.name}:{nonce}"}
    console = CONFIG.node_dir(node) / "console.log"
    with open(console, "ab") as out:
        subprocess.run(_init_argv(node), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                       env=env, start_new_session=True, check=True)  # fmt: skip
    pid = _wait_for(lambda: _find_init(node, nonce), timeout=10)
    if not pid:
        raise ClusterError(f"{node.name}: init did not start\n{_tail(console)}")
    (CONFIG.node_dir(node) / "init.json").write_text(json.dumps({"pid": pid, "nonce": nonce}))
    return int(pid)


def _running_init(node: NodeSpec) -> int | None:
    """Host PID of the node's live init, from init.json, else by searching /proc."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        rec = json.loads((CONFIG.node_dir(node) / "init.json").read_text())
        pid = int(rec["pid"])
        if _alive(pid) and _is_ns_init(pid) and _has_env(pid, _marker(node, rec["nonce"])):
            return pid
    return _find_init(node)


def _start_node(node: NodeSpec) -> int:
    _ensure_host_keys(node)
    _ensure_root_key()
    config_changed = _ensure_sshd_config(node)
    nosftp_changed = _ensure_sshd_config(node, sftp=False)
    if not _node_net_ok(node):
        _teardown_node(node)
        _create_node_net(node)
    pid = _running_init(node)
    if pid is None:
        _kill_and_wait(_marked_pids(node))  # a half-started launcher, if any
        _log(f"starting {node.name} ({node.ip})")
        pid = _launch_init(node)
    else:
        # A node started by an older cluster.py: no /etc/ssh of its own, sshd from another file.
        # (A new node's init binds it before its sshd starts.)
        config_changed |= _bind_in_node(pid, CONFIG.etc_ssh_source(node), _NODE_ETC_SSH)
        config_changed |= not _sshd_runs_current(node)
        if config_changed or not _sshd_answers(node):
            _log(f"restarting sshd on {node.name}")
            _restart_sshd(node, drop_sessions=False)
        if nosftp_changed or not _sshd_answers(node, sftp=False):
            _log(f"restarting the sshd without sftp on {node.name}")
            _restart_nosftp_sshd(node)
    _ensure_node_wide_mount(node, pid)
    _wait_sshd(node, pid)
    _wait_sshd(node, pid, sftp=False)
    return pid


def _node_spec(node: NodeRef) -> NodeSpec:
    name = node if isinstance(node, str) else node.name
    for spec in CONFIG.nodes:
        if spec.name == name:
            return spec
    raise ClusterError(f"unknown node {name!r}; nodes: {[n.name for n in CONFIG.nodes]}")


def _require_init(node: NodeSpec) -> int:
    pid = _running_init(node)
    if pid is None:
        raise ClusterError(f"{node.name} is not running (killed? call start_node)")
    return pid


def _read_pid_file(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _nosftp_family(node: NodeSpec, processes: list[dict[str, Any]]) -> set[int]:
    """PIDs (in the node) of the sshd without sftp and of everything it started (its sessions)."""
    conf, _, _ = _sshd_paths(node, sftp=False)
    # Its listener's title keeps its command line (sshd: /usr/sbin/sshd -f CONF ... [listener]);
    # not its PID file: a node restarted by an older cluster.py may have reused that PID.
    roots = {p["pid"] for p in processes if p["comm"] == "sshd" and str(conf) in p["args"].split()}
    family, grew = set(roots), True
    while grew:
        more = {p["pid"] for p in processes if p["ppid"] in family} - family
        family |= more
        grew = bool(more)
    return family


def _stop_sshd(node: NodeSpec, drop_sessions: bool) -> None:
    """Stop the main sshd (port 22); the one without sftp and its sessions are left alone."""
    _, _, pid_file = _sshd_paths(node)
    listener = _read_pid_file(pid_file)  # a PID inside the node's PID namespace
    processes = node_processes(node)
    spared = _nosftp_family(node, processes)
    sshds = [p for p in processes if p["comm"] == "sshd" and p["pid"] not in spared]
    victims = [p["pid"] for p in sshds if drop_sessions or p["pid"] == listener or "[listener]" in p["args"]]
    if victims:
        sig = "-KILL" if drop_sessions else "-TERM"
        node_run(node, ["kill", sig, *map(str, victims)], check=False)
    if not _wait_for(lambda: not _sshd_answers(node, timeout=0.5), timeout=10):
        raise ClusterError(f"{node.name}: sshd still answers after it was killed")
    pid_file.unlink(missing_ok=True)


def _restart_sshd(node: NodeSpec, drop_sessions: bool) -> None:
    _, log, _ = _sshd_paths(node)
    _stop_sshd(node, drop_sessions)
    node_run(node, [_SSHD, "-f", str(_NODE_SSHD_CONFIG), "-E", str(log)])
    _wait_sshd(node, _require_init(node))


def _restart_nosftp_sshd(node: NodeSpec) -> None:
    """(Re)start the listener of the sshd without sftp; its open sessions live on."""
    conf, log, pid_file = _sshd_paths(node, sftp=False)
    processes = node_processes(node)
    family = _nosftp_family(node, processes)
    listeners = [p["pid"] for p in processes if p["pid"] in family and str(conf) in p["args"].split()]
    if listeners:
        node_run(node, ["kill", "-TERM", *map(str, listeners)], check=False)
    if not _wait_for(lambda: not _sshd_answers(node, timeout=0.5, sftp=False), timeout=10):
        raise ClusterError(f"{node.name}: the sshd without sftp still answers after it was killed")
    pid_file.unlink(missing_ok=True)
    node_run(node, [_SSHD, "-f", str(conf), "-E", str(log)])
    _wait_sshd(node, _require_init(node), sftp=False)


# --------------------------------------------------------------------------- users


def _configured(spec: UserSpec) -> UserSpec:
    """The CONFIG.users entry of that name and key type (shell, banners, home), else spec."""
    for known in CONFIG.users:
        if (known.name, known.key_type) == (spec.name, spec.key_type):
            return known
    return spec


def _user_spec(user: UserRef) -> UserSpec:
    spec = user if isinstance(user, UserSpec) else _configured(UserSpec(*user))
    if not spec.name.startswith(CONFIG.user_prefix):
        raise ClusterError(f"test user names must start with {CONFIG.user_prefix!r}: {spec.name!r}")
    if spec.key_type not in KEY_TYPES:
        raise ClusterError(f"key type must be one of {KEY_TYPES}: {spec.key_type!r}")
    return spec


def _recorded_users() -> list[UserSpec]:
    try:
        return [_configured(UserSpec(n, t)) for n, t in json.loads(CONFIG.users_file.read_text())]
    except (OSError, ValueError):
        return []


def _record_user(spec: UserSpec) -> None:
    users = [u for u in _recorded_users() if u.name != spec.name] + [spec]
    CONFIG.state_dir.mkdir(parents=True, exist_ok=True)
    CONFIG.users_file.write_text(json.dumps([[u.name, u.key_type] for u in users], indent=1))


def _known_hosts_text() -> str:
    """Every node's host keys by name and address, and as [name]:port for the sshd without sftp."""
    lines = []
    for node in CONFIG.nodes:
        for key in _host_key_paths(node):
            key_type, blob = Path(f"{key}.pub").read_text().split()[:2]
            lines.append(f"{node.name},{node.ip} {key_type} {blob}")
        for key in _host_key_paths(node):
            key_type, blob = Path(f"{key}.pub").read_text().split()[:2]
            port = CONFIG.nosftp_port
            lines.append(f"[{node.name}]:{port},[{node.ip}]:{port} {key_type} {blob}")
    return "\n".join(lines) + "\n"


def _known_hosts_current() -> bool:
    with contextlib.suppress(OSError):
        return CONFIG.known_hosts.read_text() == _known_hosts_text()
    return False


def _getpwnam(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _shell_path(spec: UserSpec) -> str | None:
    """The login shell's path: /bin/bash for bash (as useradd gives), else found on the PATH."""
    if spec.shell == "bash":
        return "/bin/bash"
    if spec.shell.startswith("/"):
        return spec.shell if os.access(spec.shell, os.X_OK) else None
    return shutil.which(spec.shell, path=_SYS_PATH)


def _require_shell(spec: UserSpec) -> str:
    shell = _shell_path(spec)
    if shell is None:
        raise ClusterError(f"{spec.name}: no login shell {spec.shell!r} here (apt-get install {spec.shell})")
    return shell


def _ensure_account(spec: UserSpec) -> pwd.struct_passwd:
    shell = _require_shell(spec)
    if _getpwnam(spec.name) is None:
        _log(f"creating user {spec.name}")
        home = CONFIG.home_root / spec.name
        _run(["useradd", "-m", "-d", home, "-s", shell, "-U", spec.name])  # -U: own group
    if pwd.getpwnam(spec.name).pw_shell != shell:
        _run(["usermod", "-s", shell, spec.name])
    _run(["usermod", "-p", "*", spec.name])  # '!' (locked) makes sshd refuse even key logins
    pw = pwd.getpwnam(spec.name)
    home = Path(pw.pw_dir)
    home.mkdir(mode=0o755, exist_ok=True)
    if spec.read_only_home:
        return pw  # _ensure_user hands the home to root once ~/.ssh is in place
    os.chown(home, pw.pw_uid, pw.pw_gid)
    os.chmod(home, home.stat().st_mode & ~0o022)  # StrictModes: not group/world-writable
    return pw


# The banner users' start-up files: file name -> text, by login shell. Each prints both banners
# first thing, for every shell sshd starts (bash reads ~/.bashrc also for `ssh node command`).
_BANNER_HEADER = (
    "# Generated by tests/cluster.py: a site whose start-up files talk, as module systems and\n"
    "# welcome messages do, on stdout and on stderr, for every shell (also `ssh node command`).\n"
)
_BANNER_FILES: dict[str, dict[str, str]] = {
    "bash": {
        ".bashrc": f"""{_BANNER_HEADER}echo "{BANNER_STDOUT}"
echo "{BANNER_STDERR}" >&2
# Only then the usual "am I interactive?" check.
case $- in *i*) ;; *) return ;; esac
""",
        ".bash_profile": f"""{_BANNER_HEADER}[ -f ~/.bashrc ] && . ~/.bashrc
""",
    },
    "tcsh": {
        name: f"""{_BANNER_HEADER}echo "{BANNER_STDOUT}"
/bin/sh -c 'echo "{BANNER_STDERR}" >&2'
"""
        for name in (".tcshrc", ".cshrc")
    },
    "zsh": {
        ".zshenv": f"""{_BANNER_HEADER}echo "{BANNER_STDOUT}"
echo "{BANNER_STDERR}" >&2
""",
    },
}


def _banner_files(spec: UserSpec) -> dict[str, str]:
    if not spec.banners:
        return {}
    name = Path(spec.shell).name
    if name not in _BANNER_FILES:
        raise ClusterError(f"{spec.name}: no banner start-up files known for the shell {spec.shell!r}")
    return _BANNER_FILES[name]


def _make_home_read_only(pw: pwd.struct_passwd) -> None:
    """Only ~/.ssh stays the user's: everything else goes, the home becomes root's, 0755."""
    home = Path(pw.pw_dir)
    for entry in home.iterdir():
        if entry.name == ".ssh":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    os.chown(home, 0, 0)
    os.chmod(home, 0o755)


def _home_read_only(pw: pwd.struct_passwd) -> bool:
    home = Path(pw.pw_dir)
    try:
        st, ssh = home.stat(), (home / ".ssh").stat()
        entries = os.listdir(home)
    except OSError:
        return False
    return (
        (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o755)
        and entries == [".ssh"]
        and (ssh.st_uid, ssh.st_mode & 0o777) == (pw.pw_uid, 0o700)
    )


def _ensure_user(spec: UserSpec, known_hosts: str) -> User:
    pw = _ensure_account(spec)
    ssh_dir = Path(pw.pw_dir) / ".ssh"
    ssh_dir.mkdir(exist_ok=True)
    os.chmod(ssh_dir, 0o700)
    os.chown(ssh_dir, pw.pw_uid, pw.pw_gid)
    key = ssh_dir / f"id_{spec.key_type}"
    if not (key.exists() and Path(f"{key}.pub").exists()):
        _ssh_keygen(key, spec.key_type, f"{spec.name}@rss-cluster")
    for path, mode in ((key, 0o600), (Path(f"{key}.pub"), 0o644)):
        os.chmod(path, mode)
        os.chown(path, pw.pw_uid, pw.pw_gid)
    _write(ssh_dir / "authorized_keys", Path(f"{key}.pub").read_text(), 0o600, pw)
    _write(ssh_dir / "known_hosts", known_hosts, 0o644, pw)
    for name, text in _banner_files(spec).items():
        _write(Path(pw.pw_dir) / name, text, 0o644, pw)
    if spec.read_only_home:
        _make_home_read_only(pw)
    _record_user(spec)
    return _user_view(spec, pw)


def _user_view(spec: UserSpec, pw: pwd.struct_passwd) -> User:
    key = Path(pw.pw_dir) / ".ssh" / f"id_{spec.key_type}"
    return User(spec.name, spec.key_type, key, Path(f"{key}.pub"), Path(pw.pw_dir), pw.pw_uid, pw.pw_gid,
                pw.pw_shell)  # fmt: skip


def _user_ok(spec: UserSpec) -> bool:
    pw = _getpwnam(spec.name)
    if pw is None:
        return False
    home = Path(pw.pw_dir)
    ssh_dir = home / ".ssh"
    if not all((ssh_dir / n).is_file() for n in (f"id_{spec.key_type}", "authorized_keys", "known_hosts")):
        return False
    with contextlib.suppress(OSError):
        if (ssh_dir / "known_hosts").read_text() != CONFIG.known_hosts.read_text():
            return False  # e.g. without the entries for the sshd without sftp
    if pw.pw_shell != _shell_path(spec):
        return False
    for name, text in _banner_files(spec).items():
        with contextlib.suppress(OSError):
            if (home / name).read_text() == text:
                continue
        return False
    return _home_read_only(pw) if spec.read_only_home else True


def _remove_user(name: str) -> None:
    pw = _getpwnam(name)
    if pw is None or not name.startswith(CONFIG.user_prefix):
        return
    _log(f"removing user {name}")
    _kill_and_wait(_uid_pids(pw.pw_uid))
    home = Path(pw.pw_dir)
    if home.parent == CONFIG.home_root and home.name == name and home.is_dir():
        os.chown(home, pw.pw_uid, pw.pw_gid)  # a read-only home: userdel removes the user's own only
    proc = _run(["userdel", "--remove", name], check=False)
    if proc.returncode not in (0, 12):  # 12: home/mail spool not removed (e.g. none existed)
        raise ClusterError(f"userdel {name} failed: {proc.stderr.strip()}")
    home = Path(pw.pw_dir)
    if home.parent == CONFIG.home_root and home.name == name and home.exists():
        shutil.rmtree(home)


# --------------------------------------------------------------------------- single-user venv


def _hub_version() -> str:
    try:
        return importlib.metadata.version("jupyterhub")
    except importlib.metadata.PackageNotFoundError:
        raise ClusterError(
            f"jupyterhub is not installed in {sys.executable}: run this with the hub's Python (pyenv)"
        ) from None


def _venv_requirements() -> list[str]:
    return [f"jupyterhub=={_hub_version()}", *CONFIG.singleuser_extras]


def _venv_marker() -> Path:
    return CONFIG.venv / ".rss-cluster-requirements"


def _venv_ok() -> bool:
    marker = _venv_marker()
    current = marker.exists() and marker.read_text().split() == _venv_requirements()
    return current and (CONFIG.venv / "bin" / "jupyterhub-singleuser").exists()


def _make_world_readable(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, os.stat(dirpath).st_mode | 0o555)
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not os.path.islink(path):
                os.chmod(path, st.st_mode | 0o444 | (0o111 if st.st_mode & 0o111 else 0))
    for parent in root.parents:
        os.chmod(parent, os.stat(parent).st_mode | 0o555)


def _umask_022(argv: Sequence[str | Path]) -> list[str | Path]:
    """ARGV run with umask 022, so what it creates is readable by all."""
    return ["sh", "-c", 'umask 022 && exec "$@"', "sh", *argv]


def _pip_install(python: Path, args: Sequence[str], log_name: str, target: Path | None = None) -> None:
    """pip install ARGS with PYTHON's pip, into PYTHON's environment or TARGET's (a python)."""
    into = [] if target is None else ["--python", target]
    pip = [python, "-m", "pip", *into, "install", "--no-input", "--progress-bar", "off"]
    proc = _run(_umask_022([*pip, *args]), check=False)
    (CONFIG.state_dir / log_name).write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise ClusterError(f"pip install {' '.join(args)} failed:\n{proc.stderr.strip()[-3000:]}")


def _ensure_venv() -> None:
    if _venv_ok():
        return
    reqs = _venv_requirements()
    python = CONFIG.venv / "bin" / "python"
    if not python.exists():
        _log(f"creating {CONFIG.venv}")
        _run(["/usr/bin/python3", "-m", "venv", CONFIG.venv])
    _log(f"pip install {' '.join(reqs)} into {CONFIG.venv} (takes a minute)")
    _pip_install(python, reqs, "pip.log")
    _make_world_readable(CONFIG.venv)
    _venv_marker().write_text(" ".join(reqs) + "\n")


def _site_packages(venv: Path) -> Path | None:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    return found[0] if found else None


def _installed_jupyterhub(venv: Path) -> str:
    """The version of the jupyterhub in VENV's own site-packages; "" if there is none."""
    site = _site_packages(venv)
    if site is None:
        return ""
    for dist in importlib.metadata.distributions(name="jupyterhub", path=[str(site)]):
        return dist.version
    return ""


def _overlay_requirement(step: str, hub_version: str) -> str:
    """The jupyterhub an overlay venv gets, as a pip requirement (the newest of a series).

    "minor": the Hub's major with another minor (6.1.1 -> jupyterhub~=6.0.0, 6.0.2 -> ~=6.1.0);
    "major": the previous major (6.1.1 -> jupyterhub~=5.0, the newest 5.x).
    """
    match = re.match(r"(\d+)\.(\d+)", hub_version)
    if match is None:
        raise ClusterError(f"cannot read the Hub's jupyterhub version {hub_version!r}")
    major, minor = int(match[1]), int(match[2])
    if step == "minor":
        return f"jupyterhub~={major}.{minor - 1 if minor > 0 else minor + 1}.0"
    if step == "major" and major > 0:
        return f"jupyterhub~={major - 1}.0"
    raise ClusterError(f"no {step} step from jupyterhub {hub_version}")


def _overlay_marker_text(spec: OverlaySpec) -> str:
    """What the overlay is made of: its jupyterhub and the site-packages its .pth adds."""
    base = _site_packages(CONFIG.venv)
    return f"--no-deps {_overlay_requirement(spec.step, _hub_version())} base={base} jupyter-data=linked\n"


def _overlay_marker(spec: OverlaySpec) -> Path:
    return spec.venv / ".rss-cluster-requirements"


def _overlay_ok(spec: OverlaySpec) -> bool:
    marker = _overlay_marker(spec)
    if not (marker.exists() and (spec.venv / "bin" / "jupyterhub-singleuser").exists()):
        return False
    return marker.read_text() == _overlay_marker_text(spec)


def _overlay_check(spec: OverlaySpec, requirement: str) -> str:
    """Import the overlay's jupyterhub as a server would; its version, or ClusterError."""
    python = spec.venv / "bin" / "python"
    code = "import importlib.metadata as m, jupyterhub as j; print(m.version('jupyterhub'), j.__version__)"
    versions = _run([python, "-I", "-c", code]).stdout.split()
    wanted = requirement.removeprefix("jupyterhub~=").rsplit(".", 1)[0] + "."  # "6.0." or "5."
    if len(versions) != 2 or versions[0] != versions[1] or not versions[0].startswith(wanted):
        raise ClusterError(f"{python}: jupyterhub {' '.join(versions)} is not the {requirement} installed")
    if spec.runs_server:
        _run([spec.venv / "bin" / "jupyterhub-singleuser", "--help"])
    return versions[0]


def _ensure_overlay(spec: OverlaySpec) -> None:
    """Make SPEC's venv anew unless it is current (a few seconds: one wheel, no dependencies)."""
    if _overlay_ok(spec):
        return
    requirement = _overlay_requirement(spec.step, _hub_version())
    _log(f"making {spec.venv} with {requirement} over {CONFIG.venv}")
    shutil.rmtree(spec.venv, ignore_errors=True)
    _run(_umask_022(["/usr/bin/python3", "-m", "venv", "--without-pip", spec.venv]))
    # Before the .pth exists, so pip sees no other jupyterhub to replace.
    python = spec.venv / "bin" / "python"
    _pip_install(CONFIG.venv / "bin" / "python", ["--no-deps", requirement], f"pip-{spec.image}.log", python)
    base, site = _site_packages(CONFIG.venv), _site_packages(spec.venv)
    if base is None or site is None:
        raise ClusterError(f"no site-packages in {CONFIG.venv} or {spec.venv}")
    _write(site / "rss-singleuser.pth", f"{base}\n", 0o644)
    # Jupyter's config (which enables JupyterLab's server extension) and data (JupyterLab's
    # app and kernels) are looked up under sys.prefix: the main venv's, as in an image
    # that installed them.
    for data in ("etc/jupyter", "share/jupyter"):
        (spec.venv / data).parent.mkdir(parents=True, exist_ok=True)
        (spec.venv / data).symlink_to(CONFIG.venv / data)
    version = _overlay_check(spec, requirement)
    _make_world_readable(spec.venv)
    _overlay_marker(spec).write_text(_overlay_marker_text(spec))
    _log(f"{spec.venv}: jupyterhub {version}")


# --------------------------------------------------------------------------- singularity stand-in


def _stand_in_files() -> tuple[Path, Path]:
    files = (CONFIG.tests_bin / "singularity", CONFIG.tests_bin / "make-fake-image")
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise ClusterError(
            f"the singularity stand-in is missing: {', '.join(missing)} (tests/bin/singularity and "
            "tests/bin/make-fake-image OUTPUT KEY=VALUE... must exist before `cluster.py up`)"
        )
    return files


def _script_argv(path: Path) -> list[str]:
    """Run PATH directly if executable, else through its #! line."""
    if os.access(path, os.X_OK):
        return [str(path)]
    first = path.read_text(errors="replace").splitlines()[:1]
    if not first or not first[0].startswith("#!"):
        raise ClusterError(f"{path} is neither executable nor a #! script")
    return [*shlex.split(first[0][2:]), str(path)]


def _image_key(src: Path, maker: Path, args: Sequence[str]) -> str:
    digest = hashlib.sha256(src.read_bytes() + b"\0" + maker.read_bytes())
    digest.update("\0".join(args).encode())
    return digest.hexdigest()


def _image_args(name: str) -> list[str]:
    """make-fake-image's arguments for the image NAME: its venv's bin first on PATH."""
    return [str(CONFIG.image_file(name)), f"PATH={CONFIG.image_venvs[name]}/bin:{_SYS_PATH}"]


def _image_key_file(name: str) -> Path:
    return CONFIG.state_dir / f"image-{name}.key"


def _install_singularity() -> None:
    src, maker = _stand_in_files()
    for d in (CONFIG.opt_dir, CONFIG.singularity.parent, CONFIG.image.parent):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)
    if not CONFIG.singularity.is_file() or CONFIG.singularity.read_bytes() != src.read_bytes():
        shutil.copyfile(src, CONFIG.singularity)
    os.chmod(CONFIG.singularity, 0o755)
    if not CONFIG.apptainer.is_symlink() or os.readlink(CONFIG.apptainer) != "singularity":
        CONFIG.apptainer.unlink(missing_ok=True)
        CONFIG.apptainer.symlink_to("singularity")
    for name in CONFIG.image_venvs:
        _ensure_image(src, maker, name)


def _ensure_image(src: Path, maker: Path, name: str) -> None:
    image, args, key_file = CONFIG.image_file(name), _image_args(name), _image_key_file(name)
    key = _image_key(src, maker, args)
    if image.is_file() and key_file.exists() and key_file.read_text() == key:
        return
    _log(f"making {image}")
    image.unlink(missing_ok=True)
    _run([*_script_argv(maker), *args])
    if not image.is_file():
        raise ClusterError(f"{maker} did not create {image}")
    os.chmod(image, 0o644)
    key_file.write_text(key)


def _singularity_ok() -> bool:
    images_there = all(CONFIG.image_file(name).is_file() for name in CONFIG.image_venvs)
    if not (CONFIG.singularity.is_file() and CONFIG.apptainer.is_symlink() and images_there):
        return False
    with contextlib.suppress(ClusterError, OSError):
        src, maker = _stand_in_files()
        keys = [(_image_key_file(name).read_text(), _image_key(src, maker, _image_args(name)))
                for name in CONFIG.image_venvs]  # fmt: skip
        return CONFIG.singularity.read_bytes() == src.read_bytes() and all(now == want for now, want in keys)
    return True  # sources gone: what is installed is all there is


# --------------------------------------------------------------------------- views and checks


def _node_view(node: NodeSpec) -> Node:
    conf, log, pid_file = _sshd_paths(node)
    conf2, log2, pid_file2 = _sshd_paths(node, sftp=False)
    console = CONFIG.node_dir(node) / "console.log"
    return Node(node.name, node.ip, node.netns, _running_init(node), conf, log, pid_file, console,
                _host_key_paths(node), CONFIG.nosftp_port, conf2, log2, pid_file2,
                CONFIG.etc_ssh_source(node))  # fmt: skip


@contextlib.contextmanager
def exclusive(wait_message: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the cluster for a whole test session or benchmark.

    Two runs on one machine share the nodes, the users' homes and the Hub
    ports; the second waits here until the first is done. A process started
    by the holder (e.g. a test running ``invoke bench``) runs under its hold
    instead of waiting for it forever.
    """
    if os.environ.get(_HELD_VAR):
        yield
        return
    CONFIG.session_lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(CONFIG.session_lock_file, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if wait_message is not None:
                wait_message()
            fcntl.flock(lock, fcntl.LOCK_EX)
        os.environ[_HELD_VAR] = str(os.getpid())
        try:
            yield
        finally:
            del os.environ[_HELD_VAR]


def describe() -> Cluster:
    """The cluster as it is now, without health checks (init_pid is None for a node that is down)."""
    users = tuple(
        _user_view(spec, pw) for spec in _recorded_users() if (pw := _getpwnam(spec.name)) is not None
    )
    return Cluster(
        nodes=tuple(_node_view(n) for n in CONFIG.nodes),
        users=users,
        hub_ip=CONFIG.hub_ip,
        singularity=CONFIG.singularity,
        apptainer=CONFIG.apptainer,
        image=CONFIG.image,
        images={name: CONFIG.image_file(name) for name in CONFIG.image_venvs},
        image_versions={name: _installed_jupyterhub(venv) for name, venv in CONFIG.image_venvs.items()},
        venv=CONFIG.venv,
        known_hosts=CONFIG.known_hosts,
        state_dir=CONFIG.state_dir,
    )


def problems(users: Iterable[UserRef] | None = None) -> list[str]:
    """What is missing or broken; [] means the cluster is up and healthy."""
    found = (
        [] if _bridge_ok() else [f"bridge {CONFIG.bridge} with {CONFIG.hub_ip}/{CONFIG.prefix_len} missing"]
    )
    for node in CONFIG.nodes:
        if not _node_net_ok(node):
            found.append(f"{node.name}: network namespace / veth not set up")
        pid = _running_init(node)
        if pid is None:
            found.append(f"{node.name}: not running")
        elif not _sshd_answers(node):
            found.append(f"{node.name}: sshd does not answer on {node.ip}:{CONFIG.ssh_port}")
        elif not _mounted(pid, _NODE_ETC_SSH):
            found.append(f"{node.name}: no /etc/ssh of its own")
        elif not _sshd_runs_current(node):
            found.append(f"{node.name}: sshd runs with an outdated config")
        elif not _sshd_answers(node, sftp=False):
            found.append(
                f"{node.name}: the sshd without sftp does not answer on {node.ip}:{CONFIG.nosftp_port}"
            )
        elif not _sshd_runs_current(node, sftp=False):
            found.append(f"{node.name}: the sshd without sftp runs with an outdated config")
        elif not _node_wide_mounted(pid):
            found.append(f"{node.name}: no node-wide directory of its own at {CONFIG.node_wide_dir}")
    if not _root_key_ok():
        found.append(f"{CONFIG.root_key}: root's login key for the nodes missing")
    wanted = [_user_spec(u) for u in users] if users is not None else list(CONFIG.users)
    found += [f"user {u.name}: missing, without keys or not as configured" for u in wanted if not _user_ok(u)]
    if not _known_hosts_current():
        found.append(f"{CONFIG.known_hosts} missing or outdated")
    with contextlib.suppress(ClusterError):  # no jupyterhub here: cannot judge the venv
        if not _venv_ok():
            found.append(f"{CONFIG.venv}: single-user environment missing or outdated")
        found += [
            f"{o.venv}: single-user environment ({_overlay_requirement(o.step, _hub_version())}) "
            "missing or outdated"
            for o in CONFIG.overlays
            if not _overlay_ok(o)
        ]
    if not _singularity_ok():
        images = ", ".join(CONFIG.image_file(name).name for name in CONFIG.image_venvs)
        found.append(f"{CONFIG.singularity} / {CONFIG.image.parent}/{{{images}}}: missing or outdated")
    return found


# --------------------------------------------------------------------------- public API


def up(users: Iterable[UserRef] | None = None) -> Cluster:
    """Build the cluster, or verify it and return when it is up already (idempotent).

    users: (name, key_type) pairs or UserSpec to ensure; None means CONFIG.users.
    """
    _preflight()
    wanted = [_user_spec(u) for u in users] if users is not None else list(CONFIG.users)
    with _locked():
        if problems(wanted):
            _build(wanted)
            left = problems(wanted)
            if left:
                raise ClusterError("cluster still unhealthy after up():\n  " + "\n  ".join(left))
    return describe()


def _build(users: Sequence[UserSpec]) -> None:
    CONFIG.state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(CONFIG.state_dir, 0o755)
    for node in CONFIG.nodes:
        _ensure_host_keys(node)
    known_hosts = _known_hosts_text()
    _write(CONFIG.known_hosts, known_hosts, 0o644)
    wanted = {u.name: u for u in users}
    for spec in [*(u for u in _recorded_users() if u.name not in wanted), *users]:
        _ensure_user(spec, known_hosts)  # refreshes earlier users' known_hosts too
    _install_singularity()
    _ensure_bridge()
    for node in CONFIG.nodes:
        _start_node(node)
    _ensure_venv()
    for overlay in CONFIG.overlays:
        _ensure_overlay(overlay)


def down(keep_venv: bool = False) -> None:
    """Remove everything up() created; safe when nothing or only part of it exists.

    keep_venv: leave the single-user venvs (/opt/rss-singleuser: its pip install takes a
    minute; and the overlays beside it) for a quick re-up.
    """
    _require_root()
    with _locked():
        for node in CONFIG.nodes:
            _teardown_node(node)
        _remove_bridge()
        names = {u.name for u in _recorded_users()} | {u.name for u in CONFIG.users}
        for name in sorted(names):
            _remove_user(name)
        doomed = [CONFIG.opt_dir, CONFIG.state_dir] + ([] if keep_venv else list(CONFIG.venvs))
        for path in doomed:
            shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            CONFIG.node_wide_dir.rmdir()  # the host's mount point, if empty
        CONFIG.lock_file.unlink(missing_ok=True)


def status() -> Cluster | None:
    """The cluster if it is up and healthy, else None (see problems() for why)."""
    return describe() if not problems() else None


def add_user(name: str, key_type: str) -> User:
    """Create (or refresh) a test user with a key of key_type; down() removes it."""
    _require_root()
    spec = _user_spec((name, key_type))
    with _locked():
        for node in CONFIG.nodes:
            _ensure_host_keys(node)
        return _ensure_user(spec, _known_hosts_text())


def add_users(names: Iterable[str], key_type: str = "ed25519") -> list[User]:
    """Create (or refresh) many test users at once, e.g. the scale benchmark's; down() removes them."""
    _require_root()
    specs = [_user_spec((name, key_type)) for name in names]
    with _locked():
        for node in CONFIG.nodes:
            _ensure_host_keys(node)
        known_hosts = _known_hosts_text()
        return [_ensure_user(spec, known_hosts) for spec in specs]


def remove_users(names: Iterable[str]) -> None:
    """Delete test users (accounts, homes, processes) and forget them; absent ones are skipped."""
    _require_root()
    gone = {_user_spec((name, KEY_TYPES[0])).name for name in names}
    with _locked():
        for name in sorted(gone):
            _remove_user(name)
        kept = [u for u in _recorded_users() if u.name not in gone]
        if CONFIG.users_file.exists():
            CONFIG.users_file.write_text(json.dumps([[u.name, u.key_type] for u in kept], indent=1))


def remove_user(name: str) -> None:
    """Delete a test user (account, home, processes) and forget it; no-op if it does not exist."""
    remove_users([name])


def start_node(node: NodeRef) -> Node:
    """Bring a node (back) up: network, init, sshd; no-op if it is running."""
    _require_root()
    spec = _node_spec(node)
    with _locked():
        _ensure_bridge()
        _start_node(spec)
    return _node_view(spec)


def kill_node(node: NodeRef, unplug: bool = False) -> None:
    """SIGKILL the node's init: every process on it dies, like a crash.

    Connections to it are then refused; with unplug=True its link is also taken down, so they
    time out / find no route instead, like a powered-off host. start_node() undoes both.
    """
    _require_root()
    spec = _node_spec(node)
    pid = _running_init(spec)
    _kill_and_wait(([pid] if pid else []) + _marked_pids(spec))
    (CONFIG.node_dir(spec) / "init.json").unlink(missing_ok=True)
    if unplug and _ip_json("link", "show", "dev", spec.veth):
        _run(["ip", "link", "set", spec.veth, "down"])


def restart_sshd(node: NodeRef, drop_sessions: bool = False) -> None:
    """Stop the node's sshd and start a new one; every other process stays alive.

    drop_sessions=False: only the listener is stopped (SIGTERM), as in `systemctl restart ssh`:
    existing SSH sessions keep running. drop_sessions=True: all sshd processes are SIGKILLed,
    so every open connection breaks (a flaky link), while the commands they ran live on.
    """
    _require_root()
    _restart_sshd(_node_spec(node), drop_sessions)


def untrust_ca() -> None:
    """Put every node's /etc/ssh back as up() makes it, and restart its sshd (open sessions live on).

    What `invoke deploy --trust-ca` added (remote-singularity-spawner_ca.pub and its drop-in in
    sshd_config.d/) goes, and so does anything else a test put there or changed: after it, the
    nodes trust no user CA.
    """
    _require_root()
    with _locked():
        for node in CONFIG.nodes:
            etc = CONFIG.etc_ssh_source(node)
            keep = {etc / "sshd_config", etc / _DROP_INS, *(etc / name for name in _HOST_ETC_SSH_COPIES)}
            for entry in [*etc.glob("*"), *etc.glob(f"{_DROP_INS}/*"), *etc.glob(".*")]:
                if entry in keep:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            _ensure_sshd_config(node)
            if _running_init(node) is not None:
                _restart_sshd(node, drop_sessions=False)


def set_link(node: NodeRef, up: bool) -> None:
    """Take the node's network link down or bring it back; its processes live on.

    up=False: the node goes silent, as with a pulled cable: connections to it time out or
    find no route, open ones hang. set_link(node, True) or start_node() plugs it back in.
    """
    _require_root()
    _run(["ip", "link", "set", _node_spec(node).veth, "up" if up else "down"])


def stop_sshd(node: NodeRef, drop_sessions: bool = True) -> None:
    """Stop the node's sshd and leave it down; every other process stays alive.

    Logins are refused until start_node() (or restart_sshd()) starts it again: an sshd
    outage while the servers keep running. drop_sessions as in restart_sshd().
    """
    _require_root()
    _stop_sshd(_node_spec(node), drop_sessions)


def node_run(
    node: NodeRef,
    argv: Sequence[str | Path],
    user: str | None = None,
    check: bool = True,
    input: str | None = None,
    timeout: float | None = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Run argv inside the node (its network, PID, mount and UTS namespaces), text mode.

    As root in / by default; as user (setpriv, with the user's groups and a login-like clean
    environment: HOME, USER, SHELL, PATH) in the user's home otherwise. check=True raises
    NodeCommandError on a non-zero exit.
    """
    spec = _node_spec(node)
    cmd = ["nsenter", "-t", str(_require_init(spec)), "-n", "-p", "-m", "-u"]
    if user is None:
        cmd += ["--wdns=/", "--"]
    else:
        pw = _getpwnam(user)
        if pw is None:
            raise ClusterError(f"no such user: {user!r}")
        cmd += [f"--wdns={pw.pw_dir}", "--", "setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
                "--init-groups", "--reset-env", "--"]  # fmt: skip
    cmd += [str(a) for a in argv]
    env = {"PATH": _SYS_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
    stdin = None if input is not None else subprocess.DEVNULL
    proc = subprocess.run(
        cmd, input=input, stdin=stdin, capture_output=True, text=True, env=env, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise NodeCommandError(proc.returncode, cmd, proc.stdout, proc.stderr)
    return proc


_PS_SCRIPT = r"""
import json, os, pwd
me, out = os.getpid(), []
for d in os.listdir("/proc"):
    if not d.isdigit() or int(d) == me:
        continue
    try:
        stat = open(f"/proc/{d}/stat", "rb").read().decode(errors="replace")
        cmd = open(f"/proc/{d}/cmdline", "rb").read()
        status = open(f"/proc/{d}/status", "rb").read().decode(errors="replace")
    except OSError:
        continue
    comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
    uid = int(next(l for l in status.splitlines() if l.startswith("Uid:")).split()[2])
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    args = " ".join(a.decode(errors="replace") for a in cmd.rstrip(b"\0").split(b"\0"))
    out.append(dict(pid=int(d), ppid=int(rest[1]), pgid=int(rest[2]), user=user, uid=uid,
                    comm=comm, state=rest[0], args=args or f"[{comm}]"))
print(json.dumps(sorted(out, key=lambda p: p["pid"])))
"""


def node_processes(node: NodeRef) -> list[dict[str, Any]]:
    """Processes on the node, as seen from inside it (node-local PIDs).

    Each: pid, ppid, pgid, user, uid (effective), comm, state (R/S/Z...), args. The helper that
    reads them is left out.
    """
    return json.loads(node_run(node, ["/usr/bin/python3", "-I", "-c", _PS_SCRIPT]).stdout)


# --------------------------------------------------------------------------- CLI


def _summary(c: Cluster) -> str:
    lines = [f"hub address      {c.hub_ip} (bridge {CONFIG.bridge})"]
    lines += [f"node {n.name:<11} {n.ip:<14} init pid {n.init_pid}  log {n.sshd_log}" for n in c.nodes]
    lines += [f"  {n.name} no sftp on port {n.nosftp_port}  log {n.nosftp_sshd_log}" for n in c.nodes]
    lines += [f"user {u.name:<11} {u.key_type:<8} {u.private_key}  {u.shell}" for u in c.users]
    lines += [
        f"singularity      {c.singularity} (+ {c.apptainer.name})",
        *(
            f"image            {path}  (jupyterhub {c.image_versions.get(name) or 'not installed'}"
            f", {CONFIG.image_venvs[name]})"
            for name, path in c.images.items()
        ),
        f"single-user venv {c.venv}",
        f"known_hosts      {c.known_hosts}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cluster.py", description="Local emulated HPC cluster for the tests."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="build the cluster (verify it when it is up already)")
    down_parser = sub.add_parser("down", help="remove everything up() created")
    down_parser.add_argument(
        "--keep-venv", action="store_true", help=f"keep {', '.join(map(str, CONFIG.venvs))}"
    )
    sub.add_parser("status", help="exit 0 if the cluster is up and healthy")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            print(_summary(up()))
        elif args.command == "down":
            down(keep_venv=args.keep_venv)
        else:
            found = problems()
            print(_summary(describe()) if not found else "not up:\n  " + "\n  ".join(found))
            return 1 if found else 0
    except ClusterError as exc:
        print(f"cluster.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
