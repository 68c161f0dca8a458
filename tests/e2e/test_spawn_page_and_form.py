"""End to end: what a notebook user sees on the spawn page and in the form.

The spawn page shows each step of a start (the Hub's progress API, which the
page reads); the form shows each node's status, disables a node that does
not answer, and marks GPU nodes, whose servers get --nv.
"""

from __future__ import annotations

import html
import re
import threading
import time

import cluster as cluster_mod
import requests
from conftest import login, nothing_left, user_processes, wait_until
from test_spawn import NODE1, NODE2

# An address on the cluster's bridge where no node answers.
DEAD_NODE = "rss-node9:10.213.47.250"


def spawn_and_watch(hub, user, options) -> list[dict]:
    """Request a spawn and read its progress as the spawn page does, from the start.

    The REST request answers only after the spawn (or 10 s): it runs in a
    thread while the progress stream is opened as soon as the spawn is pending.
    Until then the stream answers 400, or the end of the user's previous spawn.
    """
    request = threading.Thread(target=hub.spawn, args=(user,), kwargs={"options": options})
    request.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                events = hub.progress_events(user)
            except requests.HTTPError:  # not pending yet
                events = []
            this_spawn = any(e["message"].startswith("connecting to") for e in events)
            if this_spawn or not request.is_alive() or time.monotonic() > deadline:
                return events
            time.sleep(0.05)
    finally:
        request.join(120)


def test_spawn_page_shows_each_step_in_words_with_rising_percentages(hub):
    user, node = "rss-bob", NODE2
    events = spawn_and_watch(hub, user, {"host": node})
    assert events[-1].get("ready"), events
    messages = [e["message"] for e in events]
    expected = [
        f"connecting to {node} as {user}",
        f"connected; preparing the scripts on {node}",
        "starting the container jupyter.sif",
        "waiting for the server to listen on port",
        f"the server is up on {node}",
        "Server ready at",
    ]
    positions = [next((i for i, m in enumerate(messages) if m.startswith(e)), None) for e in expected]
    assert None not in positions and positions == sorted(positions), messages
    percents = [e["progress"] for e in events]
    assert percents == sorted(percents) and percents[-1] == 100, events
    port = hub.server_model(user)["state"]["port"]
    assert f"waiting for the server to listen on port {port}" in messages
    hub.stop_server(user)
    assert wait_until(lambda: nothing_left(node, user))


def test_a_failed_start_shows_its_steps_and_then_its_reason(hub):
    user = "rss-carol"
    events = spawn_and_watch(hub, user, {"host": NODE1, "binds": ["/no/such/project:/project"]})
    messages = [e["message"] for e in events]
    assert any(m.startswith("starting the container") for m in messages), messages
    final = events[-1]
    assert final.get("failed"), events
    assert "mount source /no/such/project doesn't exist" in final["message"], final
    assert "@progress" not in final["message"], "progress lines are not part of the reason"
    assert wait_until(lambda: nothing_left(NODE1, user))


def _form(session, hub, user) -> tuple[str, dict[str, str]]:
    page = session.get(f"{hub.url}/hub/spawn/{user}", timeout=60).text
    options = dict(
        (value, html.unescape(" ".join(text.split())))
        for value, text in re.findall(r'<option value="([^"]+)"([^>]*>[^<]*)</option>', page)
    )
    return page, options


def _servers(option_text: str) -> int:
    match = re.search(r"(\d+) servers?\b", option_text)
    assert match, option_text
    return int(match.group(1))


def test_form_shows_node_status_marks_gpu_and_disables_an_unreachable_node(cluster, alt_hub):
    nodes = ",".join(f"{n.name}:{n.ip}" for n in cluster.nodes)
    hub = alt_hub(
        f'c.RemoteSingularitySpawner.nodelist = "{nodes},{DEAD_NODE}"\n'
        f'c.RemoteSingularitySpawner.gpu_nodes = ["{NODE2}"]\n'
        "c.RemoteSingularitySpawner.node_status_ttl = 1\n"
        "c.RemoteSingularitySpawner.node_status_timeout = 5\n"
    )
    user = "rss-alice"
    session = login(hub, user)
    page, options = _form(session, hub, user)
    dead = DEAD_NODE.split(":")[0]
    assert list(options) == [NODE1, NODE2, dead], options
    for node in (NODE1, NODE2):
        assert re.search(r"load \d+\.\d\d on \d+ CPUs, \d+\.\d GiB free, \d+ servers?", options[node]), (
            options
        )
        assert " disabled" not in options[node]
    assert "[GPU]" in options[NODE2] and "[GPU]" not in options[NODE1]
    assert "Nodes marked [GPU] have GPUs" in page
    assert re.search(rf'<option value="{dead}"[^>]* disabled', page) and "unreachable" in options[dead]
    assert re.search(rf'<option value="{NODE1}" selected', page)

    # Chosen anyway (a stale page, a hand-made request): refused, with the reason.
    action = html.unescape(re.search(r'action="(/hub/spawn/[^"]+)"', page).group(1))
    refused = session.post(f"{hub.url}{action}", data={"host": dead, "binds": ""}, timeout=60)
    assert f"node {dead} is unreachable" in html.unescape(refused.text), refused.text[-3000:]
    assert hub.server_model(user) is None

    # The count of running servers follows a start; a GPU node's server gets --nv.
    before = _servers(options[NODE2])
    for name, node in (("gpu", NODE2), ("cpu", NODE1)):
        r = hub.spawn(user, name, {"host": node})
        assert r.status_code in (201, 202), r.text
    logs = {
        node: hub.wait_ready(user, name)["state"]["log_path"]
        for name, node in (("gpu", NODE2), ("cpu", NODE1))
    }
    nv_warning = "Could not find any nv files on this host!"
    assert nv_warning in cluster_mod.node_run(NODE2, ["cat", logs[NODE2]]).stdout, "--nv reached the runtime"
    assert nv_warning not in cluster_mod.node_run(NODE1, ["cat", logs[NODE1]]).stdout
    assert wait_until(lambda: _servers(_form(session, hub, user)[1][NODE2]) == before + 1, timeout=20)

    for name in ("gpu", "cpu"):
        hub.stop_server(user, name)
    for node in (NODE1, NODE2):
        assert wait_until(lambda: nothing_left(node, user)), user_processes(node, user)  # noqa: B023
