"""SSH user certificates from the Hub's CA: a fresh key and a short-lived certificate per login.

The Hub holds one CA key and no user's secret. Each new SSH connection
logs in with an Ed25519 key made in memory (never written anywhere) and a
user certificate signed by the CA with cryptography's SSH certificate
builder: principals exactly the login name, a key ID naming the Hub user,
the server and the login (sshd logs it: the audit trail), a random serial,
valid from a minute ago (clock skew) for a few minutes, and no extensions
(no pty, agent, X11 or port forwarding: the spawner runs commands only).
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import stat
import threading
import time
from dataclasses import dataclass, field

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import ssh

from .errors import TOLD, IdentityError, default_log

MIN_VALIDITY = 30
MAX_VALIDITY = 24 * 3600
CLOCK_SKEW = 60  # seconds a certificate is valid before it is made

_CA_TYPES = (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)


class CertificateSettingError(IdentityError):
    """A setting of certificate mode is unusable; *setting* names it. Nothing was contacted.

    A user reads only that the CA is not usable: the path, the mode and the fix
    are for the Hub's log.
    """

    setting = ""

    def __init__(self, message: str = "", for_user: str | None = None) -> None:
        super().__init__(message, for_user or CA_UNUSABLE)


# What a user reads when the Hub's certificate settings are unusable.
CA_UNUSABLE = f"the Hub's SSH certificate authority is not usable; {TOLD}"


class CAError(CertificateSettingError):
    """The CA key cannot be used; the message says why and how to fix it (never its content)."""

    setting = "ssh_ca_key_file"


class ValidityError(CertificateSettingError):
    """The certificates' validity is out of range."""

    setting = "ssh_certificate_validity"


@dataclass(frozen=True, eq=False)
class CertificateAuthority:
    """The Hub's CA: its private key (kept in memory) and its public key line."""

    path: str
    key: ssh.SSHCertPrivateKeyTypes = field(repr=False)

    @classmethod
    def load(cls, path: str) -> CertificateAuthority:
        """Load and check the CA key at *path*; CAError saying what is wrong and how to fix it."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise CAError(f"{path} does not exist: make one with `ssh-keygen -t ed25519 -f {path}`") from None
        except OSError as e:
            raise CAError(f"{path} cannot be read: {e.strerror}") from None
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise CAError(
                f"{path} is readable or writable by group or others (mode {mode:04o}): "
                f"it must be the Hub account's alone: chmod 600 {path}"
            )
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise CAError(f"{path} cannot be read by the Hub's account: {e.strerror}") from None
        try:
            key = serialization.load_ssh_private_key(data, password=None)
        except (TypeError, ValueError) as e:
            if "encrypted" in str(e) or "assword" in str(e):
                raise CAError(
                    f"{path} is protected by a passphrase, which the Hub cannot type: "
                    f"remove it with `ssh-keygen -p -N '' -f {path}` (and keep the file 0600)"
                ) from None
            raise CAError(f"{path} is not an OpenSSH private key (ed25519, ecdsa or rsa)") from None
        except Exception:  # noqa: BLE001 - an unsupported key type; never show the file's content
            raise CAError(f"{path} is not an OpenSSH private key (ed25519, ecdsa or rsa)") from None
        if not isinstance(key, _CA_TYPES):
            raise CAError(f"{path} holds a {type(key).__name__}: use an ed25519, ecdsa or rsa key")
        return cls(path, key)

    def public_line(self) -> str:
        """The CA's public key as sshd's TrustedUserCAKeys file takes it."""
        blob = self.key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        return blob.decode()

    def login_key(self, request: CertificateRequest) -> paramiko.PKey:
        """A fresh key with a certificate for *request*, for paramiko (in memory only)."""
        user_key = ed25519.Ed25519PrivateKey.generate()
        certificate = self.sign(user_key.public_key(), request)
        pem = user_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(pem.decode()))
        pkey.load_certificate(certificate.public_bytes().decode())
        return pkey

    def sign(self, public_key, request: CertificateRequest, now: float | None = None) -> ssh.SSHCertificate:
        """A user certificate for *public_key* as *request* says."""
        now = int(time.time() if now is None else now)
        builder = (
            ssh.SSHCertificateBuilder()
            .public_key(public_key)
            .serial(secrets.randbits(64))
            .type(ssh.SSHCertificateType.USER)
            .key_id(request.key_id.encode())
            .valid_principals([request.principal.encode()])
            .valid_after(now - CLOCK_SKEW)
            .valid_before(now + request.validity)
        )
        if request.source_addresses:
            addresses = ",".join(request.source_addresses).encode()
            builder = builder.add_critical_option(b"source-address", addresses)
        return builder.sign(self.key)


@dataclass(frozen=True)
class CertificateRequest:
    """What one login's certificate says: who, for whom, how long, from where, by which CA."""

    ca_path: str
    principal: str
    key_id: str
    validity: int = 300
    source_addresses: tuple[str, ...] = ()

    def login_key(
        self, log: logging.Logger = default_log, authorities: Authorities | None = None
    ) -> paramiko.PKey:
        """A fresh key and certificate; CertificateSettingError if the settings are unusable.

        *authorities*: where the CA is kept loaded (the Hub's); None: read it now.
        """
        if not MIN_VALIDITY <= self.validity <= MAX_VALIDITY:
            raise ValidityError(
                f"{self.validity} seconds is outside {MIN_VALIDITY} s to 24 h ({MAX_VALIDITY} s)"
            )
        authorities = authorities if authorities is not None else Authorities()
        return authorities.get(self.ca_path, log).login_key(self)


class Authorities:
    """The CAs by path, each loaded again only when its file changed (so a new key is used at
    once); one that cannot be used is logged once per state of the file, not at every login."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[tuple | None, CertificateAuthority | CAError]] = {}
        self._lock = threading.Lock()

    def get(self, path: str, log: logging.Logger = default_log) -> CertificateAuthority:
        """The CA at *path*; CAError if it cannot be used."""
        try:
            st = os.stat(path)
            state = (st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode, st.st_uid)
        except OSError:
            state = None
        with self._lock:
            known = self._known.get(path)
        if known is not None and known[0] == state:
            found = known[1]
        else:
            try:
                found = CertificateAuthority.load(path)
            except CAError as e:
                found = e
                log.error("SSH certificates: c.RemoteSingularitySpawner.ssh_ca_key_file: %s", e)
            with self._lock:
                self._known[path] = (state, found)
        if isinstance(found, CAError):
            raise CAError(str(found))
        return found


def key_id(hub_user: str, server: str, login: str) -> str:
    """The certificate's key ID: sshd logs it with each login."""
    return f"remote-singularity-spawner hub-user={hub_user} server={server} login={login}"
