"""known_hosts files as sites have them: markers, patterns, hashed names.

Lines as OpenSSH's sshd(8) defines them ("SSH_KNOWN_HOSTS FILE FORMAT")::

    [@cert-authority|@revoked] hostnames keytype base64-key [comment]

- hostnames: comma-separated patterns, each a name or address, ``[host]:port``
  (a port other than 22), with the wildcards ``*`` and ``?``, negated with a
  leading ``!`` (a host a negated pattern matches is not named by the line,
  whatever its other patterns say), or hashed, ``|1|salt|hmac`` (HMAC-SHA1 of
  the name keyed with the salt, both base64). Names match whatever their case.
- ``@revoked``: the key is refused for the hosts the line names, whatever the
  other lines say.
- ``@cert-authority``: not used (paramiko verifies no host certificates, the
  nodes offer it their plain keys): skipped, with one warning per file (per
  cache).
- Comments (``#``) and blank lines are skipped; a malformed line is skipped
  with a warning naming the file and line, and every other line still counts.

Each file is parsed once per version (mtime, size, inode) per :class:`FileCache`
(the Hub keeps one; without one a file is read at each use), in the calling
thread. Nothing here raises for what a file holds: :meth:`KnownHosts.check`
says what it found, and ssh.py's host key policy refuses.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import logging
import os
import re
import stat
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import paramiko

default_log = logging.getLogger("remotesingularityspawner.remote")

CERT_AUTHORITY = "@cert-authority"
REVOKED = "@revoked"
_HASHED = "|1|"
_SHA1_SIZE = 20
_FORMAT = "expected: [@revoked|@cert-authority] hostnames keytype base64-key [comment]"


def host_name(host: str, port: int = 22) -> str:
    """The name a host is looked up by, as OpenSSH and paramiko write it: ``[host]:port`` off port 22."""
    return host if port == 22 else f"[{host}]:{port}"


class _Malformed(ValueError):
    """Why a line is not a known_hosts entry."""


@dataclass(frozen=True)
class Pattern:
    """One item of a hostnames field."""

    text: str  # as written, negation included
    negated: bool
    name: str | None = None  # a name or address (lowercase)
    regex: re.Pattern | None = None  # a pattern with wildcards
    salt: bytes = b""  # a hashed name: HMAC-SHA1(salt, name) == digest
    digest: bytes = b""

    @classmethod
    def parse(cls, text: str) -> Pattern:
        negated = text.startswith("!")
        body = text[1:] if negated else text
        if not body:
            raise _Malformed(f"empty host pattern in {text!r}")
        if body.startswith("|"):
            salt, digest = _hashed(body)
            return cls(text, negated, salt=salt, digest=digest)
        body = body.lower()
        if "*" not in body and "?" not in body:
            return cls(text, negated, name=body)
        glob = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in body)
        return cls(text, negated, regex=re.compile(glob, re.DOTALL))

    def matches(self, name: str) -> bool:
        """Whether *name* (lowercase) is what this pattern names, negation aside."""
        if self.name is not None:
            return self.name == name
        if self.regex is not None:
            return self.regex.fullmatch(name) is not None
        mac = hmac.new(self.salt, name.encode(), hashlib.sha1).digest()
        return hmac.compare_digest(mac, self.digest)


def _hashed(body: str) -> tuple[bytes, bytes]:
    salt = digest = b""
    if body.startswith(_HASHED) and body.count("|") == 3:
        try:
            salt, digest = (base64.b64decode(p, validate=True) for p in body[len(_HASHED) :].split("|"))
        except binascii.Error:
            pass
    if len(salt) != _SHA1_SIZE or len(digest) != _SHA1_SIZE:
        raise _Malformed(f"{body[:40]!r} is not a hashed host name (|1|base64 salt|base64 HMAC-SHA1)")
    return salt, digest


def names(patterns: Iterable[Pattern], name: str) -> bool:
    """Whether a hostnames field names *name*: a pattern matches it and no negated one does."""
    name = name.lower()
    found = False
    for pattern in patterns:
        if pattern.matches(name):
            if pattern.negated:
                return False
            found = True
    return found


@dataclass(frozen=True)
class Entry:
    """A host key line: its hosts, its key, where it was written."""

    path: str
    lineno: int
    marker: str  # "" or REVOKED
    patterns: tuple[Pattern, ...]
    key: paramiko.PKey
    blob: bytes  # the public key, as the node offers it on the wire


def _key(key_type: str, data: str) -> paramiko.PKey:
    try:
        blob = base64.b64decode(data, validate=True)
    except binascii.Error:
        raise _Malformed("the key is not valid base64") from None
    try:
        key = paramiko.PKey.from_type_string(key_type, blob)
    except paramiko.UnknownKeyType:
        raise _Malformed(f"key type {key_type!r} is not supported") from None
    except Exception as e:  # whatever a key class raises for bad bytes: the line is bad
        raise _Malformed(f"not a valid {key_type} key ({e or type(e).__name__})") from None
    if key.get_name() != key_type:
        raise _Malformed(f"the key is of type {key.get_name()}, not {key_type}")
    return key


def _entry(path: str, lineno: int, fields: list[str]) -> Entry:
    marker = ""
    if fields[0].startswith("@"):
        marker = fields.pop(0)
        if marker != REVOKED:
            raise _Malformed(f"unknown marker {marker!r}")
    if len(fields) < 3:
        raise _Malformed(f"too few fields ({_FORMAT})")
    hosts, key_type, data = fields[:3]
    patterns = tuple(Pattern.parse(p) for p in hosts.split(","))
    key = _key(key_type, data)
    return Entry(path, lineno, marker, patterns, key, key.asbytes())


@dataclass(frozen=True)
class KnownHostsFile:
    """What one file holds: host key entries, where its @cert-authority lines are, what was skipped."""

    path: str
    entries: tuple[Entry, ...] = ()
    cert_authority_lines: tuple[int, ...] = ()
    problems: tuple[tuple[int, str], ...] = ()  # (line number, why it was skipped)

    @classmethod
    def parse(cls, text: str, path: str) -> KnownHostsFile:
        entries, authorities, problems = [], [], []
        for lineno, raw in enumerate(text.split("\n"), 1):
            fields = raw.split()
            if not fields or fields[0].startswith("#"):
                continue
            if fields[0] == CERT_AUTHORITY:
                authorities.append(lineno)
                continue
            try:
                entries.append(_entry(path, lineno, fields))
            except _Malformed as e:
                problems.append((lineno, str(e)))
        return cls(path, tuple(entries), tuple(authorities), tuple(problems))


class Status(enum.Enum):
    KNOWN = "known"  # a line of the host lists this very key
    REVOKED = "revoked"  # a @revoked line of the host lists it: refuse, whatever else is listed
    CHANGED = "changed"  # the host is listed with another key of the same type
    UNKNOWN = "unknown"  # no key of this type is listed for the host


@dataclass(frozen=True)
class Verdict:
    status: Status
    entry: Entry | None = None  # the line that decided (KNOWN, REVOKED, CHANGED)


def _key_type(algorithm: str) -> str:
    """The key type a host key algorithm uses (rsa-sha2-512 is an ssh-rsa key)."""
    return "ssh-rsa" if algorithm.startswith("rsa-sha2-") else algorithm


@dataclass(frozen=True)
class KnownHosts:
    """The known_hosts files of one connection, in the order given."""

    files: tuple[KnownHostsFile, ...] = ()
    _lookups: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def load(
        cls, paths: Iterable[str], log: logging.Logger = default_log, cache: FileCache | None = None
    ) -> KnownHosts:
        """The files that exist among *paths* (from *cache* per version); a missing file is no error."""
        cache = cache if cache is not None else FileCache()
        return cls(tuple(f for f in (load_file(p, log, cache) for p in paths) if f is not None))

    @property
    def cert_authority_files(self) -> tuple[str, ...]:
        return tuple(f.path for f in self.files if f.cert_authority_lines)

    def entries_for(self, name: str) -> tuple[Entry, ...]:
        """The host key lines (plain and @revoked) that name *name* (``host_name(host, port)``)."""
        found = self._lookups.get(name)
        if found is None:
            found = tuple(e for f in self.files for e in f.entries if names(e.patterns, name))
            self._lookups[name] = found
        return found

    def check(self, name: str, key: paramiko.PKey) -> Verdict:
        """What the files say of *key* offered by the host looked up as *name*."""
        entries = self.entries_for(name)
        blob = key.asbytes()
        for entry in entries:
            if entry.marker == REVOKED and entry.blob == blob:
                return Verdict(Status.REVOKED, entry)
        plain = [e for e in entries if not e.marker]
        for entry in plain:
            if entry.blob == blob:
                return Verdict(Status.KNOWN, entry)
        for entry in plain:
            if entry.key.get_name() == key.get_name():
                return Verdict(Status.CHANGED, entry)
        return Verdict(Status.UNKNOWN)

    def preferred_algorithms(self, name: str, algorithms: Sequence[str]) -> list[str]:
        """*algorithms* with those of the key types listed for *name* first (as ssh does), so
        that a node offers a key the files know when it has one."""
        known = {e.key.get_name() for e in self.entries_for(name) if not e.marker}
        first = [a for a in algorithms if _key_type(a) in known]
        return first + [a for a in algorithms if a not in first]


# --- reading files, once per version per cache ---------------------------------------------


class FileCache:
    """Parsed files by path with the version (mtime, size, inode) they were read at; the least
    recently used are dropped beyond *size*."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._files: OrderedDict[str, tuple[tuple, KnownHostsFile]] = OrderedDict()
        self._lock = threading.Lock()
        # One file is read by one thread at a time (the others wait for its result); a
        # slow file system under one path holds up only the paths of its stripe.
        self._reading = [threading.Lock() for _ in range(16)]
        self._warned_authorities: set[str] = set()

    def get(self, path: str, version: tuple) -> KnownHostsFile | None:
        with self._lock:
            found = self._files.get(path)
            if found is None or found[0] != version:
                return None
            self._files.move_to_end(path)
            return found[1]

    def put(self, path: str, version: tuple, parsed: KnownHostsFile) -> None:
        with self._lock:
            self._files[path] = (version, parsed)
            self._files.move_to_end(path)
            while len(self._files) > self.size:
                self._files.popitem(last=False)

    def reading(self, path: str) -> threading.Lock:
        return self._reading[zlib.crc32(path.encode(errors="replace")) % len(self._reading)]

    def first_authority_warning(self, path: str) -> bool:
        """True the first time only, for each *path*."""
        with self._lock:
            first = path not in self._warned_authorities
            self._warned_authorities.add(path)
            return first

    def clear(self) -> None:
        with self._lock:
            self._files.clear()
            self._warned_authorities.clear()


def _version(st: os.stat_result) -> tuple:
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


def load_file(
    path: str, log: logging.Logger = default_log, cache: FileCache | None = None
) -> KnownHostsFile | None:
    """*path* parsed (from the cache if it has not changed); None if it is missing or unreadable.

    What the file holds that cannot be used is logged when it is parsed: each
    malformed line, and (once per path and cache) its @cert-authority lines.
    """
    cache = cache if cache is not None else FileCache()
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        log.warning("cannot read known_hosts file %s: %s", path, e)
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    with cache.reading(path):
        parsed = cache.get(path, _version(st))
        if parsed is not None:
            return parsed
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                version, text = _version(os.fstat(f.fileno())), f.read()
        except OSError as e:
            log.warning("cannot read known_hosts file %s: %s", path, e)
            return None
        parsed = KnownHostsFile.parse(text, path)
        _report(parsed, log, cache)
        cache.put(path, version, parsed)
        return parsed


def _report(parsed: KnownHostsFile, log: logging.Logger, cache: FileCache) -> None:
    for lineno, why in parsed.problems:
        log.warning("known_hosts file %s line %d skipped: %s", parsed.path, lineno, why)
    if parsed.cert_authority_lines and cache.first_authority_warning(parsed.path):
        log.warning(
            "%s: @cert-authority lines are not used: host certificates cannot be verified; "
            "list the nodes' host keys too",
            parsed.path,
        )
