"""Login methods: how the Hub logs in to the nodes as the user (``ssh_auth``).

- ``user-key``: the user's own private key, read from their home;
- ``certificate``: a key made for each connection and a short-lived
  certificate from the Hub's CA; no home is read.

Each yields the login name and the :class:`remote.Target` the SSH layer
connects with; it reads the spawner's configuration and writes nothing.
"""

from __future__ import annotations

import logging
import os

from . import remote
from .request import check_login_name


class LoginMethod:
    """The login name on the nodes and where and how to connect as it.

    *config*: the spawner, for its configuration (traits) only.
    """

    def __init__(self, config, hub_user: str, server_name: str, log: logging.Logger) -> None:
        self.config = config
        self.hub_user = hub_user
        self.server_name = server_name
        self.log = log

    def name(self) -> str:
        """The login name on the nodes; OptionsError naming it if it is not valid."""
        template = self.config.ssh_username
        name = template(self.config) if callable(template) else template.format(username=self.hub_user)
        return check_login_name(name)

    def _templates(self, login: str) -> dict[str, str]:
        home = os.path.join(self.config.home_path, login)
        return {"home": home, "login": login, "username": self.hub_user}

    def _identity(
        self, login: str
    ) -> tuple[tuple[str, ...], tuple[str, ...], remote.CertificateRequest | None]:
        """(key files, known_hosts files, certificate request) for *login*."""
        raise NotImplementedError

    def target(self, address: str, login: str, connect_timeout: float | None = None) -> remote.Target:
        """Where and as whom to connect: *address* as *login*, host key checked as configured."""
        config = self.config
        key_files, known_hosts, certificate = self._identity(login)
        if config.disable_host_key_checking:
            self.log.warning(
                "RemoteSingularitySpawner: host key checking is disabled "
                "(c.RemoteSingularitySpawner.disable_host_key_checking): connections to %s are "
                "not protected against impersonation",
                address,
            )
        return remote.Target(
            host=address,
            username=login,
            key_files=key_files,
            known_hosts_files=known_hosts,
            port=config.ssh_port,
            connect_timeout=config.ssh_connect_timeout if connect_timeout is None else connect_timeout,
            verify_host_key=not config.disable_host_key_checking,
            certificate=certificate,
        )


class UserKeyLogin(LoginMethod):
    """``ssh_auth = "user-key"``: the user's private key from their home (ssh_key_files)."""

    def _identity(self, login):
        fmt = self._templates(login)
        keys = tuple(p.format(**fmt) for p in self.config.ssh_key_files)
        return keys, tuple(p.format(**fmt) for p in self.config.known_hosts_files), None


class CertificateLogin(LoginMethod):
    """``ssh_auth = "certificate"``: a certificate of the Hub's CA per connection; no home is read
    (the Hub may not be able to, and holds no user's secret)."""

    def _identity(self, login):
        config, fmt = self.config, self._templates(login)
        known_hosts = tuple(p.format(**fmt) for p in config.known_hosts_files if "{home}" not in p)
        certificate = remote.CertificateRequest(
            ca_path=config.ssh_ca_key_file,
            principal=login,
            key_id=remote.key_id(self.hub_user, self.server_name, login),
            validity=config.ssh_certificate_validity,
            source_addresses=tuple(config.ssh_certificate_source_addresses),
        )
        return (), known_hosts, certificate


LOGIN_METHODS = {"user-key": UserKeyLogin, "certificate": CertificateLogin}
