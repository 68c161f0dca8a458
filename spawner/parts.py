"""A spawner's parts, each chosen once from its configuration and held (not inherited).

The spawner orchestrates start, poll, stop and progress; these do the rest.
Each part takes the spawner as *config* for its traits only, and is handed
the parts it works with; none reads another's attributes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from . import calls
from .failures import Failures
from .hub_resources import HubResources
from .images import ImageChoice
from .internal_tls import InternalTLS, hub_certs
from .login import LOGIN_METHODS, LoginMethod
from .node_access import NodeAccess
from .placement import Placement, placement_class
from .progress import Progress
from .request import OptionsError
from .server_process import ServerOnNode
from .unreachable import PollGrace


@dataclass(frozen=True)
class Parts:
    resources: HubResources  # what all spawners of the Hub share
    fail: Failures  # the SpawnExceptions a user reads
    login: LoginMethod  # ssh_auth: how the Hub logs in as the user
    access: NodeAccess  # node scripts over SSH, in worker threads
    placer: Placement  # placement: where the server runs
    images: ImageChoice  # images: what the server runs, as the user chose it
    server: ServerOnNode  # the server's process on its node
    tls: InternalTLS  # internal_ssl: the server's certificate on its node
    poll_grace: PollGrace  # what a poll concludes when the node is silent

    def login_name(self) -> str:
        """The login name on the nodes; SpawnException naming it if it is not valid."""
        try:
            return self.login.name()
        except OptionsError as e:
            raise self.fail(f"Cannot start your server: {e}", "options") from None


def user_groups(user) -> list[str]:
    """The names of the JupyterHub groups *user* belongs to."""
    return [group.name for group in getattr(user, "groups", None) or ()]


def make_parts(spawner, steps: Progress, create_certs: Callable[[], Awaitable[dict]]) -> Parts:
    """The parts of *spawner*, as its configuration chooses them.

    *create_certs*: JupyterHub's own Spawner.create_certs of the spawner.
    """
    log, name, user = spawner.log, spawner._log_name, spawner.user.name
    resources = HubResources.current()
    fail = Failures(log, name)
    login = LOGIN_METHODS[spawner.ssh_auth](spawner, user, spawner.name, log)
    access = NodeAccess(spawner, resources, login, log, name)
    placer = placement_class(spawner.placement)(spawner, access, resources, fail, log, (user, spawner.name))
    server_dir = calls.server_dir(spawner.remote_state_dir, user, spawner.name)
    return Parts(
        resources=resources,
        fail=fail,
        login=login,
        access=access,
        placer=placer,
        images=ImageChoice(spawner, partial(user_groups, spawner.user), fail),
        server=ServerOnNode(spawner, access, fail, steps, server_dir, log),
        tls=InternalTLS(access, partial(hub_certs, spawner, create_certs), server_dir, fail),
        poll_grace=PollGrace(spawner, access, log, name),
    )
