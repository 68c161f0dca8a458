"""Slurm's value grammars: names, node lists and feature expressions, as data.

Pure: no I/O. Each ``*_error`` function returns "" for a value of its grammar,
else a few words saying what is wrong, for a message that also names the field
and the value. The grammars are Slurm 22.05's (sbatch(1), and how slurmctld and
its hostlist parser read them), narrowed where Slurm would take something no
one means: every value travels as one argv word and never meets a shell, but
what no Slurm option needs is refused all the same.
"""

from __future__ import annotations

import re

MAX_NAME = 64
MAX_FEATURES = 256  # characters of a feature expression
MAX_NODELIST = 1024  # characters of a node list
MAX_HOSTS = 64 * 1024  # hosts one bracketed name may stand for (Slurm's MAX_RANGE)
MAX_NAMES = 16  # names in a comma-separated list (reservations)

# An account, QOS, reservation, feature or node name: no leading '-' or '.'.
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
NAME_RULE = f"letters, digits and _ . -, at most {MAX_NAME}, not starting with . or -"
_NAME_RE = re.compile(_NAME)

# Feature expressions (sbatch --constraint): the tokens, in the order they are tried.
_FEATURE_TOKEN_RE = re.compile(rf"(?P<name>{_NAME})|\*(?P<count>[0-9]+)|(?P<op>[&|])|(?P<mark>[()\[\]])")
MAX_COUNT = 999_999
_HINTS = {"!": "; Slurm 22.05's --constraint has no NOT", ",": "; join features with & or |",
          "*": "; a count is * and a number"}  # fmt: skip

# Node lists (sbatch --exclude): name[ranges] pieces; the last bracket ends its host.
_RANGE = r"[0-9]{1,9}(?:-[0-9]{1,9})?"
_BRACKET = rf"\[{_RANGE}(?:,{_RANGE})*\]"
_HOST = rf"{_NAME}(?:(?:{_BRACKET}[A-Za-z0-9_.-]*)*{_BRACKET})?"
_NODELIST_RE = re.compile(rf"{_HOST}(?:,{_HOST})*")
_HOST_RE = re.compile(_HOST)
_RANGES_RE = re.compile(r"\[([^\]]*)\]")


def name_error(text: str) -> str:
    """An account, QOS, reservation or node name."""
    if len(text) > MAX_NAME:
        return f"longer than {MAX_NAME} characters"
    return "" if _NAME_RE.fullmatch(text) else f"a name is {NAME_RULE}"


def names_error(text: str) -> str:
    """One name or several, comma-separated (sbatch --reservation)."""
    names = text.split(",")
    if len(names) > MAX_NAMES:
        return f"more than {MAX_NAMES} names"
    return next((f"{name!r}: {e}" for name in names if (e := name_error(name))), "")


def nodelist_error(text: str) -> str:
    """A hostlist expression: ``node[01-04,07],gpu1``, ``rack[1-2]-n[1-8]``."""
    if len(text) > MAX_NODELIST:
        return f"longer than {MAX_NODELIST} characters"
    if not _NODELIST_RE.fullmatch(text):
        return "not a list of node names, each with optional [ranges] such as node[01-04,07], comma-separated"
    for host in _HOST_RE.finditer(text):
        hosts = 1
        for ranges in _RANGES_RE.findall(host[0]):
            count = 0
            for item in ranges.split(","):
                low, _, high = item.partition("-")
                if int(high or low) < int(low):
                    return f"the range {item} in {host[0]} runs backwards"
                count += int(high or low) - int(low) + 1
            hosts *= count
        if hosts > MAX_HOSTS:
            return f"{host[0]} stands for more than {MAX_HOSTS} nodes"
    return ""


class _Refused(ValueError):
    pass


class _Features:
    """A recursive-descent reading of one feature expression; raises _Refused saying why.

    expression := term (op term)*            op: & (AND) or | (OR)
    term       := operand [*count] | bracket (one bracket at most, not in parentheses)
    operand    := name | ( name (op name)* ) (parentheses do not nest, hold no count)
    bracket    := [ operand (| operand)+ ]   matching OR, no counts
                | [ operand*count (& operand*count)+ ]   multiple counts, each with a count
    """

    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str, int]] = []  # (kind, text, position)
        at = 0
        while at < len(text):
            match = _FEATURE_TOKEN_RE.match(text, at)
            if match is None:
                raise _Refused(
                    f"{text[at]!r} at character {at + 1} is not part of one{_HINTS.get(text[at], '')}"
                )
            kind = match.lastgroup
            value = match[kind]
            if kind == "name" and len(value) > MAX_NAME:
                raise _Refused(f"the feature name at character {at + 1} is longer than {MAX_NAME} characters")
            if kind == "count" and not 0 < int(value) <= MAX_COUNT:
                raise _Refused(f"the count at character {at + 1} is not 1 to {MAX_COUNT}")
            self.tokens.append((kind if kind in ("name", "count") else value, value, at + 1))
            at = match.end()
        self.tokens.append(("end", "", len(text) + 1))
        self.at = 0

    def peek(self) -> str:
        return self.tokens[self.at][0]

    def take(self, *kinds: str) -> str:
        kind, value, position = self.tokens[self.at]
        if kind not in kinds:
            wanted = " or ".join("a feature name" if k == "name" else f"'{k}'" for k in kinds)
            found = "the end" if kind == "end" else repr(f"*{value}" if kind == "count" else value)
            raise _Refused(f"expected {wanted} at character {position}, found {found}")
        self.at += 1
        return kind

    def operand(self) -> None:
        if self.take("name", "(") == "name":
            return
        self.take("name")
        while self.peek() in ("&", "|"):
            self.take("&", "|")
            self.take("name")
        self.take(")")

    def counted(self) -> bool:
        """An operand and, if there is one, its count; whether it had one."""
        self.operand()
        return self.peek() == "count" and bool(self.take("count"))

    def bracket(self) -> None:
        self.take("[")
        counts, ops = [self.counted()], set()
        while self.peek() in ("&", "|"):
            ops.add(self.take("&", "|"))
            counts.append(self.counted())
        self.take("]")
        if len(counts) < 2 or len(ops) > 1:
            raise _Refused("[...] holds two or more features joined by | only, or by & only")
        if ops == {"|"} and any(counts):
            raise _Refused("[a|b] (matching OR) takes no counts")
        if ops == {"&"} and not all(counts):
            raise _Refused("[a*N&b*M] (multiple counts) needs a count on each feature")

    def expression(self) -> None:
        brackets = 0
        while True:
            if self.peek() == "[":
                brackets += 1
                if brackets > 1:
                    raise _Refused("Slurm takes one [...] per job")
                self.bracket()
            else:
                self.counted()
            if self.peek() not in ("&", "|"):
                break
            self.take("&", "|")
        self.take("end")


def features_error(text: str) -> str:
    """A feature expression (sbatch --constraint): names, & | [] () and *counts; no '!'."""
    if len(text) > MAX_FEATURES:
        return f"longer than {MAX_FEATURES} characters"
    try:
        _Features(text).expression()
    except _Refused as e:
        return str(e)
    return ""
