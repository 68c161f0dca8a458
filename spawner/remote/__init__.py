"""Run the node scripts over SSH. Knows nothing of JupyterHub; everything here blocks.

- :mod:`.protocol`: the wire format with the scripts (argv, stdin records, replies);
- :mod:`.bundle`: the scripts of one version and its hash;
- :mod:`.errors`: what can go wrong on the way;
- :mod:`.ssh`: log in with the host key verified, run one command;
- :mod:`.certificates`: the Hub's CA, a fresh key and certificate per login;
- :mod:`.known_hosts`: known_hosts files as sites have them (hashed names, markers);
- :mod:`.pool`: connections kept per user and node;
- :mod:`.session`: find or send the scripts, run one, retry on a broken connection.
"""

from .bundle import DEFAULT_NODE_SCRIPTS_DIR, SCRIPT_FILES, ScriptBundle, packaged_scripts_dir
from .certificates import (
    Authorities,
    CAError,
    CertificateAuthority,
    CertificateRequest,
    CertificateSettingError,
    ValidityError,
    key_id,
)
from .errors import TOLD, CommandTimeout, ConnectError, HostKeyError, IdentityError, RemoteError
from .pool import ConnectionPool
from .protocol import (
    ExitCode,
    LineRelay,
    ProgressCallback,
    Reply,
    ScriptCall,
    command_line,
    env_payload,
    files_payload,
    parse_progress,
    parse_reply,
)
from .session import IDEMPOTENT_SCRIPTS, RECHECK_SCRIPT, NodeSession
from .ssh import (
    Caches,
    Target,
    connect,
    find_private_key,
    load_private_key,
    probe_port,
    run_command,
)

__all__ = [
    "Authorities", "Caches", "DEFAULT_NODE_SCRIPTS_DIR", "IDEMPOTENT_SCRIPTS", "RECHECK_SCRIPT",
    "SCRIPT_FILES", "CAError",
    "CertificateAuthority", "CertificateRequest", "CertificateSettingError", "CommandTimeout",
    "ConnectError", "ConnectionPool", "ExitCode", "HostKeyError", "IdentityError", "LineRelay", "NodeSession",
    "ProgressCallback", "RemoteError", "Reply", "ScriptBundle", "ScriptCall", "TOLD", "Target",
    "ValidityError", "command_line", "connect", "env_payload", "files_payload", "find_private_key",
    "key_id", "load_private_key", "packaged_scripts_dir", "parse_progress", "parse_reply",
    "probe_port", "run_command",
]  # fmt: skip
