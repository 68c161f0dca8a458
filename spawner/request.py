"""The request: what a user asks for (the node, the extra bind paths) and their login name.

Pure: no I/O. Every value arrives from a form or from a REST request body
and may be hostile, so everything is checked against a narrow grammar and
rejected with a message that names the offending value. Accepted values are
later passed to the node as argv words, never spliced into a shell string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

MAX_BINDS = 32
MAX_PATH = 1024
BIND_MODES = ("ro", "rw")

# Path characters that mean the same to the shell, to singularity's --bind
# parser (which splits on ',' and ':') and to a reader of the log: letters
# and digits (any script), and a few punctuation marks. Space is allowed:
# a bind travels as one argv word.
_PATH_RE = re.compile(r"/[\w ./+@=%~-]*")
# A login name a POSIX system and a shell word can both carry.
_LOGIN_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}")


class OptionsError(ValueError):
    """A user-supplied value was refused; the message names it."""


@dataclass(frozen=True)
class Bind:
    source: str
    dest: str
    mode: str = "rw"

    @property
    def spec(self) -> str:
        """The ``--bind`` value, ``src:dest:mode``."""
        return f"{self.source}:{self.dest}:{self.mode}"


@dataclass(frozen=True)
class UserOptions:
    host: str
    binds: tuple[Bind, ...] = ()

    def to_dict(self) -> dict:
        return {"host": self.host, "binds": [b.spec for b in self.binds]}


def _check_path(path: str, what: str, spec: str) -> str:
    if len(path) > MAX_PATH:
        raise OptionsError(f"bind {show_value(spec)}: the {what} is longer than {MAX_PATH} characters")
    if not path.startswith("/"):
        raise OptionsError(f"bind {show_value(spec)}: the {what} {path!r} is not an absolute path")
    if not _PATH_RE.fullmatch(path):
        raise OptionsError(
            f"bind {show_value(spec)}: the {what} {path!r} contains a character that is not allowed "
            "(allowed: letters, digits, space and / . _ - + @ = % ~)"
        )
    if any(part in (".", "..") for part in path.split("/")):
        raise OptionsError(f"bind {show_value(spec)}: the {what} {path!r} contains '.' or '..'")
    return path


def show_value(value: str, limit: int = 80) -> str:
    """repr() of a user value, shortened so a hostile value cannot flood a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def parse_bind(spec: str) -> Bind:
    """Parse one ``src[:dest[:ro|rw]]`` bind specification."""
    if not isinstance(spec, str):
        raise OptionsError(f"bind {spec!r} is not a string")
    fields = spec.strip().split(":")
    if len(fields) > 3:
        raise OptionsError(f"bind {show_value(spec)} has more than three ':'-separated fields")
    source = _check_path(fields[0], "source", spec)
    dest = _check_path(fields[1], "destination", spec) if len(fields) > 1 and fields[1] else source
    mode = fields[2] if len(fields) > 2 else "rw"
    if mode not in BIND_MODES:
        raise OptionsError(f"bind {show_value(spec)}: option {show_value(mode)} is not one of ro, rw")
    return Bind(source, dest, mode)


def parse_binds(value: str | Sequence[str] | None) -> tuple[Bind, ...]:
    """Parse binds given as a list of specs or as one ``;``-separated string."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        specs: Iterable = value.split(";")
    elif isinstance(value, (list, tuple)):
        specs = value
    else:
        raise OptionsError(
            f"binds must be a list of strings or a ';'-separated string, not {type(value).__name__}"
        )
    binds = tuple(parse_bind(spec) for spec in specs if not (isinstance(spec, str) and not spec.strip()))
    if len(binds) > MAX_BINDS:
        raise OptionsError(f"{len(binds)} binds requested; at most {MAX_BINDS} are allowed")
    return binds


def validate_user_options(
    raw: Mapping | None, node_labels: Sequence[str], addresses: Mapping[str, str] | None = None
) -> UserOptions:
    """Check ``user_options`` (from the form or the REST API).

    The host must be one of *node_labels*, or an address of *addresses*
    (address -> label: a node listed as ``name:ip`` may be asked for by
    either); no host means the first (default) node. Unknown keys are
    refused, so a typo does not pass silently.
    """
    raw = dict(raw or {})
    unknown = sorted(set(raw) - {"host", "binds"})
    if unknown:
        raise OptionsError(f"unknown option(s): {', '.join(show_value(str(k)) for k in unknown)}")
    if not node_labels:
        raise OptionsError("no compute node is configured")
    host = raw.get("host") or node_labels[0]
    if isinstance(host, str) and host not in node_labels:
        host = (addresses or {}).get(host, host)
    if not isinstance(host, str) or host not in node_labels:
        raise OptionsError(
            f"host {show_value(str(host))} is not one of the configured nodes: {', '.join(node_labels)}"
        )
    return UserOptions(host=host, binds=parse_binds(raw.get("binds")))


def options_from_form(formdata: Mapping[str, Sequence[str]]) -> dict:
    """Map the form's fields (lists of strings) to ``user_options``."""
    options: dict = {}
    host = (formdata.get("host") or [""])[0].strip()
    if host:
        options["host"] = host
    binds = [line.strip() for value in formdata.get("binds") or [] for line in value.splitlines()]
    binds = [b for part in binds for b in part.split(";") if b.strip()]
    if binds:
        options["binds"] = binds
    return options


def check_login_name(name: str) -> str:
    """A login name must be safe as a path component and a shell word."""
    if not isinstance(name, str) or not _LOGIN_RE.fullmatch(name):
        raise OptionsError(
            f"login name {show_value(str(name))} is not a valid login name "
            "(letters, digits and _ . @ -, not starting with . or -, at most 64)"
        )
    return name
