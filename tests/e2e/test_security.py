"""End to end: secrets, hostile input, host keys and identities.

What an attacker on the hub or a node, or a user typing hostile values into
the form or the REST API, could try, checked on the real Hub and nodes:

- the API token is in no process's argv (sampled on the hub host and inside
  each node while servers start, are polled and stop), in no log, and in no
  file anyone but the user can read; what the scripts create is 0600/0700;
- each hostile value is refused with a message naming it, or (where it is
  legal) passed literally; a canary file that every value tries to create
  proves nothing ran on the hub or on a node;
- an unknown or changed host key, a missing key, a key with a passphrase and
  a key the node does not accept are each refused with a message that says
  what to fix, and nothing falls back to another way in.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import cluster as cluster_mod
import pytest
import requests
from conftest import USERS, login, servers_of, spawn_failure, wait_until
from test_spawn import node_token

NODE1, NODE2 = "rss-node1", "rss-node2"
NODES = (NODE1, NODE2)
CANARY = "/tmp/rss-canary-sec"
# Hub usernames cannot hold '/': those values create the canary in the working directory.
REL_CANARY = "rss-canary-sec"

# --- helpers ------------------------------------------------------------------------------

# Reads every process's argv from /proc every 20 ms until the file named by argv[1] exists,
# then prints how many snapshots it took and every distinct argv it saw.
_SAMPLER = r"""
import json, os, sys, time
stop, me, seen, snapshots = sys.argv[1], os.getpid(), set(), 0
while True:
    done = os.path.exists(stop)
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != me:
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    seen.add(f.read().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
    snapshots += 1
    if done:
        break
    time.sleep(0.02)
print(json.dumps({"snapshots": snapshots, "argvs": sorted(seen)}))
"""


class ArgvSampler:
    """Sample every argv on the hub host and, from inside, on each node, in the background."""

    def __init__(self, tmp_path: Path):
        self.stop_file = tmp_path / "sampler.stop"
        self.results: dict[str, dict] = {}
        self._threads = [threading.Thread(target=self._sample, args=(where,)) for where in ("hub", *NODES)]

    def _sample(self, where: str) -> None:
        argv = ["/usr/bin/python3", "-I", "-c", _SAMPLER, str(self.stop_file)]
        if where == "hub":
            out = subprocess.run(argv, capture_output=True, text=True, timeout=900).stdout
        else:
            out = cluster_mod.node_run(where, argv, timeout=900).stdout
        self.results[where] = json.loads(out)

    def __enter__(self) -> ArgvSampler:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_file.touch()
        for t in self._threads:
            t.join()


def sshd_log(node: str) -> str:
    return cluster_mod.describe().node(node).sshd_log.read_text(errors="replace")


_AUTH_RE = re.compile(r"^(?:Accepted \w+ for|Failed \w+ for|Invalid user|Postponed \w+ for) .*$", re.M)


def auth_attempts(offsets: dict[str, int]) -> list[str]:
    """sshd's lines about logins attempted since *offsets* (a probe of sshd is not one)."""
    return [line for n in NODES for line in _AUTH_RE.findall(sshd_log(n)[offsets[n] :])]


def log_offsets() -> dict[str, int]:
    return {n: len(sshd_log(n)) for n in NODES}


def canaries() -> list[str]:
    """Canary files on the hub host and, looked for from inside, on each node."""
    # Where a command run by the Hub (cwd: its workdir under pytest's tmp) or by a login on a
    # node (cwd: the home) would put them.
    look = f"ls -d {CANARY}* /home/*/{REL_CANARY}* /root/{REL_CANARY}* /{REL_CANARY}* 2>/dev/null"
    in_tmp = f"find /tmp/pytest-of-root -maxdepth 4 -name '{REL_CANARY}*'"
    found = [f"hub:{p}" for p in subprocess.run(
        ["sh", "-c", f"{look}; {in_tmp}; true"], capture_output=True, text=True).stdout.split()]  # fmt: skip
    for n in NODES:
        found += [f"{n}:{p}" for p in cluster_mod.node_run(n, ["sh", "-c", look], check=False).stdout.split()]
    return found


@pytest.fixture
def no_canary():
    """Fail if any canary exists after the test (or already before it)."""
    assert canaries() == [], "a canary from an earlier run: remove it first"
    yield
    assert canaries() == [], "a hostile value was executed"


def api_path(user: str, server: str = "") -> str:
    """The REST path of a server, with every character that means something in a URL escaped."""
    user = quote(user, safe="")
    server = quote(server, safe="")
    return f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"


def processes_of_test_users() -> set[tuple[str, int, str]]:
    """The test users' processes on the nodes but sshd's: (node, pid, argv)."""
    return {
        (n, p["pid"], p["args"])
        for n in NODES
        for p in cluster_mod.node_processes(n)
        if p["user"] in USERS and not p["comm"].startswith("sshd")
    }


def api_failure(hub, user: str, server: str, options) -> str:
    """Spawn through the REST API, expecting a refusal; its message."""
    r = hub.api("POST", api_path(user, server), data=json.dumps(options))
    if r.status_code == 202:  # the failure arrives on the progress stream
        r = hub.api("GET", api_path(user, server) + "/progress", stream=True, timeout=120)
        events = [
            json.loads(line[5:]) for line in r.iter_lines(decode_unicode=True) if line.startswith("data:")
        ]
        assert events and events[-1].get("failed"), events
        return events[-1]["message"]
    assert r.status_code >= 400, r.text
    return r.json()["message"]


def open_form(hub, user: str) -> tuple[requests.Session, str]:
    """Log in and load the spawn form as a browser does; the session and the form's action URL.

    Rendering the form logs in to the nodes as the user (the node status beside
    each node): that is the form's own doing, before any value is typed in.
    """
    session = login(hub, user)
    page = session.get(f"{hub.url}/hub/spawn/{user}", timeout=30).text
    return session, html.unescape(re.search(r'action="(/hub/spawn/[^"]+)"', page).group(1))


def submit_form(hub, user: str, session: requests.Session, action: str, fields: dict) -> str:
    """Submit the spawn form, expecting a refusal; the page's message."""
    r = session.post(f"{hub.url}{action}", data=fields, timeout=120)
    if "/spawn-pending/" in r.url:
        return hub.progress_events(user)[-1]["message"]
    return html.unescape(r.text)


# --- hostile input ------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A spawn request with a hostile value, and what its refusal must say."""

    options: dict  # user_options (REST API) or the form's fields
    named: str  # text the message must contain: the value, as the user sent it
    user: str = "rss-bob"
    server: str = ""
    via: str = "api"


def Form(fields: dict, named: str) -> Case:  # noqa: N802 (reads like the Case above)
    return Case(fields, named, user="rss-carol", via="form")


TOUCH = f"touch {CANARY}"
LONG_HOST = "n" * 100_000
LONG_PATH = "/" + "a" * 5000
HOSTILE = {
    # hosts
    "host-unlisted": Case({"host": "rss-node3"}, "'rss-node3' is not one of"),
    "host-semicolon": Case({"host": f"rss-node1; {TOUCH}"}, f"'rss-node1; {TOUCH}'"),
    "host-subshell": Case({"host": f"$({TOUCH})"}, f"'$({TOUCH})'"),
    "host-backquotes": Case({"host": f"`{TOUCH}`"}, f"'`{TOUCH}`'"),
    "host-newline": Case({"host": f"rss-node1\n{TOUCH}"}, f"'rss-node1\\n{TOUCH}'"),
    "host-nul": Case({"host": f"rss-node1\0{TOUCH}"}, f"'rss-node1\\x00{TOUCH}'"),
    "host-ssh-option": Case({"host": f"-oProxyCommand={TOUCH}"}, "'-oProxyCommand="),
    "host-user-at": Case({"host": "root@rss-node1"}, "'root@rss-node1'"),
    "host-very-long": Case({"host": LONG_HOST}, "host 'nnnnnnnn"),
    "host-not-a-string": Case({"host": ["rss-node1"]}, "host \"['rss-node1']\""),
    # binds
    "bind-semicolon": Case({"binds": [f"/tmp; {TOUCH}"]}, f"'/tmp; {TOUCH}'"),
    "bind-semicolon-string": Case({"binds": f"/tmp;{TOUCH}"}, f"'{TOUCH}' is not an absolute"),
    "bind-subshell": Case({"binds": [f"/tmp/$({TOUCH})"]}, f"'/tmp/$({TOUCH})'"),
    "bind-backquotes": Case({"binds": [f"/tmp/`{TOUCH}`"]}, f"'/tmp/`{TOUCH}`'"),
    "bind-variable": Case({"binds": ["/tmp/${IFS}x"]}, "'/tmp/${IFS}x'"),
    "bind-newline": Case({"binds": [f"/tmp\n{TOUCH}"]}, f"'/tmp\\n{TOUCH}'"),
    "bind-nul": Case({"binds": [f"/tmp\0{TOUCH}"]}, f"'/tmp\\x00{TOUCH}'"),
    "bind-dotdot": Case({"binds": ["/tmp/../etc:/mnt"]}, "'/tmp/../etc' contains '.' or '..'"),
    "bind-relative-source": Case({"binds": ["tmp/x"]}, "'tmp/x' is not an absolute path"),
    "bind-relative-dest": Case({"binds": ["/tmp:mnt"]}, "'mnt' is not an absolute path"),
    "bind-extra-field": Case({"binds": [f"/tmp:/mnt:ro:{TOUCH}"]}, "more than three"),
    "bind-unknown-option": Case({"binds": ["/tmp:/mnt:nosuid"]}, "'nosuid' is not one of ro, rw"),
    "bind-comma": Case({"binds": ["/tmp,/etc:/mnt"]}, "'/tmp,/etc' contains a character"),
    "bind-comma-option": Case({"binds": ["/tmp:/mnt:ro,/etc"]}, "'ro,/etc' is not one of"),
    "bind-glob": Case({"binds": ["/tmp/*"]}, "'/tmp/*' contains a character"),
    "bind-singularity-flag": Case({"binds": ["--nv"]}, "'--nv' is not an absolute path"),
    "bind-very-long": Case({"binds": [LONG_PATH]}, "longer than 1024 characters"),
    "binds-too-many": Case({"binds": ["/tmp"] * 33}, "33 binds requested"),
    "binds-not-a-list": Case({"binds": {"/tmp": "/mnt"}}, "not dict"),
    "unknown-option": Case({"host": NODE1, "cmd": TOUCH}, "unknown option(s): 'cmd'"),
    # server names (JupyterHub itself refuses them)
    "server-semicolon": Case({}, "Invalid server_name", server=f"x;{TOUCH}"),
    "server-subshell": Case({}, "server_name", server=f"$({TOUCH})"),
    "server-ssh-option": Case({}, "Invalid server_name: '-oProxyCommand=", server=f"-oProxyCommand={TOUCH}"),
    "server-very-long": Case({}, "Invalid server_name", server="s" * 300),
    # Hub usernames JupyterHub accepts; the login name on the nodes derives from them
    "user-semicolon": Case({}, f"login name 'x;{REL_CANARY}'", user=f"x;{REL_CANARY}"),
    "user-subshell": Case({}, f"login name '$(touch {REL_CANARY})'", user=f"$(touch {REL_CANARY})"),
    "user-backquotes": Case({}, f"login name '`touch {REL_CANARY}`'", user=f"`touch {REL_CANARY}`"),
    "user-ssh-option": Case({}, "login name '-oproxycommand=", user=f"-oproxycommand=touch {REL_CANARY}"),
    "user-space": Case({}, "login name 'rss-alice x'", user="rss-alice x"),
    "user-newline": Case({}, "login name 'rss-alice\\nx'", user="rss-alice\nx"),
    "user-dot-first": Case({}, "login name '.rss-alice'", user=".rss-alice"),
    "user-non-ascii": Case({}, "login name 'łukasz'", user="łukasz"),
    "user-very-long": Case({}, f"login name '{'u' * 60}", user="u" * 200),
    # The path on the Hub host (/home/a.b@c/.ssh/id_ed25519) is for the Hub's log only.
    "user-no-such-account": Case({}, "for the login a.b@c, no private key of yours", user="a.b@c"),
    # the form
    "form-host-semicolon": Form({"host": f"rss-node1; {TOUCH}"}, f"'rss-node1; {TOUCH}'"),
    "form-host-unlisted": Form({"host": "rss-node3"}, "'rss-node3' is not one of"),
    "form-bind-subshell": Form({"binds": f"/tmp/$({TOUCH})"}, f"'/tmp/$({TOUCH})'"),
    "form-bind-second-line": Form({"binds": f"/tmp\n{TOUCH}"}, f"'{TOUCH}' is not an abs"),
    "form-bind-nul": Form({"binds": f"/tmp\0{TOUCH}"}, f"'/tmp\\x00{TOUCH}'"),
    "form-bind-comma": Form({"binds": "/tmp,/etc"}, "'/tmp,/etc' contains a character"),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_value_is_refused_naming_it_and_nothing_runs(hub, no_canary, case):
    case = HOSTILE[case]
    user, server = case.user, case.server
    created = user not in USERS
    if created:
        r = hub.api("POST", f"/users/{quote(user, safe='')}")
        assert r.status_code == 201, f"JupyterHub refused the username itself: {r.text}"
    form = open_form(hub, user) if case.via == "form" else None
    # From here on the hostile value is in play.
    offsets = log_offsets()
    before = processes_of_test_users()
    try:
        if form is None:
            message = api_failure(hub, user, server, case.options)
        else:
            message = submit_form(hub, user, *form, case.options)
    finally:
        if created:
            hub.api("DELETE", f"/users/{quote(user, safe='')}")
    assert case.named in message, message[-3000:]
    assert len(message) < 3000 or case.via == "form", "a hostile value must not flood the message"
    # Refused before any connection: no login was even attempted, nothing started.
    assert auth_attempts(offsets) == []
    assert processes_of_test_users() - before == set(), "something started on a node"
    if not created:
        assert hub.server_model(user, server) is None


def test_unusual_but_legal_values_are_passed_literally(hub, no_canary, tmp_path):
    """A bind source with spaces and punctuation, on a named server, reaches singularity word for word."""
    source = Path("/tmp/rss-sec src @=%~+-_.x")
    source.mkdir(exist_ok=True)
    source.chmod(0o755)
    (source / "marker").write_text("bound\n")
    (source / "marker").chmod(0o644)
    user, server, bind = "rss-bob", "odd-name-1", f"{source}:/mnt:ro"
    before = processes_of_test_users()
    try:
        r = hub.spawn(user, server, {"host": NODE1, "binds": [bind]})
        assert r.status_code in (201, 202), r.text
        model = hub.wait_ready(user, server)
        assert model["user_options"]["binds"] == [bind]
        # As typed, down to the runtime's mount call (bwrap's "--ro-bind SRC DEST" in the stand-in).
        args = " ".join(p["args"] for p in cluster_mod.node_processes(NODE1))
        assert f"--ro-bind {source} /mnt" in args, args
        pid = servers_of(NODE1, user)[0]["pid"]
        mounts = cluster_mod.node_run(NODE1, ["cat", f"/proc/{pid}/mounts"]).stdout
        assert re.search(r"^\S+ /mnt \S+ ro,", mounts, re.M), mounts
        seen = cluster_mod.node_run(NODE1, ["cat", f"/proc/{pid}/root/mnt/marker"], user=user).stdout
        assert seen == "bound\n"
    finally:
        hub.stop_server(user, server)
        assert wait_until(lambda: processes_of_test_users() <= before)
        (source / "marker").unlink()
        source.rmdir()


def test_hub_usernames_map_to_logins_through_the_callable(alt_hub, no_canary):
    """Odd Hub names become logins only through ssh_username; what it returns is still checked."""
    hub = alt_hub('c.RemoteSingularitySpawner.ssh_username = lambda spawner: spawner.user.name.split("@")[0]')
    mapped, hostile = "rss-alice@example.org", f"x;touch {REL_CANARY}@example.org"
    before = processes_of_test_users()
    for name in (mapped, hostile):
        assert hub.api("POST", f"/users/{quote(name, safe='')}").status_code == 201
    message = api_failure(hub, hostile, "", {})
    assert f"login name 'x;touch {REL_CANARY}'" in message

    r = hub.api("POST", api_path(mapped), data=json.dumps({"host": NODE2}))
    assert r.status_code in (201, 202), r.text
    events = hub.progress_events(quote(mapped, safe=""))
    assert events[-1].get("ready"), events[-1]
    model = hub.api("GET", f"/users/{quote(mapped, safe='')}").json()["servers"][""]
    assert model["state"]["login"] == "rss-alice"
    assert len(servers_of(NODE2, "rss-alice")) == 1
    hub.api("DELETE", api_path(mapped))
    assert wait_until(lambda: processes_of_test_users() <= before, timeout=60)


# --- secrets --------------------------------------------------------------------------------

SERVERS = (("rss-alice", "", NODE1), ("rss-bob", "", NODE2), ("rss-alice", "two", NODE2))


def files_holding(tokens: list[str], roots: list[str]) -> list[str]:
    """Files under *roots* holding any of *tokens* (grep: binary files, e.g. sqlite, too)."""
    argv = ["grep", "-rlsF", *(a for t in tokens for a in ("-e", t)), "--", *roots]
    return subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()


def private_to(path: str, user: str) -> bool:
    """True if *path* belongs to *user* and nobody else (root aside) may read it."""
    st = os.stat(path)
    return st.st_uid == cluster_mod.describe().user(user).uid and st.st_mode & 0o077 == 0


def state_tree(node: str, user: str, state: dict) -> list[tuple[str, ...]]:
    """(mode, type, owner, path) of what a server (by its *state*) uses on *node*: the state
    directory, the scripts of its version and its own directory with all they hold."""
    base = f"{cluster_mod.describe().user(user).home}/.remote-singularity-spawner"
    server_dir = os.path.dirname(state["log_path"])
    assert server_dir.startswith(f"{base}/servers/"), state
    fmt = ["-printf", r"%m %y %u %p\n"]
    parents = ["find", base, f"{base}/scripts", f"{base}/servers", "-maxdepth", "0", *fmt]
    own = ["find", f"{base}/scripts/{state['scripts_version']}", server_dir, *fmt]
    out = cluster_mod.node_run(node, parents).stdout + cluster_mod.node_run(node, own).stdout
    return [tuple(line.split(" ", 3)) for line in out.splitlines()]


def test_the_token_is_in_no_argv_no_log_and_no_file_others_can_read(hub, tmp_path):
    offset = len(hub.log_path.read_text(errors="replace"))
    tokens: dict[str, str] = {}
    states: dict[str, dict] = {}
    before = processes_of_test_users()
    with ArgvSampler(tmp_path) as sampler:
        for user, server, node in SERVERS[:2]:
            r = hub.spawn(user, server, {"host": node})
            assert r.status_code in (201, 202), r.text
        # The third through the form, as a browser.
        session = login(hub, "rss-alice")
        page = session.get(f"{hub.url}/hub/spawn/rss-alice/two", timeout=30).text
        action = html.unescape(re.search(r'action="(/hub/spawn/[^"]+)"', page).group(1))
        assert session.post(f"{hub.url}{action}", data={"host": NODE2}, timeout=120).ok
        for user, server, node in SERVERS:
            states[f"{user}/{server}"] = hub.wait_ready(user, server)["state"]
            tokens[f"{user}/{server}"] = node_token(node, servers_of(node, user)[0]["pid"])
        # poll_interval is 3 s in this Hub: let it poll every server a few times.
        log = hub.log_path
        polls = lambda: log.read_text(errors="replace")[offset:].count("check_pid.sh")  # noqa: E731
        assert wait_until(lambda: polls() >= 3 * len(SERVERS), timeout=60)
        for user, server, _ in SERVERS:
            assert hub.through_proxy(user, server).status_code == 200
        for user, server, _ in SERVERS:
            hub.stop_server(user, server)
        assert wait_until(lambda: processes_of_test_users() <= before), "the servers stopped"
    assert len(set(tokens.values())) == len(SERVERS) and all(len(t) >= 16 for t in tokens.values())

    # argv, on the hub host and inside each node, while servers started, ran, were polled, stopped.
    for where, result in sampler.results.items():
        leaks = [argv for argv in result["argvs"] if any(t in argv for t in tokens.values())]
        assert leaks == [], f"the API token in an argv on {where}"
    for node in NODES:
        argvs = " ".join(sampler.results[node]["argvs"])
        assert "start_singleuser.sh" in argvs and "stop.sh" in argvs, "the sampler saw starts and stops"
        assert "jupyterhub-singleuser" in argvs
    counts = {where: r["snapshots"] for where, r in sampler.results.items()}
    assert min(counts.values()) >= 50, counts
    print(f"argv snapshots: {counts}; distinct argvs: "
          f"{ {w: len(r['argvs']) for w, r in sampler.results.items()} }")  # fmt: skip

    # The Hub's log, at DEBUG level (it logs every command it runs on a node).
    text = hub.log_path.read_text(errors="replace")
    assert re.search(r"^\[D .*start_singleuser\.sh", text, re.M), "the Hub logs at DEBUG"
    assert not [t for t in tokens.values() if t in text], "the API token in the Hub's log"

    # Files: the Hub's (log, database, config), the users' homes (server logs, scripts),
    # the sshd logs, and anything the test users own in the shared temporary directories.
    homes = [str(cluster_mod.describe().user(u).home) for u in USERS]
    roots = [str(hub.workdir), *homes, str(cluster_mod.CONFIG.state_dir), "/var/tmp", "/dev/shm"]
    owned = ["(", *(a for u in USERS for a in ("-user", u, "-o")), "-false", ")"]
    find = subprocess.run(
        ["find", "/tmp", "-maxdepth", "1", *owned, "-type", "f"], capture_output=True, text=True
    )
    roots += find.stdout.splitlines()
    control = hub.workdir / "control"
    control.write_text(f"a file holding {next(iter(tokens.values()))}\n")
    assert str(control) in files_holding(list(tokens.values()), roots), "the scan finds a token"
    control.unlink()
    holding = files_holding(list(tokens.values()), roots)
    for path in holding:
        owner = next((u for u in USERS if path.startswith(f"/home/{u}/")), None)
        assert owner is not None and private_to(path, owner), f"{path} holds a token"
    print(f"files holding a token, each readable by its user alone: {holding}")

    # What the scripts and the upload create on the node: files 0600, directories 0700.
    for user, server, node in SERVERS:
        tree = state_tree(node, user, states[f"{user}/{server}"])
        assert any(p.endswith("/server.log") for *_, p in tree)
        wrong = [e for e in tree if e[2] != user or e[:2] not in (("600", "f"), ("700", "d"))]
        assert wrong == [], wrong


# --- host keys and identities ---------------------------------------------------------------


def known_hosts_variant(cluster, tmp_path, kind: str) -> str:
    """A known_hosts without node1 ('unknown') or with node2's keys under node1's names ('changed')."""
    node1, node2 = cluster.node(NODE1), cluster.node(NODE2)
    lines = []
    for line in cluster.known_hosts.read_text().splitlines():
        names, rest = line.split(" ", 1)
        if names.split(",")[0] == node2.name:
            lines.append(line)
            if kind == "changed":
                lines.append(f"{node1.name},{node1.ip} {rest}")
    path = tmp_path / f"known_hosts.{kind}"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize(
    "kind, says",
    [("unknown", "is not in known_hosts"), ("changed", "has CHANGED")],
)
def test_unknown_or_changed_host_key_is_refused(cluster, alt_hub, tmp_path, kind, says):
    path = known_hosts_variant(cluster, tmp_path, kind)
    hub = alt_hub(f'c.RemoteSingularitySpawner.known_hosts_files = ["{path}"]')
    offsets, before = log_offsets(), processes_of_test_users()
    message = spawn_failure(hub, "rss-carol", {"host": NODE1})
    node_ip = cluster.node(NODE1).ip
    assert f"host key of {node_ip}" in message and says in message
    assert "known_hosts" in message, "the message says what to fix"
    # No fallback to trusting the host: the key was refused before any login.
    assert auth_attempts(offsets) == []
    assert processes_of_test_users() <= before
    # The same Hub still reaches the node whose key it knows.
    hub.spawn("rss-carol", options={"host": NODE2})
    hub.wait_ready("rss-carol")
    hub.stop_server("rss-carol")


def test_missing_passphrase_or_unauthorized_key_is_refused_saying_what_to_fix(cluster, alt_hub, tmp_path):
    """Homes where alice has no key, bob's key has a passphrase, carol's is not authorized."""
    homes = tmp_path / "homes"
    keys = {}
    for user, key_type in USERS.items():
        ssh = homes / user / ".ssh"
        ssh.mkdir(parents=True)
        (ssh / "known_hosts").write_text(cluster.known_hosts.read_text())
        keys[user] = ssh / f"id_{key_type}"
    keygen = ["ssh-keygen", "-q", "-C", "rss-sec-test"]
    subprocess.run([*keygen, "-t", "ecdsa", "-N", "passphrase", "-f", keys["rss-bob"]], check=True)
    subprocess.run([*keygen, "-t", "rsa", "-N", "", "-f", keys["rss-carol"]], check=True)
    hub = alt_hub(f'c.RemoteSingularitySpawner.home_path = "{homes}"')
    offsets, before = log_offsets(), processes_of_test_users()

    # The user reads where in their home (~/.ssh/...); the Hub's log, the paths on the Hub.
    message = spawn_failure(hub, "rss-alice", {"host": NODE1})
    assert "no private key of yours was found; looked for: ~/.ssh/id_ed25519" in message
    assert "Create one (ssh-keygen" in message and "authorized_keys" in message
    assert str(homes) not in message
    assert f"no private key found; looked for: {keys['rss-alice']}" in hub.log_path.read_text()

    message = spawn_failure(hub, "rss-bob", {"host": NODE1})
    assert "your private key ~/.ssh/id_ecdsa is protected by a passphrase" in message
    assert "give this user a key without a passphrase" in message
    assert f"the private key {keys['rss-bob']} is protected by a passphrase" in hub.log_path.read_text()
    # Neither even tried to log in: no agent, no other key, no password.
    assert auth_attempts(offsets) == []

    message = spawn_failure(hub, "rss-carol", {"host": NODE1})
    assert "with the key ~/.ssh/id_rsa refused" in message
    assert "add ~/.ssh/id_rsa.pub to ~rss-carol/.ssh/authorized_keys" in message
    assert f"with the key {keys['rss-carol']} refused" in hub.log_path.read_text()
    attempts = auth_attempts(offsets)
    assert attempts and all(a.startswith("Failed publickey for rss-carol") for a in attempts), attempts
    assert all(hub.server_model(user) is None for user in USERS)
    assert processes_of_test_users() <= before
