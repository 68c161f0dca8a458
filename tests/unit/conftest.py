"""Fixtures of the unit tests: the fake SSH, fresh shared resources, a spawner, a clock."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fakes import FakeSSH

from remotesingularityspawner import RemoteSingularitySpawner
from remotesingularityspawner.hub_resources import HubResources

SERVICE_ENV = {"JUPYTERHUB_SERVICE_URL": "http://10.0.0.1:0/user/alice/"}


@pytest.fixture
def resources(fake_ssh):
    """The Hub's shared resources of this test (its spawners use them)."""
    return HubResources.current()


@pytest.fixture(autouse=True)
def fake_ssh():
    """Every test starts with no connection, thread or cache, and SSH to fake nodes only."""
    ssh = FakeSSH()
    HubResources.replace(HubResources(opener=ssh))
    yield ssh
    HubResources.replace(None)


class FakeClock:
    """A monotonic clock that moves when the test says."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    """The clock of the status cache and of every spawner made by make_spawner."""
    c = FakeClock()
    HubResources.current().status.clock = c
    return c


@pytest.fixture
def make_spawner(request):
    """make_spawner(**traits): a spawner of Hub user alice, as the Hub makes it."""

    def make(name="", env=None, **traits):
        user = SimpleNamespace(name="alice", url="/user/alice/", id=1)
        orm = SimpleNamespace(name=name, server=None)
        spawner = RemoteSingularitySpawner(user=user, orm_spawner=orm, **traits)
        if "clock" in request.fixturenames:
            spawner.clock = request.getfixturevalue("clock")
        spawner.get_env = lambda: dict(env if env is not None else SERVICE_ENV)
        return spawner

    return make
