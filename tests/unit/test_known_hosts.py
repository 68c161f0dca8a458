"""known_hosts files as sites have them: markers, hashed names, ports, patterns, bad lines.

Real keys (ssh-keygen), real hashed names (ssh-keygen -H), and, at the end, a
real SSH handshake with an in-process paramiko server, through connect().
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import threading
from pathlib import Path

import paramiko
import pytest

from remotesingularityspawner import remote
from remotesingularityspawner.remote import known_hosts
from remotesingularityspawner.remote.known_hosts import KnownHosts, Status, load_file
from remotesingularityspawner.remote.ssh import _RejectUnknownHost

LOG = logging.getLogger("test.known_hosts")
CA_WARNING = "@cert-authority lines are not used: host certificates cannot be verified"


@pytest.fixture
def cache():
    """The files a Hub keeps parsed between logins."""
    return known_hosts.FileCache()


def keygen(directory: Path, name: str, key_type: str) -> paramiko.PKey:
    path = directory / name
    bits = ["-b", "2048"] if key_type == "rsa" else []
    subprocess.run(["ssh-keygen", "-q", "-t", key_type, *bits, "-N", "", "-C", name, "-f", path], check=True)
    return paramiko.PKey.from_path(path)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    made = {name: keygen(d, name, "ed25519") for name in ("ca", "ca2", "k1", "k4", "k5", "k6", "k8", "other")}
    made.update(k2=paramiko.ECDSAKey.generate(), k2_new=paramiko.ECDSAKey.generate())
    made.update(p384=paramiko.ECDSAKey.generate(bits=384))
    made.update(k3=keygen(d, "k3", "rsa"))
    return made


def line(names: str, key: paramiko.PKey, comment: str = "") -> str:
    return f"{names} {key.get_name()} {key.get_base64()}{' ' + comment if comment else ''}"


def hashed(tmp_path: Path, *lines: str) -> list[str]:
    """*lines* with their names hashed by ssh-keygen -H (one line per name)."""
    path = tmp_path / "to-hash"
    path.write_text("\n".join(lines) + "\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", path], check=True, capture_output=True)
    out = path.read_text().splitlines()
    assert out and all(x.startswith("|1|") for x in out), out
    return out


BAD = (
    "not-an-entry",
    "type-mismatch",
    "not-that-type",
    "unknown-marker",
    "bad-hash",
    "too-few-fields",
    "dss",
)


@pytest.fixture
def site(tmp_path, keys):
    """A site's known_hosts file, and the line number of each line by its label."""
    k = keys
    labelled = [
        ("ca", "@cert-authority " + line("*.cluster.example,10.0.*", k["ca"])),
        ("comment", "# the site's known hosts, kept by the sysadmins"),
        ("blank", ""),
        *(
            (f"hashed-{i}", text)
            for i, text in enumerate(
                hashed(
                    tmp_path,
                    line("node1.cluster.example,10.0.0.1", k["k1"]),
                    line("[10.0.0.1]:2222", k["k1"]),
                )
            )
        ),
        ("k2", line("10.0.0.2", k["k2"], "root@node2")),
        ("not-an-entry", "this line is not an entry"),
        ("wildcard", line("10.0.1.*", k["k3"])),
        ("negated", line("10.0.2.*,!10.0.2.9", k["k4"])),
        ("revoked-k5", "@revoked " + line("10.0.0.5", k["k5"])),
        ("k5", line("10.0.0.5", k["k5"])),
        ("k6", line("10.0.0.6", k["k6"])),
        ("revoked-k6", "@revoked " + line("*", k["k6"])),
        ("type-mismatch", f"10.0.0.7 {k['k2'].get_name()} {k['p384'].get_base64()}"),
        ("not-that-type", f"10.0.0.7 {k['k2'].get_name()} {k['k1'].get_base64()}"),
        ("unknown-marker", "@trusted " + line("10.0.0.7", k["other"])),
        ("spaced", "\t" + line("10.0.0.8", k["k8"]).replace(" ", " \t  ")),
        ("ca2", "@cert-authority " + line("*", k["ca2"])),
        ("bad-hash", f"|1|bm90IGEgc2FsdA==|eA== {k['k8'].get_name()} {k['k8'].get_base64()}"),
        ("too-few-fields", f"10.0.0.9 {k['k8'].get_name()}"),
        ("dss", "10.0.0.10 ssh-dss AAAAB3NzaC1kc3MAAACB"),
    ]
    path = tmp_path / "ssh_known_hosts"
    path.write_text("\n".join(text for _, text in labelled) + "\n")
    return path, {label: n for n, (label, _) in enumerate(labelled, 1)}


def test_the_parser_keeps_every_good_line_around_the_bad_ones(site):
    path, at = site
    parsed = known_hosts.KnownHostsFile.parse(path.read_text(), str(path))
    assert [lineno for lineno, _ in parsed.problems] == [at[b] for b in BAD]
    assert parsed.cert_authority_lines == (at["ca"], at["ca2"])
    assert len(parsed.entries) == 11
    reasons = dict(parsed.problems)
    assert "is not valid base64" in reasons[at["not-an-entry"]]
    assert "the key is of type ecdsa-sha2-nistp384, not ecdsa-sha2-nistp256" in reasons[at["type-mismatch"]]
    assert "not a valid ecdsa-sha2-nistp256 key" in reasons[at["not-that-type"]]
    assert "unknown marker '@trusted'" in reasons[at["unknown-marker"]]
    assert "is not a hashed host name" in reasons[at["bad-hash"]]
    assert "too few fields" in reasons[at["too-few-fields"]]
    assert "key type 'ssh-dss' is not supported" in reasons[at["dss"]]


@pytest.mark.parametrize(
    "name, key",
    [
        ("10.0.0.1", "k1"),  # hashed
        ("node1.cluster.example", "k1"),  # hashed, the name
        ("NODE1.Cluster.Example", "k1"),  # names match whatever their case
        ("[10.0.0.1]:2222", "k1"),  # hashed, another port
        ("10.0.0.2", "k2"),  # after the @cert-authority line, with a comment
        ("10.0.1.77", "k3"),  # wildcard, rsa
        ("10.0.2.4", "k4"),  # the positive part of a negated pattern
        ("10.0.0.8", "k8"),  # tabs and spaces, after malformed lines
    ],
)
def test_each_listed_host_verifies(site, keys, name, key):
    known = KnownHosts.load([str(site[0])], LOG)
    assert known.check(name, keys[key]).status is Status.KNOWN
    _RejectUnknownHost(known, name).missing_host_key(None, name, keys[key])  # accepted: no error


@pytest.mark.parametrize(
    "name, key",
    [
        ("10.0.0.99", "k1"),  # listed nowhere
        ("[10.0.0.2]:2222", "k2"),  # listed on port 22 only
        ("10.0.2.9", "k4"),  # negated
        ("10.0.0.2", "k1"),  # no ed25519 key listed for it
        ("node2.cluster.example", "ca"),  # only a @cert-authority line names it
        ("10.0.0.10", "k1"),  # its line is of an unsupported type
    ],
)
def test_an_unlisted_host_is_refused_as_unknown(site, keys, name, key):
    known = KnownHosts.load([str(site[0])], LOG)
    assert known.check(name, keys[key]).status is Status.UNKNOWN
    with pytest.raises(remote.HostKeyError) as e:
        _RejectUnknownHost(known, name).missing_host_key(None, name, keys[key])
    assert (
        f"the host key of {name} ({keys[key].get_name()} {keys[key].fingerprint}) is not in known_hosts"
        in (str(e.value))
    )
    assert f"The @cert-authority lines of {site[0]} are not used" in str(e.value)


def test_another_key_of_a_listed_type_is_refused_as_changed(site, keys):
    known = KnownHosts.load([str(site[0])], LOG)
    verdict = known.check("10.0.0.2", keys["k2_new"])
    assert verdict.status is Status.CHANGED and verdict.entry.lineno == site[1]["k2"]
    with pytest.raises(remote.HostKeyError) as e:
        _RejectUnknownHost(known, "10.0.0.2").missing_host_key(None, "10.0.0.2", keys["k2_new"])
    assert str(e.value).startswith(
        f"the host key of 10.0.0.2 has CHANGED (offered ecdsa-sha2-nistp256 {keys['k2_new'].fingerprint}, "
        f"known {keys['k2'].fingerprint}): refusing to connect."
    )
    for name in ("10.0.0.1", "[10.0.0.1]:2222"):  # hashed entries too
        assert known.check(name, keys["other"]).status is Status.CHANGED


@pytest.mark.parametrize("name, key", [("10.0.0.5", "k5"), ("10.0.0.6", "k6")])
def test_a_revoked_key_is_refused_whatever_the_other_lines_say(site, keys, name, key):
    lineno = site[1][f"revoked-{key}"]
    known = KnownHosts.load([str(site[0])], LOG)
    verdict = known.check(name, keys[key])
    assert verdict.status is Status.REVOKED and verdict.entry.lineno == lineno
    with pytest.raises(remote.HostKeyError) as e:
        _RejectUnknownHost(known, name).missing_host_key(None, name, keys[key])
    assert str(e.value).startswith(
        f"the host key of {name} (ssh-ed25519 {keys[key].fingerprint}) is marked @revoked in {site[0]}: "
        f"refusing to connect (line {lineno})"
    )
    # The revoked key of 10.0.0.6 is revoked for every host (*); k5 only for 10.0.0.5.
    assert known.check("10.0.0.8", keys["k6"]).status is Status.REVOKED
    assert known.check("10.0.0.8", keys["k5"]).status is Status.CHANGED


def test_revoked_in_one_file_is_refused_though_another_file_lists_it(tmp_path, keys):
    plain, revoked = tmp_path / "plain", tmp_path / "revoked"
    plain.write_text(line("10.0.0.1", keys["k1"]) + "\n")
    revoked.write_text("@revoked " + line("10.0.0.*", keys["k1"]) + "\n")
    known = KnownHosts.load([str(plain), str(revoked)], LOG)
    assert known.check("10.0.0.1", keys["k1"]).status is Status.REVOKED


def test_malformed_lines_are_warned_naming_file_and_line_and_certificate_authorities_once(
    site, keys, caplog, cache
):
    path, at = site
    bad = [at[b] for b in BAD]
    caplog.set_level(logging.WARNING, logger=LOG.name)
    first = load_file(str(path), LOG, cache)
    assert load_file(str(path), LOG, cache) is first, "parsed once per version"
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert [m.split(" skipped")[0] for m in skipped] == [f"known_hosts file {path} line {n}" for n in bad]
    assert [r.getMessage() for r in caplog.records if CA_WARNING in r.getMessage()] == [
        f"{path}: {CA_WARNING}; list the nodes' host keys too"
    ]
    # A new version is parsed again, its bad lines said again, its @cert-authority lines not.
    caplog.clear()
    path.write_text(path.read_text() + "bad\n")
    os.utime(path, ns=(0, 10**18))
    again = load_file(str(path), LOG, cache)
    assert again is not first and len(again.problems) == len(bad) + 1
    assert len([r for r in caplog.records if "skipped" in r.getMessage()]) == len(bad) + 1
    assert not [r for r in caplog.records if CA_WARNING in r.getMessage()]


def test_threads_reading_one_file_at_once_parse_it_once(site, caplog, cache):
    path, _ = site
    caplog.set_level(logging.WARNING, logger=LOG.name)
    start = threading.Barrier(8)
    results = []

    def read():
        start.wait()
        results.append(load_file(str(path), LOG, cache))

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(r) for r in results}) == 1
    assert len([r for r in caplog.records if "skipped" in r.getMessage()]) == len(BAD)


def test_missing_files_are_no_error_and_unreadable_ones_are_warned(tmp_path, keys, caplog, monkeypatch):
    caplog.set_level(logging.WARNING, logger=LOG.name)
    good = tmp_path / "good"
    good.write_text(line("10.0.0.1", keys["k1"]) + "\n")
    known = KnownHosts.load([str(tmp_path / "missing"), str(tmp_path), str(good)], LOG)
    assert [f.path for f in known.files] == [str(good)]
    assert caplog.records == []

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(known_hosts, "open", denied, raising=False)
    assert KnownHosts.load([str(good)], LOG).files == ()
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot read known_hosts file {good}: [Errno 13] Permission denied"
    ]


@pytest.mark.parametrize(
    "patterns, name, named",
    [
        ("node?", "node7", True),
        ("node?", "node17", False),
        ("*", "anything", True),
        ("10.0.*.1", "10.0.5.1", True),
        ("10.0.*.1", "10.0.5.2", False),
        ("*.example,!bad.example", "bad.example", False),
        ("!bad.example,*.example", "good.example", True),
        ("!bad.example", "good.example", False),  # a negation alone names nothing
        ("[10.0.0.1]:2222", "[10.0.0.1]:2222", True),
        ("[10.0.0.1]:2222", "10.0.0.1", False),
        ("10.0.0.1", "[10.0.0.1]:2222", False),
        ("[10.0.0.*]:22?2", "[10.0.0.3]:2202", True),
        ("Node1", "node1", True),
        ("a.b", "axb", False),  # a dot is a dot
    ],
)
def test_host_patterns(patterns, name, named):
    parsed = [known_hosts.Pattern.parse(p) for p in patterns.split(",")]
    assert known_hosts.names(parsed, name) is named


def test_the_name_is_the_address_or_bracketed_with_a_port_other_than_22():
    assert known_hosts.host_name("10.0.0.1") == "10.0.0.1"
    assert known_hosts.host_name("10.0.0.1", 22) == "10.0.0.1"
    assert known_hosts.host_name("10.0.0.1", 2222) == "[10.0.0.1]:2222"


def test_the_types_listed_for_a_host_are_asked_for_first(site):
    known = KnownHosts.load([str(site[0])], LOG)
    offered = paramiko.Transport._preferred_keys
    rsa = known.preferred_algorithms("10.0.1.4", offered)
    assert rsa[:2] == ["rsa-sha2-512", "rsa-sha2-256"] and sorted(rsa) == sorted(offered)
    assert known.preferred_algorithms("10.0.0.2", offered)[0] == "ecdsa-sha2-nistp256"
    assert known.preferred_algorithms("10.0.0.99", offered) == list(offered)


# --- through connect(): a real handshake with an in-process SSH server ---------------------


class _Server(paramiko.ServerInterface):
    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        return paramiko.AUTH_SUCCESSFUL


@pytest.fixture
def sshd(tmp_path, keys):
    """A paramiko SSH server on 127.0.0.1 with an ed25519 and an RSA host key; (port, keys)."""
    host_keys = {"ed25519": keys["k1"], "rsa": keys["k3"]}
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    transports = []

    def serve():
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            t = paramiko.Transport(sock)
            for key in host_keys.values():
                t.add_server_key(key)
            transports.append(t)
            try:
                t.start_server(server=_Server())
            except (paramiko.SSHException, EOFError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], host_keys
    stop.set()
    thread.join()
    listener.close()
    for t in transports:
        t.close()


def connect_with(tmp_path, port, lines, verify=True):
    user_key = tmp_path / "id_ed25519"
    if not user_key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", user_key], check=True)
    path = tmp_path / "known_hosts"
    path.write_text("\n".join(lines) + "\n")
    target = remote.Target(
        host="127.0.0.1", username="alice", key_files=(str(user_key),), known_hosts_files=(str(path),),
        port=port, connect_timeout=5, verify_host_key=verify,
    )  # fmt: skip
    conn = remote.connect(target, LOG)
    conn.close()
    return conn


def test_connect_asks_for_the_listed_key_type_and_accepts_it(tmp_path, sshd, keys):
    port, host_keys = sshd
    name = f"[127.0.0.1]:{port}"
    # Only the RSA key is listed, hashed, after a @cert-authority line: the node offers ed25519
    # first, unless asked for RSA as ssh would.
    listed = ["@cert-authority " + line("*", keys["ca"]), *hashed(tmp_path, line(name, host_keys["rsa"]))]
    conn = connect_with(tmp_path, port, listed)
    assert conn.client.get_host_keys().keys() == [], "nothing in paramiko's own HostKeys"
    assert (
        known_hosts.KnownHosts.load([str(tmp_path / "known_hosts")]).check(name, host_keys["ed25519"]).status
        is Status.UNKNOWN
    ), "the node's first choice would have been refused"


@pytest.mark.parametrize(
    "listed, says",
    [
        (lambda name, k: [line("127.0.0.2", k["k1"])], "is not in known_hosts"),
        (lambda name, k: [line("127.0.0.1", k["k1"])], "is not in known_hosts"),  # port 22 only
        (lambda name, k: [line(name, k["other"])], "has CHANGED"),
        (lambda name, k: [line(name, k["k1"]), "@revoked " + line("*", k["k1"])], "is marked @revoked"),
    ],
    ids=["unlisted", "other-port", "changed", "revoked"],
)
def test_connect_refuses_an_unknown_changed_or_revoked_key(tmp_path, sshd, keys, listed, says):
    port, _ = sshd
    with pytest.raises(remote.HostKeyError, match=says) as e:
        connect_with(tmp_path, port, listed(f"[127.0.0.1]:{port}", keys))
    assert "127.0.0.1" in str(e.value)
    if says == "has CHANGED":
        assert str(e.value).startswith("the host key of 127.0.0.1 has CHANGED")
    else:
        assert str(e.value).startswith(f"the host key of [127.0.0.1]:{port} (ssh-ed25519 ")


def test_connect_without_host_key_checking_accepts_anything_with_a_warning(tmp_path, sshd, caplog):
    port, host_keys = sshd
    caplog.set_level(logging.WARNING, logger=LOG.name)
    connect_with(tmp_path, port, [], verify=False)
    assert f"host key checking is DISABLED: accepting ssh-ed25519 key {host_keys['ed25519'].fingerprint}" in (
        caplog.text
    )
