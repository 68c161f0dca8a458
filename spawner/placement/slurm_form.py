"""The Slurm form: the partitions the user may choose with their load and limits, the
resources, the site options each partition offers, a node and the binds; and the form's
fields back as ``user_options``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jinja2

from ..pages import page_templates
from ..request import options_from_form
from .slurm_gpus import gpu_type_field
from .slurm_request import (
    _PARTITION_RE,
    Limits,
    Partition,
    Resources,
    allowed_partitions,
    default_partition,
    effective_limits,
    format_memory,
    format_time,
    lowered_defaults,
)
from .slurm_site import SITE_FIELDS, site_fields


def slurm_options_from_form(formdata: Mapping[str, Sequence[str]]) -> dict:
    """Map the Slurm form's fields (lists of strings) to ``user_options``; empty fields left out."""
    options = options_from_form(formdata)  # host and binds, as the node form has them
    for key in ("partition", "cpus", "memory", "gpus", "gpu_type", "time", *SITE_FIELDS):
        value = (formdata.get(key) or [""])[0].strip()
        if value:
            options[key] = value
    return options


def render_slurm_form(
    partitions: list[Partition],
    limits: Mapping[str, Limits],
    defaults: Resources,
    default_binds: str,
    error: str = "",
    templates: jinja2.Environment | None = None,
) -> str:
    """The Slurm form: the allowed partitions with their load and limits, the resources, the site
    options of each partition (only the selected one's enabled), a node, binds."""
    by_name = {p.name: p for p in partitions}
    choices = []
    for name in allowed_partitions(by_name, limits):
        partition = by_name[name]
        top = effective_limits(partition, limits.get(name, Limits()))
        disabled = not partition.available or not _PARTITION_RE.fullmatch(name)  # not one to ask for
        site = gpu_type_field(partition) + site_fields(top.site, partition)
        choices.append({"partition": partition, "limits": top, "disabled": disabled, "site": site})
    first = default_partition(by_name, limits)
    enabled = [c for c in choices if not c["disabled"]]
    selected = next((c for c in enabled if c["partition"].name == first), enabled[0] if enabled else None)
    top = selected["limits"] if selected else Limits()
    return (
        (templates or page_templates())
        .get_template("slurm_form.html")
        .render(
            choices=choices,
            selected=selected,
            limits=top,
            values=lowered_defaults(defaults, top).to_dict(),
            default_binds=default_binds,
            error=error,
            format_memory=format_memory,
            format_time=format_time,
        )
    )
