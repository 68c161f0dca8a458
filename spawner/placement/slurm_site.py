"""What the site adds to a job: options users choose per partition, and fixed sbatch words.

Site options: an account, a QOS, a reservation and a constraint (node
features), each offered in a partition only where the admin's
``slurm_partitions`` entry enables it, as a list of allowed values or a free
field checked by Slurm's grammar (slurm_grammar.py). A user's value is
checked in two stages like the rest of the request: its format alone
(:func:`check_site_format`), then against what its partition offers
(:func:`choose_site`). Accepted values reach sbatch as one argv word each
(``slurm_job.sh submit --account A``...).

``slurm_sbatch_args``: the site's own sbatch words, the same for every job
(:func:`check_sbatch_args`).

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

from ..request import OptionsError, show_value
from .slurm_grammar import features_error, name_error, names_error, nodelist_error

SETTING = "c.RemoteSingularitySpawner."
SITE_FIELDS = ("account", "qos", "reservation", "constraint")  # user_options keys; sbatch options
FREE = "free"  # any value of the field's grammar
ASSOCIATIONS = "associations"  # accounts: those of the user's Slurm associations in the partition
# The key of each field in a slurm_partitions entry, and what it may be besides a list.
SETTING_KEYS = {
    "accounts": "account",
    "qos": "qos",
    "reservations": "reservation",
    "constraint": "constraint",
}
_INSTEAD_OF_A_LIST = {"accounts": ('"associations"', ASSOCIATIONS), "reservations": ("True", FREE),
                      "constraint": ("True", FREE)}  # fmt: skip
# A user's value: its grammar and what it is called in a message.
_GRAMMARS = {
    "account": (name_error, "a Slurm account name"),
    "qos": (name_error, "a Slurm QOS name"),
    "reservation": (names_error, "a Slurm reservation name (or several, comma-separated)"),
    "constraint": (features_error, "a Slurm feature expression"),
}
# The form: a field's label, what leaving it empty means, and what a free field takes.
_FORM = {
    "account": ("Account", "your default account", "an account"),
    "qos": ("QOS", "the default QOS", "a QOS"),
    "reservation": ("Reservation", "none", "a reservation's name, or several comma-separated"),
    "constraint": ("Node features (constraint)", "none", "e.g. a100, intel&ib, [rack1|rack2]"),
}

# Options the spawner gives sbatch itself, or that would override them.
SBATCH_OWN = (
    "wrap", "output", "error", "job-name", "partition", "cpus-per-task", "mem", "time", "gpus",
    "nodelist", "chdir", "parsable", "nodes", "ntasks", "mem-per-cpu", "mem-per-gpu",
    "gpus-per-node", "gpus-per-task", "cpus-per-gpu", "wait", "test-only", "array",
    "requeue", "no-requeue",
)  # fmt: skip
MAX_SBATCH_ARG = 1024
# Node lists and feature expressions, one argv word each; no '!' (a tcsh login shell expands it).
_SBATCH_VALUE = "letters, digits and _ . , : / @ % + = - [ ] ( ) | & * ?"
_SBATCH_ARG_RE = re.compile(r"--([a-z][a-z0-9-]*)(?:=([A-Za-z0-9_.,:/@%+=()\[\]|&*?-]+))?")
# sbatch options whose value has a grammar, and what that value is called. --exclude takes
# a file name too (a value with a '/').
_SBATCH_GRAMMARS = {
    "account": (name_error, "a Slurm account name"),
    "qos": (name_error, "a Slurm QOS name"),
    "reservation": (names_error, "a list of Slurm reservation names"),
    "constraint": (features_error, "a Slurm feature expression"),
    "prefer": (features_error, "a Slurm feature expression"),
    "exclude": (lambda v: "" if "/" in v else nodelist_error(v), "a Slurm node list or a file name"),
}


def _set_fields(value) -> dict:
    """The fields of a dataclass *value* that are not None, by name."""
    return {f.name: getattr(value, f.name) for f in fields(value) if getattr(value, f.name) is not None}


@dataclass(frozen=True)
class SiteOptions:
    """What one partition offers, per field: its allowed values, FREE or ASSOCIATIONS (None: not offered)."""

    account: tuple[str, ...] | str | None = None
    qos: tuple[str, ...] | str | None = None
    reservation: tuple[str, ...] | str | None = None
    constraint: tuple[str, ...] | str | None = None

    def offered(self) -> dict:
        return _set_fields(self)


@dataclass(frozen=True)
class SiteChoice:
    """What the user chose (None: not given; Slurm's default)."""

    account: str | None = None
    qos: str | None = None
    reservation: str | None = None
    constraint: str | None = None

    def to_dict(self) -> dict:
        """The values given, as ``user_options`` (and as slurm_job.sh's options)."""
        return _set_fields(self)


def listed(names: Sequence[str], limit: int = 20) -> str:
    """Names for a message; a long list is cut short."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


# --- the admin's settings -------------------------------------------------------------------


def _offer(key: str, value) -> tuple[str, ...] | str:
    """One site-option key of a slurm_partitions entry; ValueError naming it."""
    field = SETTING_KEYS[key]
    instead = _INSTEAD_OF_A_LIST.get(key)
    if instead is not None and (value is True if instead[1] == FREE else value == ASSOCIATIONS):
        return instead[1]
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        either = f"{instead[0]} or " if instead else ""
        raise ValueError(f"{key} {show_value(str(value))} is not {either}a non-empty list")
    check, what = _GRAMMARS[field]
    if field == "reservation":
        check, what = name_error, "a Slurm reservation name"
    for item in value:
        error = check(item) if isinstance(item, str) else "not a string"
        if error:
            raise ValueError(f"{key}: {show_value(str(item))} is not {what}: {error}")
    return tuple(dict.fromkeys(value))


def split_entry(entry) -> tuple[object, SiteOptions]:
    """A slurm_partitions entry as (its resource limits, its site options); ValueError naming a key."""
    if not isinstance(entry, Mapping) or not set(entry) & set(SETTING_KEYS):
        return entry, SiteOptions()
    offers = {SETTING_KEYS[key]: _offer(key, value) for key, value in entry.items() if key in SETTING_KEYS}
    return {k: v for k, v in entry.items() if k not in SETTING_KEYS}, SiteOptions(**offers)


def wants_associations(setting) -> bool:
    """Whether a partition of the slurm_partitions setting offers the user's associations."""
    entries = setting.values() if isinstance(setting, Mapping) else ()
    return any(isinstance(e, Mapping) and e.get("accounts") == ASSOCIATIONS for e in entries)


def check_sbatch_args(value, limits: Mapping | None = None) -> tuple[str, ...]:
    """The ``slurm_sbatch_args`` setting: ``--name`` or ``--name=value`` words sbatch gets as they are.

    *limits*: the partitions' settings (parse_partition_limits); an option users choose in
    one of them (``.site``) is refused here.
    """
    prefix = f"{SETTING}slurm_sbatch_args: "
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{prefix}not a list of words, but {type(value).__name__}")
    for item in value:
        match = _SBATCH_ARG_RE.fullmatch(item) if isinstance(item, str) else None
        if match is None or len(item) > MAX_SBATCH_ARG:
            raise ValueError(
                f"{prefix}{show_value(str(item))} is not one word --name or --name=value of at most "
                f"{MAX_SBATCH_ARG} characters (name: a-z 0-9 -; value: {_SBATCH_VALUE})"
            )
        # sbatch takes an unambiguous abbreviation of a long option as the option.
        name, option_value = match[1], match[2]
        own = next((o for o in SBATCH_OWN if o.startswith(name)), None)
        if own is not None:
            raise ValueError(f"{prefix}{show_value(item)} sets --{own}, which the spawner sets itself")
        for field in SITE_FIELDS:
            where = [p for p, entry in (limits or {}).items() if getattr(entry.site, field) is not None]
            if where and field.startswith(name):
                raise ValueError(
                    f"{prefix}{show_value(item)} sets --{field}, which slurm_partitions lets users "
                    f"choose (partition {listed(where)})"
                )
        option, (check, what) = next(
            ((o, g) for o, g in _SBATCH_GRAMMARS.items() if o.startswith(name)), (None, (None, ""))
        )
        error = "" if check is None else "needs =value" if option_value is None else check(option_value)
        if error:
            raise ValueError(f"{prefix}{show_value(item)}: the value of --{option} is not {what}: {error}")
    return tuple(value)


# --- the user's choice ----------------------------------------------------------------------


def check_site_format(given: Mapping) -> SiteChoice:
    """Stage 1, no connection: each site option's format alone; OptionsError naming it."""
    chosen = {}
    for field, (check, what) in _GRAMMARS.items():
        value = given.get(field)
        if value is None:
            continue
        if not isinstance(value, str):
            raise OptionsError(f"{field} {show_value(str(value))} is not a string")
        error = check(value)
        if error:
            raise OptionsError(f"{field} {show_value(value)} is not {what}: {error}")
        chosen[field] = value
    return SiteChoice(**chosen)


def partition_accounts(reply: Mapping, partition: str) -> tuple[tuple[str, ...] | None, str]:
    """The accounts of the user's associations usable in *partition*, from the reply of
    ``slurm_job.sh partitions --associations``; (None, why) when they are not known.
    ValueError if the reply is malformed."""
    if reply.get("accounting") is False:
        return None, "Slurm accounting is off on this cluster, so it has no accounts to choose from"
    associations = reply.get("associations")
    if not isinstance(associations, list):
        error = reply.get("associations_error") or "they were not asked for"
        return None, f"Slurm could not tell your accounts ({error})"
    accounts = []
    for item in associations:
        account, where = (item.get("account"), item.get("partition")) if isinstance(item, dict) else (0, 0)
        if not isinstance(account, str) or not isinstance(where, str):
            raise ValueError(f"an association is not {{account, partition}} but {show_value(str(item))}")
        if where in ("", partition) and not name_error(account) and account not in accounts:
            accounts.append(account)
    return tuple(accounts), ""


def choose_site(choice: SiteChoice, site: SiteOptions, partition) -> SiteChoice:
    """Stage 2: each value given against what *partition* (a slurm_request.Partition) offers."""
    name = partition.name
    for field, value in choice.to_dict().items():
        offer = getattr(site, field)
        if offer is None:
            raise OptionsError(
                f"{field} {show_value(value)} cannot be chosen: partition {name} offers no choice of {field}"
            )
        if offer == ASSOCIATIONS:
            if partition.accounts is None:
                why = partition.accounts_note
                raise OptionsError(f"{field} {show_value(value)} cannot be chosen in partition {name}: {why}")
            offer = partition.accounts
        if offer != FREE and value not in offer:
            raise OptionsError(
                f"{field} {show_value(value)} is not one you may use in partition {name}: "
                f"{listed(offer) or 'none'}"
            )
    return choice


def site_fields(site: SiteOptions, partition) -> list[dict]:
    """The form's fields for *partition*: name, label, choices (None: a text field), empty (what
    leaving it empty means; a text field's placeholder says what it takes too)."""
    shown = []
    for field, offer in site.offered().items():
        if offer == ASSOCIATIONS:
            offer = partition.accounts
            if not offer:  # not known, or none: Slurm's default account
                continue
        label, empty, takes = _FORM[field]
        if offer == FREE:
            offer, empty = None, f"{empty}; or {takes}"
        shown.append({"name": field, "label": label, "choices": offer, "empty": empty})
    return shown
