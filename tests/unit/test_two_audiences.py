"""Two audiences for every failure: the user's sentence (no path of the Hub host, no
exception text, no repr), and the Hub's log with the path, the mode, the exception and
the fix, once rather than at every poll."""

from __future__ import annotations

import logging
import os

import pytest

from remotesingularityspawner import remote
from remotesingularityspawner.hub_resources import HubResources
from remotesingularityspawner.node_access import NodeAccess


def access(resources):
    return NodeAccess(
        config=None, resources=resources, login=None, log=logging.getLogger("t"), log_name="alice"
    )


def test_a_home_the_hub_cannot_enter_is_not_a_missing_key(tmp_path, monkeypatch):
    # As an unprivileged Hub sees a 0700 ~/.ssh (or root on NFS with root_squash).
    key = tmp_path / "alice" / ".ssh" / "id_ed25519"

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "stat", denied)
    with pytest.raises(remote.IdentityError) as e:
        remote.find_private_key([str(key)])
    assert "cannot read your SSH key in your home directory" in e.value.for_user
    assert "no private key" not in e.value.for_user and str(tmp_path) not in e.value.for_user
    assert f"the Hub's account cannot read {key}: Permission denied" in str(e.value)
    assert "root_squash" in str(e.value)


def test_a_missing_key_names_the_places_in_the_users_home_and_the_log_the_paths(tmp_path):
    paths = [str(tmp_path / "alice" / ".ssh" / name) for name in ("id_ed25519", "id_rsa")]
    with pytest.raises(remote.IdentityError) as e:
        remote.find_private_key(paths)
    assert e.value.for_user.startswith(
        "no private key of yours was found; looked for: ~/.ssh/id_ed25519, ~/.ssh/id_rsa"
    )
    assert str(tmp_path) not in e.value.for_user and paths[0] in str(e.value)


def test_an_unusable_ca_tells_the_user_it_is_unusable_and_the_log_the_setting_once(caplog):
    resources = HubResources()
    try:
        error = remote.CAError(
            "/etc/jupyterhub/ssh_ca is readable or writable by group or others (mode 0644)"
        )
        for _ in range(3):  # three polls
            said = access(resources).explain(error)
        assert said == "the Hub's SSH certificate authority is not usable; the administrators have been told"
        logged = [r.getMessage() for r in caplog.records if "ssh_ca_key_file" in r.getMessage()]
        assert logged == [
            "c.RemoteSingularitySpawner.ssh_ca_key_file: /etc/jupyterhub/ssh_ca is readable or writable "
            "by group or others (mode 0644) (for alice)"
        ]
    finally:
        resources.close()


def test_an_unexpected_error_shows_no_exception_and_logs_the_traceback(caplog):
    resources = HubResources()
    try:
        said = access(resources).explain(KeyError("host"))
    finally:
        resources.close()
    assert said == "an unexpected error happened on the way to the node; the administrators have been told"
    assert "KeyError" in caplog.text
