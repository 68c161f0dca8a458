"""What a notebook user sees: spawn progress, node status in the form, GPU nodes."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from fakes import reply

from remotesingularityspawner import remote
from remotesingularityspawner.hub_resources import HubResources
from remotesingularityspawner.placement.node_status import NodeStatus
from remotesingularityspawner.placement.nodes import Node
from remotesingularityspawner.placement.ssh import render_form

# Two nodes and an image: what every spawner of these tests is configured with.
CLUSTER = {"nodelist": "n1:10.0.0.1,n2:10.0.0.2", "singularity_container_path": "/img.sif"}
STARTED = reply(pid=9, start_time=5, port=50000)


# --- the @progress protocol ----------------------------------------------------------


@pytest.mark.parametrize(
    "line, event",
    [
        ("@progress 40 starting the container jupyter.sif", (40, "starting the container jupyter.sif")),
        ("@progress 100 done\r", (100, "done")),
        ("@progress 101 too far", None),
        ("@progress forty starting", None),
        ("@progress 40", None),
        ("WARNING: @progress 40 inside another line", None),
        ("", None),
    ],
)
def test_parse_progress(line, event):
    assert remote.parse_progress(line) == event


def test_relay_hands_on_progress_lines_split_across_chunks_and_nothing_else():
    seen = []
    relay = remote.LineRelay(lambda percent, message: seen.append((percent, message)))
    for chunk in ["noise\n@prog", "ress 40 starting the", " container\n@progress 6", "0 waiting\nhalf"]:
        relay.write(chunk)
    assert seen == [(40, "starting the container"), (60, "waiting")]
    relay.write(" a line\n")
    assert len(seen) == 2


def test_progress_lines_are_not_part_of_the_diagnostics():
    stderr = "@progress 40 starting\nFATAL:   could not open image\n@progress 60 waiting\n"
    reply = remote.parse_reply(4, "", stderr)
    assert reply.stderr == "FATAL:   could not open image"


# --- progress() -------------------------------------------------------------------------


async def collect(spawner, until_count, timeout=5):
    events = []

    async def read():
        async for event in spawner.progress():
            events.append(event)
            if len(events) >= until_count:
                return

    await asyncio.wait_for(read(), timeout)
    return events


async def test_start_reports_each_step_in_words_with_rising_percentages(make_spawner, fake_ssh):
    s = make_spawner(**CLUSTER, gpu_nodes=["n2"])
    worker_threads = []

    def start(args, stdin):
        # The script's @progress lines, relayed while it runs.
        worker_threads.append(threading.current_thread() is not threading.main_thread())
        return reply(
            pid=9, start_time=5, port=50000,
            stderr="@progress 40 starting the container img.sif\n"
            "@progress 40 starting the container img.sif\n"  # a port retry
            "@progress 60 waiting for the server to listen on port 50000\n",
        )  # fmt: skip

    fake_ssh.node("10.0.0.1").on("start_singleuser.sh", start)
    s.user_options = {"host": "n1"}
    listener = asyncio.ensure_future(collect(s, 6))
    assert await s.start() == ("10.0.0.1", 50000)
    events = await listener
    assert worker_threads == [True]
    messages = [e["message"] for e in events]
    assert messages[0] == "connecting to n1 as alice"
    assert messages[1:5] == [
        "connected; preparing the scripts on n1",
        "starting the container img.sif",
        "starting the container img.sif",
        "waiting for the server to listen on port 50000",
    ]
    assert "up on n1" in messages[5]
    percents = [e["progress"] for e in events]
    assert percents == sorted(percents) and percents[0] == 10 and percents[-1] == 90

    # The spawn page opens late: it still sees every step from the start.
    assert await collect(s, 6) == events


async def test_no_step_is_lost_when_steps_arrive_while_the_page_handles_one(make_spawner):
    s = make_spawner(**CLUSTER)
    steps = s._steps  # what start() reports to (the relay too, on the event loop)
    steps.report(10, "one")
    received = []

    async def listen():
        async for event in s.progress():
            received.append(event["message"])
            if event["message"] == "one":
                # Arrive while the listener holds "one" (as the relay's do).
                steps.report(40, "two")
                steps.report(60, "three")
            if len(received) == 3:
                return

    try:
        await asyncio.wait_for(listen(), 2)
    except asyncio.TimeoutError:
        pass  # a lost step: the listener waits for it in vain
    assert received == ["one", "two", "three"]


async def test_progress_of_a_new_start_begins_afresh(make_spawner, fake_ssh):
    s = make_spawner(**CLUSTER)
    fake_ssh.node("10.0.0.2").on("start_singleuser.sh", reply(pid=9, start_time=5, port=1))
    s.user_options = {"host": "n2"}
    await s.start()
    s.clear_state()
    listener = asyncio.ensure_future(collect(s, 1))
    await asyncio.sleep(0.05)
    assert not listener.done(), "the old start's steps are not shown again"
    await s.start()
    assert (await listener)[0]["message"] == "connecting to n2 as alice"
    assert fake_ssh.node("10.0.0.2").scripts_run() == ["start_singleuser.sh"] * 2


async def test_a_failed_start_says_why(make_spawner, fake_ssh):
    s = make_spawner(**CLUSTER)
    fake_ssh.node("10.0.0.1").on(
        "start_singleuser.sh",
        reply(
            remote.ExitCode.SERVER_DIED, stderr="FATAL:   container creation failed: mount /nope->/nope error"
        ),
    )
    s.user_options = {"host": "n1"}
    with pytest.raises(Exception) as e:
        await s.start()
    assert "did not start" in str(e.value) and "mount /nope" in str(e.value)


# --- GPU nodes -----------------------------------------------------------------------------


@pytest.mark.parametrize("host, address, expected", [
    ("n1", "10.0.0.1", ["--pid"]),
    ("n2", "10.0.0.2", ["--pid", "--nv"]),
])  # fmt: skip
async def test_gpu_nodes_get_the_gpu_flags(make_spawner, fake_ssh, host, address, expected):
    s = make_spawner(**CLUSTER, gpu_nodes=["n2"], singularity_args=["--pid"])
    node = fake_ssh.node(address)
    node.on("start_singleuser.sh", reply(pid=9, start_time=5, port=1))
    s.user_options = {"host": host}
    await s.start()
    (run,) = [r for r in node.runs if r.script == "start_singleuser.sh"]
    args = run.args
    flags = [args[i + 1] for i, a in enumerate(args[: args.index("--")]) if a == "--singularity-arg"]
    assert flags == expected


# --- node status and the form ------------------------------------------------------------


def test_status_summary_in_words():
    status = NodeStatus.from_reply(
        {"load": 0.314, "cpus": 8, "mem_available_kib": 21 * 2**20, "servers": 2, "my_servers": 1}
    )
    assert status.summary() == "load 0.31 on 8 CPUs, 21.0 GiB free, 2 servers"
    assert NodeStatus.from_reply({"servers": 1}).summary() == "1 server"
    assert NodeStatus.from_reply({"load": "x", "servers": -1}).summary() == "status unknown"
    assert NodeStatus(reachable=False, error="timed out").summary() == "unreachable"


def test_form_shows_status_disables_unreachable_and_marks_gpu():
    nodes = [Node("n1", "10.0.0.1"), Node("n2", "10.0.0.2"), Node("n3", "10.0.0.3")]
    statuses = [
        NodeStatus(reachable=False, error="timed out"),
        NodeStatus.from_reply({"load": 0.5, "mem_available_kib": 2**20, "servers": 0}),
        None,
    ]
    html = render_form(nodes, statuses, ["n2"], "")
    options = [o.split("</option>")[0] for o in html.split("<option")[1:]]
    assert "disabled" in options[0] and "unreachable" in options[0] and "selected" not in options[0]
    assert "selected" in options[1], "the first reachable node is preselected"
    assert "[GPU]" in options[1] and "load 0.50, 1.0 GiB free, 0 servers" in options[1]
    assert "disabled" not in options[2] and "[GPU]" not in options[2]
    assert "Nodes marked [GPU] have GPUs" in html


def test_form_when_no_node_answers_says_so():
    html = render_form([Node("n1", "10.0.0.1")], [NodeStatus(reachable=False)], [], "")
    assert "disabled" in html and "selected" not in html
    assert "No node can be reached" in html


async def test_form_asks_the_nodes_concurrently_in_threads_and_caches(make_spawner, fake_ssh):
    s = make_spawner(**CLUSTER, node_status_timeout=2, node_status_ttl=30)
    asked = []
    both_asked = threading.Barrier(2, timeout=2)

    def status_of(host):
        def answer(args, stdin):
            asked.append((host, threading.current_thread() is threading.main_thread()))
            both_asked.wait()  # fails unless the two nodes are asked at the same time
            return reply(load=0.25, mem_available_kib=2**21, servers=3)

        return answer

    for host in ("10.0.0.1", "10.0.0.2"):
        fake_ssh.node(host).on("node_status.sh", status_of(host))
    html = await s.get_options_form()
    assert sorted(asked) == [("10.0.0.1", False), ("10.0.0.2", False)]
    assert [n.scripts_run() for n in fake_ssh.nodes.values()] == [["node_status.sh"]] * 2
    assert {r.login for r in fake_ssh.runs("node_status.sh")} == {"alice"}, "asked as the user"
    assert html.count("load 0.25, 2.0 GiB free, 3 servers") == 2
    await s.get_options_form()
    assert len(asked) == 2, "cached within node_status_ttl"
    assert len(fake_ssh.runs("node_status.sh")) == 2


async def test_a_node_that_does_not_answer_in_time_is_unreachable_and_refused(make_spawner, fake_ssh):
    s = make_spawner(**CLUSTER, node_status_timeout=0.2)
    release = threading.Event()

    def slow(args, stdin):
        release.wait(5)
        raise remote.ConnectError("cannot connect to alice@10.0.0.2:22: timed out")

    fake_ssh.node("10.0.0.1").on("node_status.sh", reply(load=0.1, mem_available_kib=2**20, servers=0))
    fake_ssh.node("10.0.0.2").on("node_status.sh", slow)
    started = time.monotonic()
    html = await s.get_options_form()
    assert time.monotonic() - started < 4, "the form did not wait for the slow node"
    n2 = html.split("<option")[2].split("</option>")[0]
    assert "disabled" in n2 and "unreachable" in n2
    with pytest.raises(Exception, match=r"node n2 is unreachable \(no answer within 0.2 s\)"):
        await s.apply_user_options(s, {"host": "n2"})
    release.set()

    def late_answer_arrived():
        status = HubResources.current().status.fresh(("10.0.0.2", "alice"), s.node_status_ttl)
        return status is not None and status.error.startswith("cannot connect")

    for _ in range(100):
        if late_answer_arrived():
            break
        await asyncio.sleep(0.02)

    with pytest.raises(
        Exception, match=r"node n2 is unreachable \(cannot connect.*\).*choose another node \(n1\)"
    ):
        await s.apply_user_options(s, {"host": "n2"})
    await s.apply_user_options(s, {"host": "n1"})


async def test_start_refuses_a_node_the_form_found_unreachable_without_connecting(
    make_spawner, fake_ssh, clock
):
    s = make_spawner(**CLUSTER, node_status_ttl=30)
    fake_ssh.refuse["10.0.0.1"] = remote.ConnectError("connection refused")
    fake_ssh.node("10.0.0.2").on("node_status.sh", reply(servers=0))
    await s.get_options_form()
    opened = len(fake_ssh.connections)
    s.user_options = {"host": "n1"}
    with pytest.raises(Exception, match=r"node n1 is unreachable \(connection refused\)"):
        await s.start()
    assert len(fake_ssh.connections) == opened and fake_ssh.runs("start_singleuser.sh") == [], "connected"
    # Once the status is older than node_status_ttl, the node may be tried again.
    clock.now += 31
    assert s.parts.placer.cached_status(Node("n1", "10.0.0.1")) is None
    del fake_ssh.refuse["10.0.0.1"]
    fake_ssh.node("10.0.0.1").on("start_singleuser.sh", STARTED)
    assert await s.start() == ("10.0.0.1", 50000)


def test_bashs_notice_of_a_killed_server_is_not_shown_as_a_diagnostic():
    # Printed by bash when start_singleuser.sh reaps the server it stopped: the script's source.
    stderr = (
        '/opt/rss/scripts/v1/common.sh: line 420:  5947 Killed                  setsid "${LAUNCH[@]}" '
        '"${cmd_exe}" exec "${extra[@]}" "${image}" "$@" < /dev/null >> "${log}" 2>&1\n'
        "start_singleuser.sh: the server did not listen on port 50000 within 20s\n"
        "[I server] Killed  by the test, as the server's log says"
    )
    assert remote.parse_reply(5, "", stderr).stderr == (
        "start_singleuser.sh: the server did not listen on port 50000 within 20s\n"
        "[I server] Killed  by the test, as the server's log says"
    )
