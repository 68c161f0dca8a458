"""One node's report: what check and deploy found there, and how it is shown.

A NodeReport has the table's columns, the problems that make the node unfit
and the notes; deploy.py fills it from the scripts' replies. Here: the
aligned table that check and deploy print, and the same as plain data for
--json. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..placement.nodes import Node
from .slurm_hosts import COMPUTE

# The fix a problem names when deploy makes it go (and it is gone from the report once it did).
RUN_DEPLOY = "run remote-singularity-spawner deploy"


@dataclass
class NodeReport:
    """What was found on one node (and done there), as the table shows it."""

    node: Node
    ssh: str = "-"
    runtime: str = "-"
    image: str = "-"
    scripts: str = "-"
    ca: str = "-"
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    role: str = COMPUTE  # with placement slurm also "submit" or "submit, compute"
    slurm: str = "-"  # the Slurm client, on a submit host
    images: list[str] = field(default_factory=list)  # one line per image: found, JupyterHub, match
    untrust: str = "-"  # deploy --untrust-ca: what became of that CA's key on the node

    @property
    def fit(self) -> bool:
        return not self.problems


def format_table(reports: Iterable[NodeReport]) -> str:
    """The reports as an aligned table, then why each unfit node is unfit.

    ROLE and SLURM columns only when a host has another role than compute (placement slurm);
    UNTRUST only when a CA was to be untrusted (deploy --untrust-ca) on a node.
    """
    reports = list(reports)
    hidden = set() if any(r.role != COMPUTE for r in reports) else {"ROLE", "SLURM"}
    hidden |= set() if any(r.untrust != "-" for r in reports) else {"UNTRUST"}
    columns = ("NODE", "ROLE", "SSH", "SLURM", "RUNTIME", "IMAGE", "SCRIPTS", "CA", "UNTRUST", "FIT")
    shown = [i for i, name in enumerate(columns) if name not in hidden]
    rows = [columns] + [
        (
            f"{r.node.label} ({r.node.address})" if r.node.label != r.node.address else r.node.label,
            r.role, r.ssh, r.slurm, r.runtime, r.image, r.scripts, r.ca, r.untrust, "yes" if r.fit else "NO",
        )
        for r in reports
    ]  # fmt: skip
    rows = [[row[i] for i in shown] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(shown))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    for r in reports:
        lines += [f"{r.node.label}: {p}" for p in r.problems]
        lines += [f"{r.node.label}: note: {n}" for n in r.notes]
    for r in reports:
        lines += [f"{r.node.label}: {line}" for line in r.images]
    return "\n".join(lines)


def report_data(report: NodeReport) -> dict:
    """One node's report as plain data (the --json output): its columns, problems, notes, images."""
    return {
        "node": report.node.label,
        "address": report.node.address,
        "role": report.role,
        "ssh": report.ssh,
        "slurm": report.slurm,
        "runtime": report.runtime,
        "image": report.image,
        "scripts": report.scripts,
        "ca": report.ca,
        "untrust": report.untrust,
        "fit": report.fit,
        "problems": list(report.problems),
        "notes": list(report.notes),
        "images": list(report.images),
    }
