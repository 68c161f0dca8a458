"""The wire protocol between the Hub and the node scripts (see scripts/common.sh).

Pure: builds command lines and payloads, parses replies; no I/O.

- argv carries only validated, non-secret values, joined with :func:`shlex.join`;
  every command goes through one fixed launcher (:func:`command_line`);
- stdin carries NUL-separated records: the server's environment as
  ``KEY=VALUE`` (the API token among it), or files as ``NAME``, ``CONTENT``
  pairs for ``put_files.sh``;
- stdout carries one JSON line, the last one (a login banner may come first);
- stderr carries diagnostics for a person, after the launcher's ``@rss``
  line (a banner of the login shell comes before it and is dropped), and
  ``@progress PERCENT MESSAGE`` lines that are relayed while the script runs
  (:class:`LineRelay`) and left out of :attr:`Reply.stderr`;
- the exit code is one of :class:`ExitCode`.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PROGRESS_RE = re.compile(r"@progress (\d{1,3}) (\S.*)")
# The first thing every command prints on stderr: what came before is the login shell's.
BEGIN_MARK = "@rss"


class ExitCode(IntEnum):
    """Exit codes of the node scripts (mirrors the table in scripts/common.sh)."""

    OK = 0
    NOT_RUNNING = 3
    SERVER_DIED = 4
    START_TIMEOUT = 5
    NO_FREE_PORT = 6
    BAD_INPUT = 7
    STOP_FAILED = 8
    NO_SCRIPTS = 9
    CANNOT_WRITE = 10
    SLURM = 11
    IMAGE_MISMATCH = 12
    USAGE = 64


# Run a script file, or (with "-s") a script fed on stdin. A missing file is exit code
# NO_SCRIPTS, so the caller knows to put the scripts there again. Fixed text: the
# values follow as separate argv words, and it reads the same in bash, zsh and tcsh.
# A file is sourced by this bash rather than run by a second one: one bash fewer
# to start for every poll (a fifth of the node's CPU for it); RSS_NAME names the
# script in its messages, as $0 would. (`.` with no more arguments would leave
# the launcher's own to the script: they are shifted first.)
LAUNCHER = (
    f'printf "\\n{BEGIN_MARK}\\n" >&2; if [ "$1" = -s ]; then exec bash "$@"; fi; '
    f'[ -r "$1" ] || exit {ExitCode.NO_SCRIPTS:d}; RSS_NAME=${{1##*/}}; RSS_SCRIPT=$1; shift; '
    '. "$RSS_SCRIPT" "$@"'
)


@dataclass
class Reply:
    """What a script answered: its exit code, its JSON line and its diagnostics."""

    exit_code: int
    data: dict = field(default_factory=dict)
    stderr: str = ""


@dataclass(frozen=True)
class ScriptCall:
    """One run of a node script: its argv (non-secret), stdin and how long it may take."""

    script: str
    args: tuple[str, ...]
    stdin: str = ""
    timeout: float | None = None  # None: bounded by the caller (a start: start_timeout)


def check_words(words: Sequence[str]) -> None:
    """ValueError naming a word that cannot travel as argv through every login shell.

    Quoted as :func:`shlex.join` quotes it, a word means itself to bash, zsh
    and tcsh, except that tcsh expands ``!`` (history) even in ``-c`` and
    within single quotes, and ends a quoted word at a line break.
    """
    for word in words:
        if "!" in word or "\n" in word or "\r" in word:
            raise ValueError(
                f"{word!r} cannot be passed to a node: '!' and line breaks change meaning "
                "in a tcsh or csh login shell"
            )


def command_line(script_path: str | None, args: Sequence[str]) -> str:
    """The command that runs *script_path* with *args* (None: a script fed on stdin).

    ValueError if a word cannot travel (see :func:`check_words`).
    """
    check_words([script_path or "", *args])
    target = ["-s", "--"] if script_path is None else [script_path]
    return shlex.join(["bash", "-c", LAUNCHER, "rss", *target, *args])


def env_payload(env: Mapping[str, str]) -> str:
    """Encode *env* as NUL-separated ``KEY=VALUE`` records."""
    records = []
    for key, value in env.items():
        value = str(value)
        if not _ENV_KEY_RE.fullmatch(key) or "\0" in value:
            raise ValueError(f"environment variable {key!r} cannot be passed to the node")
        records.append(f"{key}={value}\0")
    return "".join(records)


def files_payload(files: Mapping[str, bytes]) -> str:
    """Encode *files* as NUL-separated ``NAME``, ``CONTENT`` records (text, no NUL)."""
    records = []
    for name, data in files.items():
        text = data.decode()
        if "\0" in text or "/" in name or name in ("", ".", ".."):
            raise ValueError(f"file {name!r} cannot be sent to the node")
        records.append(f"{name}\0{text}\0")
    return "".join(records)


def parse_progress(line: str) -> tuple[int, str] | None:
    """``(percent, message)`` from an ``@progress PERCENT MESSAGE`` line, else None."""
    match = _PROGRESS_RE.fullmatch(line.strip())
    if match is None or int(match.group(1)) > 100:
        return None
    return int(match.group(1)), match.group(2)


ProgressCallback = Callable[[int, str], None]


class LineRelay:
    """A write-only text stream that hands each ``@progress`` line to a callback.

    Its ``write`` is :func:`ssh.run_command`'s ``on_stderr``: called with
    stderr as it arrives, in chunks that need not end at a line break.
    """

    def __init__(self, on_progress: ProgressCallback) -> None:
        self._on_progress = on_progress
        self._partial = ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            event = parse_progress(line)
            if event is not None:
                self._on_progress(*event)
        return len(text)

    def flush(self) -> None:
        pass


# bash's notice of a background job killed by a signal: "FILE: line N: PID SIGNAL-TEXT   COMMAND".
_JOB_NOTICE_RE = re.compile(
    r".*: line \d+: +\d+ (Killed|Terminated|Hangup|Aborted|Segmentation fault|Bus error|"
    r"Illegal instruction|Floating point exception|Quit|User defined signal [12])( \(core dumped\))?  "
)


def parse_reply(exit_code: int, stdout: str, stderr: str) -> Reply:
    """Turn a script's output into a :class:`Reply` (JSON on the last stdout line).

    What the login shell printed on stderr before the launcher's mark,
    ``@progress`` lines, and bash's notices of its background jobs killed by a
    signal (``common.sh: line 420:  5947 Killed   setsid "${LAUNCH[@]}" ...``:
    the script's own source, printed when it reaps a server it stopped) are not
    diagnostics: they are left out of ``stderr``.
    """
    lines = [line for line in stdout.splitlines() if line.strip()]
    data: dict = {}
    if lines:
        try:
            data = json.loads(lines[-1])
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
    err_lines = stderr.splitlines()
    if BEGIN_MARK in err_lines:
        err_lines = err_lines[err_lines.index(BEGIN_MARK) + 1 :]
    diagnostics = "\n".join(
        line for line in err_lines if parse_progress(line) is None and not _JOB_NOTICE_RE.match(line)
    )
    return Reply(exit_code=exit_code, data=data, stderr=diagnostics.strip())
