"""Validate a Slurm request: the partition, the resources, the node, the binds, the site options.

Pure: no I/O. The user's values arrive from a form or from a REST request
body and may be hostile; they are checked in two stages, both before any
connection: their format alone (``check_slurm_format``), then against the
partitions sinfo showed and the admin's limits (``validate_slurm_options``).
A refused value raises OptionsError whose message names the field first and
the allowed range. The admin's settings are checked here too; their errors
name the setting. Accepted values later travel as argv words to ``sbatch``.
The site options (account, QOS, reservation, constraint) are slurm_site.py's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ..request import Bind, OptionsError, parse_binds, show_value
from .nodes import HOSTNAME_RE, _valid_ip
from .slurm_gpus import check_gpu_type_format, choose_gpu_type, gpu_counts, gpu_summary
from .slurm_site import (
    SITE_FIELDS,
    SiteChoice,
    SiteOptions,
    check_site_format,
    choose_site,
    listed,
    partition_accounts,
    split_entry,
)

SETTING = "c.RemoteSingularitySpawner."
# Slurm's job states (squeue %T), decided here alone: slurm_job.sh reports them as they are
# and is told which ones to wait out. A job in one of these waits for its allocation:
WAITING_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED"})
# ... and in one of these it holds (or waits for) it; any other state (or GONE) has ended.
HOLDING_STATES = WAITING_STATES | {"RUNNING", "COMPLETING"}
REQUEST_KEYS = ("partition", "cpus", "memory", "gpus", "gpu_type", "time", "host", "binds", *SITE_FIELDS)
RESOURCES = {"cpus": "cpus", "memory": "memory_mb", "gpus": "gpus", "time": "time_minutes"}
DEFAULTS = {"cpus": 1, "memory": "1G", "gpus": 0, "time": "1:00:00"}
TIME_FORMATS = "minutes, MM:SS, H:MM:SS, D-H, D-H:MM or D-H:MM:SS"

_PARTITION_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_COUNT_RE = re.compile(r"[0-9]{1,9}")
_IP_RE = re.compile(r"[0-9A-Fa-f:.]{2,45}")  # an IP address, without an IPv6 %scope
_MEMORY_RE = re.compile(r"([0-9]{1,9})([MGT]?)", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "M": 1, "G": 1024, "T": 1024**2}
# Slurm's time formats: [days-]first[:second[:third]]; without days the fields are
# minutes, minutes:seconds or hours:minutes:seconds, with days hours[:minutes[:seconds]].
_TIME_RE = re.compile(r"(?:([0-9]{1,4})-)?([0-9]{1,7})(?::([0-9]{1,2}))?(?::([0-9]{1,2}))?")
_COUNTS = (
    "nodes_idle", "nodes_total", "cpus_idle", "cpus_total", "cpus_per_node", "memory_mb_per_node",
    "gpus_per_node",
)  # fmt: skip


@dataclass(frozen=True)
class Limits:
    """The admin's settings of one partition: limits (None: no limit from the admin), site options."""

    cpus: int | None = None
    memory_mb: int | None = None
    gpus: int | None = None
    time_minutes: int | None = None
    site: SiteOptions = SiteOptions()


@dataclass(frozen=True)
class Resources:
    cpus: int
    memory_mb: int
    gpus: int
    time_minutes: int
    gpu_type: str | None = None  # a GPU type of the partition's GRES (None: any)

    def to_dict(self) -> dict:
        memory, time = format_memory(self.memory_mb), format_time(self.time_minutes)
        typed = {"gpu_type": self.gpu_type} if self.gpu_type else {}
        return {"cpus": self.cpus, "memory": memory, "gpus": self.gpus, **typed, "time": time}


@dataclass(frozen=True)
class Partition:
    """A partition as sinfo shows it to the user."""

    name: str
    available: bool
    nodes: tuple[str, ...]
    nodes_idle: int
    nodes_total: int
    cpus_idle: int
    cpus_total: int
    cpus_per_node: int
    memory_mb_per_node: int
    gpus_per_node: int
    max_time_minutes: int | None
    default: bool = False
    # The user's accounts here, from their Slurm associations (None: not known, and why).
    accounts: tuple[str, ...] | None = None
    accounts_note: str = ""
    # GPUs of the partition's nodes, and their GRES types (slurm_gpus.py).
    gpus_idle: int = 0
    gpus_total: int = 0
    gpu_types: tuple[str, ...] = ()

    @classmethod
    def from_reply(cls, data: dict) -> Partition:
        """One partition of the JSON reply (keys as the fields); ValueError if malformed."""
        if not isinstance(data, dict):
            raise ValueError(f"a partition is a JSON object, not {type(data).__name__}")
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"partition name {show_value(str(name))} is not a non-empty string")
        nodes = data.get("nodes")
        if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
            raise ValueError(f"partition {show_value(name)}: nodes is not a list of names")
        counts = {key: _reply_count(data.get(key), name, key) for key in _COUNTS}
        max_time = parse_time_limit(data.get("max_time"), name)
        available, default = data.get("available"), data.get("default", False)
        if not isinstance(available, bool) or not isinstance(default, bool):
            raise ValueError(f"partition {show_value(name)}: available or default is not true or false")
        counts |= gpu_counts(data, name, _reply_count)
        return cls(name, available, tuple(nodes), max_time_minutes=max_time, default=default, **counts)

    @classmethod
    def all_from_reply(cls, data: dict) -> list[Partition]:
        """The partitions of ``slurm_job.sh partitions``'s reply, each with the user's accounts there."""
        found = []
        for item in data.get("partitions", []):
            partition = cls.from_reply(item)
            accounts, note = partition_accounts(data, partition.name)
            found.append(replace(partition, accounts=accounts, accounts_note=note))
        return found

    def summary(self) -> str:
        """A few words for a person, e.g. ``2/2 nodes idle, 3/4 CPUs idle``."""
        nodes = f"{self.nodes_idle}/{self.nodes_total} nodes idle"
        text = f"{nodes}, {self.cpus_idle}/{self.cpus_total} CPUs idle{gpu_summary(self)}"
        return text if self.available else text + ", down"


# What sinfo prints as the time limit of a partition that has none.
_NO_LIMIT = ("infinite", "unlimited")


def parse_time_limit(value, partition: str) -> int | None:
    """Minutes of a partition's time limit as sinfo prints it (%l); None: no limit."""
    if not isinstance(value, str):
        raise ValueError(
            f"partition {show_value(partition)}: max_time {show_value(str(value))} is not a string"
        )
    if value.strip().lower() in _NO_LIMIT:
        return None
    try:
        return parse_time(value, "max_time")
    except OptionsError as e:
        raise ValueError(f"partition {show_value(partition)}: {e}") from None


def _reply_count(value, name: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"partition {show_value(name)}: {key} {show_value(str(value))} is not a count")
    return value


@dataclass(frozen=True)
class SlurmRequest:
    partition: str
    resources: Resources
    host: str | None
    binds: tuple[Bind, ...]
    site: SiteChoice = SiteChoice()

    def to_dict(self) -> dict:
        """The request as ``user_options``: validating it again gives the same request."""
        binds = [b.spec for b in self.binds]
        resources, site = self.resources.to_dict(), self.site.to_dict()
        return {"partition": self.partition, **resources, "host": self.host, "binds": binds, **site}


def job_ended(state: str) -> bool:
    """Whether a job in *state* (as slurm_job.sh reports it; '' unknown) holds nothing any more."""
    return bool(state) and state not in HOLDING_STATES


def format_memory(mb: int) -> str:
    """``2G`` when a whole number of GB (or ``1T``), else ``2000M``."""
    for unit in ("T", "G"):
        if mb % _MEMORY_UNITS[unit] == 0 and mb >= _MEMORY_UNITS[unit]:
            return f"{mb // _MEMORY_UNITS[unit]}{unit}"
    return f"{mb}M"


def format_time(minutes: int) -> str:
    """``H:MM:SS``, e.g. 90 -> ``1:30:00``."""
    return f"{minutes // 60}:{minutes % 60:02d}:00"


_SHOW = {"memory_mb": format_memory, "time_minutes": format_time}  # a value as the user writes it


def parse_memory(value, field: str = "memory") -> int:
    """MB from ``4G``, ``512M``, ``1T``, ``4096`` or an int (MB); more than 0."""
    if isinstance(value, int) and not isinstance(value, bool):
        mb = value
    else:
        match = _MEMORY_RE.fullmatch(value.strip()) if isinstance(value, str) else None
        if match is None:
            raise OptionsError(f"{field} {show_value(str(value))} is not a memory size (MB, or 512M, 4G, 1T)")
        mb = int(match[1]) * _MEMORY_UNITS[match[2].upper()]
    if mb <= 0:
        raise OptionsError(f"{field} {show_value(str(value))} is not more than 0")
    return mb


def parse_time(value, field: str = "time") -> int:
    """Minutes from an int or one of Slurm's time formats; seconds round up; more than 0."""
    if isinstance(value, int) and not isinstance(value, bool):
        minutes = value
    else:
        match = _TIME_RE.fullmatch(value.strip()) if isinstance(value, str) else None
        if match is None:
            raise OptionsError(f"{field} {show_value(str(value))} is not a duration ({TIME_FORMATS})")
        days, fields = match[1], [int(f) for f in match.groups()[1:] if f is not None]
        names = "hms"[: len(fields)] if days is not None else ("m", "ms", "hms")[len(fields) - 1]
        n = dict.fromkeys("hms", 0) | dict(zip(names, fields, strict=True))
        # The first field has no upper bound (90:00 is 90 minutes), the others do.
        if any(n[k] > 59 for k in names[1:]) or (days and n["h"] > 23):
            raise OptionsError(f"{field} {show_value(str(value))} has a field out of range ({TIME_FORMATS})")
        minutes = (int(days or 0) * 24 + n["h"]) * 60 + n["m"] + (n["s"] > 0)
    if minutes <= 0:
        raise OptionsError(f"{field} {show_value(str(value))} is not more than 0")
    return minutes


def _count(value, field: str) -> int:
    """A whole number: an int, or a string of digits from a form."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _COUNT_RE.fullmatch(value.strip()):
        return int(value)
    raise OptionsError(f"{field} {show_value(str(value))} is not a whole number")


_PARSERS = {"cpus": _count, "memory": parse_memory, "gpus": _count, "time": parse_time}


def _resources(entry) -> dict:
    """The resource fields of an admin setting's entry, as keyword arguments of Limits/Resources."""
    if entry is None:
        return {}
    if not isinstance(entry, Mapping):
        raise ValueError(f"{show_value(str(entry))} is not a dict with any of cpus, memory, gpus, time")
    unknown = sorted(set(entry) - set(RESOURCES), key=str)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(show_value(str(k)) for k in unknown)}")
    fields = {}
    for key, value in entry.items():
        parsed = _PARSERS[key](value, key)
        if parsed < (0 if key == "gpus" else 1):
            raise OptionsError(f"{key} {show_value(str(value))} is less than {0 if key == 'gpus' else 1}")
        fields[RESOURCES[key]] = parsed
    return fields


def parse_partition_limits(value) -> dict[str, Limits]:
    """The ``slurm_partitions`` setting: names, or name -> limits; empty: all sinfo shows."""
    prefix = f"{SETTING}slurm_partitions: "
    if isinstance(value, (list, tuple)):
        value = dict.fromkeys(value)
    if not isinstance(value, Mapping):
        raise ValueError(f"{prefix}not a list of partition names or a dict of name -> limits")
    limits = {}
    for name, entry in value.items():
        if not isinstance(name, str) or not _PARTITION_RE.fullmatch(name):
            raise ValueError(
                f"{prefix}{show_value(str(name))} is not a partition name (letters, digits, _ . -)"
            )
        try:
            resources, site = split_entry(entry)
            limits[name] = Limits(**_resources(resources), site=site)
        except ValueError as e:
            raise ValueError(f"{prefix}partition {name}: {e}") from None
    return limits


def parse_defaults(value) -> Resources:
    """The ``slurm_default_resources`` setting; missing keys: 1 CPU, 1G, no GPU, one hour."""
    try:
        return Resources(**{**_resources(DEFAULTS), **_resources(value)})
    except ValueError as e:
        raise ValueError(f"{SETTING}slurm_default_resources: {e}") from None


def check_slurm_format(raw) -> dict:
    """Stage 1, no connection: each value's format alone; a normalized dict (None: not given)."""
    raw = dict(raw or {})
    unknown = sorted(set(raw) - set(REQUEST_KEYS), key=str)
    if unknown:
        raise OptionsError(f"unknown option(s): {', '.join(show_value(str(k)) for k in unknown)}")
    given = {key: value for key, value in raw.items() if value is not None and value != ""}
    partition, host = given.get("partition"), given.get("host")
    if partition is not None and not (isinstance(partition, str) and _PARTITION_RE.fullmatch(partition)):
        raise OptionsError(
            f"partition {show_value(str(partition))} is not a name of letters, digits, _ . - (1 to 64)"
        )
    if host is not None and not (
        isinstance(host, str)
        and (HOSTNAME_RE.fullmatch(host) or (_IP_RE.fullmatch(host) and _valid_ip(host)))
    ):
        raise OptionsError(f"host {show_value(str(host))} is not a host name or an IP address")
    values = {RESOURCES[k]: parse(given[k], k) if k in given else None for k, parse in _PARSERS.items()}
    binds, site = parse_binds(raw.get("binds")), check_site_format(given)
    values["gpu_type"] = check_gpu_type_format(given.get("gpu_type"))
    return {"partition": partition, **values, "host": host, "binds": binds, "site": site}


def allowed_partitions(partitions: Mapping[str, Partition], limits: Mapping[str, Limits]) -> list[str]:
    """The partitions sinfo shows that the admin's list (if any) allows, in sinfo's order."""
    return [name for name in partitions if not limits or name in limits]


def default_partition(partitions: Mapping[str, Partition], limits: Mapping[str, Limits]) -> str | None:
    """Slurm's default partition, else the admin's first, else sinfo's first; one that is up if any."""
    allowed = allowed_partitions(partitions, limits)
    order = [n for n in allowed if partitions[n].default] + [n for n in limits if n in allowed] + allowed
    return next((n for n in order if partitions[n].available), order[0] if order else None)


def effective_limits(partition: Partition, limits: Limits) -> Limits:
    """The stricter of the admin's limits and the partition's nodes (time None: no limit), and
    the admin's site options."""

    def least(*values):
        return min((v for v in values if v is not None), default=None)

    return replace(
        limits,
        cpus=least(limits.cpus, partition.cpus_per_node),
        memory_mb=least(limits.memory_mb, partition.memory_mb_per_node),
        gpus=least(limits.gpus, partition.gpus_per_node),
        time_minutes=least(limits.time_minutes, partition.max_time_minutes),
    )


def lowered_defaults(defaults: Resources, limits: Limits) -> Resources:
    """The defaults, each lowered to its limit (a default is a convenience, not a request)."""
    lowered = {key: getattr(limits, key) for key in RESOURCES.values() if getattr(limits, key) is not None}
    return replace(defaults, **{key: min(getattr(defaults, key), limit) for key, limit in lowered.items()})


def validate_slurm_options(
    raw, partitions: Mapping[str, Partition], limits: Mapping[str, Limits], defaults: Resources
) -> SlurmRequest:
    """Stage 2: the format, then the values against the partition and the admin's limits."""
    given = check_slurm_format(raw)
    allowed = allowed_partitions(partitions, limits)
    if not allowed:
        raise OptionsError("partition: no Slurm partition is available to you right now")
    name = given["partition"] or default_partition(partitions, limits)
    if name not in allowed:
        raise OptionsError(f"partition {show_value(name)} is not one you may use: {listed(allowed)}")
    partition = partitions[name]
    if not partition.available:
        up = [n for n in allowed if partitions[n].available]
        raise OptionsError(f"partition {name} is down; please choose another: {listed(up) or 'none is up'}")
    top = effective_limits(partition, limits.get(name, Limits()))
    chosen = lowered_defaults(defaults, top)
    for field, key in RESOURCES.items():
        value, low, high, show = given[key], int(key != "gpus"), getattr(top, key), _SHOW.get(key, str)
        if value is None:
            continue
        if value < low or (high is not None and value > high):
            bounds = f"{show(low)} to {show(high)}" if high is not None else f"at least {show(low)}"
            raise OptionsError(f"{field} {show(value)} is out of range for partition {name}: {bounds}")
        chosen = replace(chosen, **{key: value})
    chosen = replace(chosen, gpu_type=choose_gpu_type(given["gpu_type"], chosen.gpus, partition))
    host = given["host"]
    if host is not None and host not in partition.nodes:
        raise OptionsError(
            f"host {show_value(host)} is not a node of partition {name}: {listed(partition.nodes)}"
        )
    site = choose_site(given["site"], limits.get(name, Limits()).site, partition)
    return SlurmRequest(partition=name, resources=chosen, host=host, binds=given["binds"], site=site)
