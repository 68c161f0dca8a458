"""Placements: where a user's server runs, chosen once from ``c.RemoteSingularitySpawner.placement``.

- ``ssh`` (ssh.py): the user picks a node of ``nodelist``;
- ``slurm`` (slurm.py): the user picks a partition and resources, and a job
  allocates the node; the server runs as a step of the job.

A placement has its own form and request grammar, places a server (the
:class:`Placed` value names node, address, login and job), tells whether a
placed server whose node cannot be asked is still there, and releases what
placing it took. Another scheduler would be one more module here.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, ClassVar

from .. import remote
from ..request import options_from_form as node_options_from_form
from .nodes import Node

if TYPE_CHECKING:  # the spawner hands them in; hub_resources imports this package's modules
    from ..hub_resources import HubResources
    from ..node_access import NodeAccess
    from ..progress import Progress


@dataclass(frozen=True)
class Placed:
    """Where a server was placed: what poll and stop need to find it again (kept in the state)."""

    node: str  # the node's name as the user sees it (its address when it has none)
    address: str  # where the Hub connects by SSH and proxies to
    login: str  # the login name on the node
    job_id: str = ""  # placement slurm: the job the server runs in
    partition: str = ""  # placement slurm: the job's partition
    gpu: bool = False  # the node has GPUs (gpu_singularity_args); not kept: decided again at a start

    FIELDS: ClassVar[tuple[str, ...]] = ("node", "address", "login", "job_id", "partition")

    def to_state(self) -> dict:
        return {name: getattr(self, name) for name in self.FIELDS}

    @classmethod
    def from_state(cls, values: Mapping) -> Placed:
        return cls(**{name: values.get(name, "") for name in cls.FIELDS})


Fail = Callable[[str, str], Exception]


class Placement(ABC):
    """Where a server runs: the choice offered, checked, acted on and undone.

    *config*: the spawner, for its configuration (traits) only. *fail* makes the
    SpawnException a user reads from a message and a reason.
    """

    def __init__(
        self,
        config,
        access: NodeAccess,
        resources: HubResources,
        fail: Fail,
        log: logging.Logger,
        names: tuple[str, str],
    ) -> None:
        self.config = config
        self.access = access
        self.resources = resources
        self.fail = fail
        self.log = log
        self.hub_user, self.server_name = names

    @abstractmethod
    async def render_form(self) -> str:
        """The options form."""

    @abstractmethod
    def options_from_form(self, formdata: Mapping[str, Sequence[str]]) -> dict:
        """The form's fields (lists of strings) as ``user_options``."""

    @abstractmethod
    async def validate(self, user_options):
        """The user's request (with ``.binds``); SpawnException (400) naming a bad field."""

    def node_before_start(self, request) -> Node | None:
        """The node the server will run on, if known before it is placed (None: only then)."""
        return None

    @property
    def queue_timeout(self) -> float:
        """Seconds a server may wait to be placed, on top of start_timeout (0: no queue)."""
        return 0.0

    # start_timeout as the admin sets it is the server's own start. The Hub, which gives
    # start() start_timeout seconds, is told the queue's wait on top (hub_start_timeout).
    _widened: int | None = None
    _server_timeout = 0

    def server_start_timeout(self) -> int:
        """start_timeout as configured (a group override counts), not as widened for the Hub."""
        current = self.config.start_timeout
        return self._server_timeout if current == self._widened else current

    def hub_start_timeout(self) -> int:
        """What the Hub's start_timeout becomes for the next start: the server's plus the queue's."""
        self._server_timeout = self.server_start_timeout()
        self._widened = self._server_timeout + int(self.queue_timeout)
        return self._widened

    @abstractmethod
    async def place(self, request, login: str, steps: Progress, deadline: float) -> Placed:
        """Where the server is to start, by *deadline* (the spawner's clock): SpawnException if
        it cannot be placed. Whatever placing took is released on failure."""

    async def gone(self, placed: Placed) -> bool:
        """Whether a server whose node cannot be asked is known to be gone by other means."""
        return False

    async def release(self, placed: Placed) -> None:  # noqa: B027 - most placements take nothing
        """Undo what placing took (e.g. end the job); logged, never raises."""

    async def for_form(self, cache, key: tuple, fetch, *args):
        """What *fetch(*args)* (in a worker thread) tells the form, from *cache* while fresh
        (node_status_ttl); what it has not told within node_status_timeout counts as unknown."""
        config = self.config
        executor = self.resources.executor(config.ssh_threads)
        return await cache.get(
            key, partial(fetch, *args), executor, config.node_status_timeout, config.node_status_ttl
        )

    def ask_for_form(self, address: str, login: str, call) -> remote.Reply:
        """Blocking: run *call* on *address* as *login*, connecting within node_status_timeout."""
        timeout = min(self.config.ssh_connect_timeout, self.config.node_status_timeout)
        return self.access.call_blocking(self.access.target(address, login, timeout), call)

    async def nodes(self) -> list[Node]:
        """The nodes of ``nodelist``, parsed (and names resolved) once per node list."""
        return await self.access.in_thread(self.resources.nodes, self.config.nodelist, self.log)

    async def usable_nodes(self) -> list[Node]:
        """The valid nodes; SpawnException if there is none."""
        nodes = await self.nodes()
        if not nodes:
            raise self.fail(
                "No compute node is available: c.RemoteSingularitySpawner.nodelist has no valid "
                "entry. Please tell your administrator.",
                "config",
            )
        return nodes


# The placements by the name the ``placement`` setting gives, each a module of this package
# with a Placement subclass: another scheduler is one more module and one more line here.
PLACEMENTS = {"ssh": ("ssh", "SSHPlacement"), "slurm": ("slurm", "SlurmPlacement")}


def placement_class(kind: str) -> type[Placement]:
    """The placement named *kind* (a key of PLACEMENTS)."""
    module, name = PLACEMENTS[kind]
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


# --- the form hooks: the spawner's defaults of JupyterHub's options_form, options_from_form
# and apply_user_options, which JupyterHub calls with the spawner ---------------------------


async def render_options_form(spawner) -> str:
    """The images the user may choose (when more than one), then the placement's form: the
    nodes with their status, or the Slurm partitions and resources."""
    form = await spawner.parts.placer.render_form()
    images = await spawner.parts.images.for_user() if spawner.images else []
    if len(images) < 2:
        return form
    return spawner.parts.resources.templates.get_template("_images.html").render(images=images) + form


def options_from_form(formdata, spawner=None) -> dict:
    """The form's fields as ``user_options`` (the node form's without a spawner)."""
    if spawner is None:
        return node_options_from_form(formdata)
    image = (formdata.get("image") or [""])[0].strip()
    options = spawner.parts.placer.options_from_form({k: v for k, v in formdata.items() if k != "image"})
    return {"image": image, **options} if image else options


async def apply_user_options(spawner, user_options) -> None:
    """Refuse bad options before the spawn is scheduled (JupyterHub 5.3+); the request is kept
    for the rest of the spawn."""
    await spawner.validated_request(user_options, again=True)
