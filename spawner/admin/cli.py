"""The console script's command line, made from Invoke tasks (for command.py).

``remote-singularity-spawner`` is an argparse front end over the very Invoke
tasks that ``invoke check|deploy`` runs in a clone: one source of options,
each task's signature (name, default) and its help dict. argparse gives what
Invoke's ``Program`` does not: only these options (none of Invoke's core
options), ``-h``/``--help`` as help at every level and no other short
option, no abbreviated option names, the options named *shared* (the config
file) taken before the subcommand too (the subcommand's value wins), and
exit status 2 for a bad command line. Knows nothing of what the tasks do.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import textwrap
from collections.abc import Mapping, Sequence

from invoke import Context, Exit, Task


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written (docstrings, tables); option help wrapped."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)

    def _split_lines(self, text: str, width: int) -> list[str]:
        # A file name such as remote-singularity-spawner_ca.pub stays on one line.
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def parameters(task: Task) -> list[tuple[str, object]]:
    """(name, default) of each of the task's options: its parameters after the context."""
    found = list(inspect.signature(task.body).parameters.values())[1:]
    return [(p.name, p.default) for p in found]


def option_help(task: Task, name: str, default: object) -> str:
    """The task's help for *name*, with the default when the text does not say it (not for flags)."""
    text = task.help.get(name, "")
    if not isinstance(default, bool) and "default" not in text:
        text += f" (default: {default if default != '' else 'none'})"
    return text.replace("%", "%%")  # argparse formats help with %


def _add_option(
    parser: argparse.ArgumentParser, task: Task, name: str, default: object, metavars: Mapping[str, str],
    only_if_given: bool = False,
) -> None:  # fmt: skip
    """--NAME for the task's parameter; with *only_if_given*, left out of the result unless given."""
    flag, text = f"--{name.replace('_', '-')}", option_help(task, name, default)
    value = argparse.SUPPRESS if only_if_given else default
    if isinstance(default, bool):
        parser.add_argument(flag, action="store_true", default=value, help=text)
    else:
        kind = type(default) if isinstance(default, (int, float)) else str
        metavar = metavars.get(name, name.upper())
        parser.add_argument(flag, type=kind, default=value, metavar=metavar, help=text)


def build_parser(
    prog: str,
    tasks: Sequence[Task],
    *,
    description: str = "",
    epilog: str = "",
    version: str = "",
    shared: Sequence[str] = (),
    metavars: Mapping[str, str] | None = None,
) -> argparse.ArgumentParser:
    """``PROG [--SHARED ...] TASK [--OPTION ...]``: a subcommand per task, its options from the task.

    The *shared* options are on both levels: before the subcommand (as the first task that
    has it defines it) and after it, where it is only set when given, so that it wins.
    """
    metavars = metavars or {}
    top = argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=_Formatter, allow_abbrev=False
    )
    if version:
        top.add_argument("--version", action="version", version=f"%(prog)s {version}")
    added = set()
    for task in tasks:
        for name, default in parameters(task):
            if name in shared and name not in added:
                _add_option(top, task, name, default, metavars)
                added.add(name)
    commands = top.add_subparsers(dest="command", metavar="COMMAND", title="commands", required=True)
    for task in tasks:
        doc = inspect.cleandoc(task.__doc__ or "")
        sub = commands.add_parser(
            task.name, help=doc.split("\n", 1)[0], description=doc, epilog=epilog,
            formatter_class=_Formatter, allow_abbrev=False,
        )  # fmt: skip
        for name, default in parameters(task):
            _add_option(sub, task, name, default, metavars, only_if_given=name in shared)
    return top


def run(parser: argparse.ArgumentParser, tasks: Sequence[Task], argv: Sequence[str] | None = None) -> int:
    """Run the task *argv* names; its exit status (an Exit's code and message, on stderr).

    A bad command line or a help request ends in argparse (SystemExit 2, or 0).
    """
    given = vars(parser.parse_args(argv))
    task = next(t for t in tasks if t.name == given["command"])
    try:
        task(Context(), **{name: given[name] for name, _ in parameters(task)})
    except Exit as e:
        if e.message:
            print(e.message, file=sys.stderr)
        return e.code
    return 0
