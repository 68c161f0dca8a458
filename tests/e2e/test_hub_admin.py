"""End to end, for hub admins: Apptainer and Singularity with a clean container environment.

The Hub's environment for the server reaches the container as SINGULARITYENV_/APPTAINERENV_
variables, so `--cleanenv` and `--containall` in singularity_args no longer take the API
token away from the server.
"""

from __future__ import annotations

import cluster as cluster_mod
import pytest
from conftest import nothing_left, servers_of, wait_until

NODE = "rss-node2"


@pytest.mark.parametrize(
    "runtime, flags",
    [("singularity", ["--cleanenv"]), ("apptainer", ["--containall"])],
)
def test_a_clean_container_environment_still_gets_a_working_server(cluster, alt_hub, runtime, flags):
    exe = cluster.apptainer if runtime == "apptainer" else cluster.singularity
    hub = alt_hub(
        f'c.RemoteSingularitySpawner.singularity_exe_path = "{exe}"\n'
        f"c.RemoteSingularitySpawner.singularity_args = {flags!r}\n"
    )
    user = "rss-alice"
    hub.spawn(user, options={"host": NODE})
    model = hub.wait_ready(user)
    r = hub.through_proxy(user)
    assert r.status_code == 200, r.text
    server = servers_of(NODE, user)
    assert len(server) == 1
    environ = cluster_mod.node_run(NODE, ["cat", f"/proc/{server[0]['pid']}/environ"]).stdout.split("\0")
    assert not [v for v in environ if v.startswith("SSH_CONNECTION=")], "the runtime cleaned the environment"
    assert [v for v in environ if v.startswith("JUPYTERHUB_API_TOKEN=")]
    log = cluster_mod.node_run(NODE, ["cat", model["state"]["log_path"]]).stdout
    assert "WARNING" not in log, "SINGULARITYENV_ and APPTAINERENV_ agree"
    hub.stop_server(user)
    assert wait_until(lambda: nothing_left(NODE, user))
