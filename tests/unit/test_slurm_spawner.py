"""placement = "slurm" against fake nodes: submit, queue, start in the job, poll, stop, cancel."""

import asyncio

import pytest
from fakes import reply
from jupyterhub.utils import format_exception
from slurm_cases import BAD_VALUES

from remotesingularityspawner import remote, state
from remotesingularityspawner.failures import SpawnException

NODES = "rss-node1:10.0.0.11,rss-node2:10.0.0.12"
SUBMIT = "10.0.0.11"  # the first node of the list: the default submit host
DEBUG = {
    "name": "debug", "available": True, "default": True, "nodes": ["rss-node1", "rss-node2"],
    "nodes_idle": 2, "nodes_total": 2, "cpus_idle": 4, "cpus_total": 4, "cpus_per_node": 2,
    "memory_mb_per_node": 2000, "gpus_per_node": 0, "max_time": "1:00:00",
}  # fmt: skip
SMALL = {**DEBUG, "name": "small", "default": False, "nodes": ["rss-node2"], "max_time": "30:00"}


def arg(args, option):
    return args[args.index(option) + 1]


class Queue:
    """slurm_job.sh on the submit host: a job that waits *pending* state calls, then runs."""

    def __init__(self, node="rss-node2", address="", pending=0, reason="Resources", job="4242"):
        self.node, self.address, self.pending, self.reason, self.job = node, address, pending, reason, job
        self.calls = []
        self.partitions = [DEBUG, SMALL]

    def __call__(self, args, stdin):
        self.calls.append(list(args))
        action = args[0]
        if action == "partitions":
            return reply(partitions=self.partitions)
        if action == "submit":
            return reply(job_id=self.job)
        if action == "cancel":
            return reply(job_id=self.job, state="CANCELLED")
        if self.pending > 0:
            self.pending -= 1
            return reply(job_id=self.job, state="PENDING", reason=self.reason, partition="debug", position=3)
        return reply(job_id=self.job, state="RUNNING", reason="None", partition="debug",
                     node=self.node, address=self.address)  # fmt: skip

    def actions(self):
        return [c[0] for c in self.calls]


@pytest.fixture
def queue(fake_ssh):
    q = Queue()
    fake_ssh.node(SUBMIT).on("slurm_job.sh", q)
    return q


@pytest.fixture
def slurm_spawner(make_spawner, fake_ssh):
    def make(**traits):
        traits = {"nodelist": NODES, "singularity_container_path": "/img.sif", "placement": "slurm", **traits}
        s = make_spawner(**traits)
        s.user_options = {"partition": "debug", "cpus": 1, "memory": "512M", "time": "0:10:00"}
        return s

    return make


async def events(s):
    seen = []
    async for event in s.progress():
        seen.append(event["message"])
        if "allocated" in event["message"]:
            return seen
    return seen


async def test_a_spawn_submits_a_job_waits_in_the_queue_and_starts_the_server_in_it(
    slurm_spawner, fake_ssh, queue
):
    queue.pending = 2
    s = slurm_spawner(slurm_sbatch_args=["--account=jupyter"])
    node2 = fake_ssh.node("10.0.0.12")
    node2.on("start_singleuser.sh", reply(pid=9, start_time=5, port=50000))
    listener = asyncio.ensure_future(events(s))
    assert await s.start() == ("10.0.0.12", 50000)
    submit = next(c for c in queue.calls if c[0] == "submit")
    asked = [arg(submit, option) for option in ("--partition", "--cpus", "--memory", "--time")]
    assert asked == ["debug", "1", "512", "10"]
    assert arg(submit, "--sbatch-arg") == "--account=jupyter" and "--gpus" not in submit
    assert arg(submit, "--job-name") == "jupyter-alice"
    start = node2.runs[-1]
    assert arg(start.args, "--slurm-job") == "4242"
    messages = await asyncio.wait_for(listener, 5)
    assert "queued in partition debug: Resources, position 3" in messages
    assert "allocated node rss-node2 (job 4242)" in messages
    saved = s.get_state()
    assert (saved["job_id"], saved["partition"], saved["node"]) == ("4242", "debug", "rss-node2")


@pytest.mark.parametrize("gpus, nv", [(1, True), (0, False)])
async def test_a_job_with_gpus_gets_the_gpu_args_on_any_node(slurm_spawner, fake_ssh, queue, gpus, nv):
    queue.partitions = [{**DEBUG, "gpus_per_node": 2}]
    node2 = fake_ssh.node("10.0.0.12")
    node2.on("start_singleuser.sh", reply(pid=9, start_time=5, port=50000))
    s = slurm_spawner(gpu_nodes=[])  # rss-node2 is not listed as a GPU node
    s.user_options = {**s.user_options, "gpus": gpus}
    await s.start()
    submit = next(c for c in queue.calls if c[0] == "submit")
    assert ("--gpus" in submit) == nv
    start = node2.runs[-1].args
    runtime_args = [start[i + 1] for i, a in enumerate(start) if a == "--singularity-arg"]
    assert ("--nv" in runtime_args) == nv, runtime_args


async def test_a_node_not_in_the_node_list_is_reached_at_slurms_node_address(slurm_spawner, fake_ssh, queue):
    queue.node, queue.address = "gpu07", "10.0.0.77"
    fake_ssh.node("10.0.0.77").on("start_singleuser.sh", reply(pid=9, start_time=5, port=50001))
    s = slurm_spawner()
    assert await s.start() == ("10.0.0.77", 50001)
    assert s.placed.node == "gpu07"


async def test_a_node_that_cannot_be_reached_fails_the_spawn_naming_it_and_the_job_is_cancelled(
    slurm_spawner, fake_ssh, queue
):
    queue.node, queue.address = "gpu07", "bad address!"
    s = slurm_spawner()
    with pytest.raises(SpawnException) as e:
        await s.start()
    assert format_exception(e.value)[0] == (
        "Cannot reach the node Slurm allocated, 'gpu07' (NodeAddr 'bad address!'): not in nodelist, "
        "and its NodeAddr is neither an IP address nor a host name"
    )
    assert queue.actions()[-1] == "cancel"
    assert "10.0.0.77" not in fake_ssh.nodes, "nothing connected to it"


@pytest.mark.parametrize("options, field", BAD_VALUES)
async def test_a_bad_value_is_refused_naming_the_field_and_no_job_is_submitted(
    slurm_spawner, fake_ssh, queue, options, field
):
    s = slurm_spawner()
    s.user_options = {**s.user_options, **options}
    with pytest.raises(SpawnException) as e:
        await s.start()
    assert e.value.status_code == 400
    assert format_exception(e.value)[0].startswith(f"Cannot start your server: {field} ")
    assert "submit" not in queue.actions()


async def test_a_badly_formed_value_is_refused_before_any_connection(slurm_spawner, fake_ssh, queue):
    s = slurm_spawner()
    s.user_options = {"partition": "$(id)", "cpus": 1}
    with pytest.raises(SpawnException, match="partition"):
        await s.start()
    assert fake_ssh.runs() == []


async def test_a_failed_start_in_the_job_cancels_the_job(slurm_spawner, fake_ssh, queue):
    fake_ssh.node("10.0.0.12").on("start_singleuser.sh", reply(remote.ExitCode.SERVER_DIED, stderr="it died"))
    s = slurm_spawner()
    with pytest.raises(SpawnException, match="did not start"):
        await s.start()
    assert queue.actions()[-1] == "cancel" and arg(queue.calls[-1], "--job") == "4242"


async def test_a_job_still_queued_when_start_timeout_nears_is_cancelled_and_the_reason_said(
    slurm_spawner, fake_ssh, queue
):
    queue.pending = 10**6
    s = slurm_spawner(start_timeout=2)
    with pytest.raises(SpawnException) as e:
        await s.start()
    message = format_exception(e.value)[0]
    assert "still queued in partition debug: Resources, position 3" in message
    assert "the job 4242 was cancelled" in message
    assert queue.actions()[-1] == "cancel"


async def test_a_job_queued_past_start_timeout_but_within_the_queue_timeout_starts(
    slurm_spawner, fake_ssh, queue
):
    queue.pending = 6  # about 3 s of looking at the queue, three times start_timeout
    fake_ssh.node("10.0.0.12").on("start_singleuser.sh", reply(pid=9, start_time=5, port=50000))
    s = slurm_spawner(start_timeout=1, slurm_queue_timeout=30)
    s.run_pre_spawn_hook()  # as the Hub does before start()
    assert s.start_timeout == 31, "the Hub waits for the queue and for the server's start"
    listener = asyncio.ensure_future(collect(s))
    assert await s.start() == ("10.0.0.12", 50000)
    messages = await asyncio.wait_for(listener, 5)
    assert "waiting in the queue for a node, up to 30 s (slurm_queue_timeout)" in messages
    waited = next(m for m in messages if m.startswith("waited "))
    assert waited.endswith("in the queue; the server now has up to 1 s to start (start_timeout)"), waited


async def collect(s):
    seen = []
    async for event in s.progress():
        seen.append(event["message"])
        if event["message"].startswith("waited "):
            return seen
    return seen


async def test_a_job_queued_past_the_queue_timeout_is_cancelled_naming_the_setting(
    slurm_spawner, fake_ssh, queue
):
    queue.pending = 10**6
    s = slurm_spawner(start_timeout=30, slurm_queue_timeout=1)
    s.run_pre_spawn_hook()
    with pytest.raises(SpawnException) as e:
        await s.start()
    message = format_exception(e.value)[0]
    assert "still queued in partition debug: Resources, position 3 after 1 s" in message
    assert message.endswith("or ask your administrator to raise slurm_queue_timeout."), message
    assert queue.actions()[-1] == "cancel"


def test_the_hubs_wait_is_widened_once_per_spawn_and_follows_a_changed_start_timeout(
    slurm_spawner, make_spawner
):
    hooked = []
    s = slurm_spawner(start_timeout=60, slurm_queue_timeout=600, pre_spawn_hook=hooked.append)
    for _ in range(3):
        s.run_pre_spawn_hook()
        assert (s.start_timeout, s.parts.placer.server_start_timeout()) == (660, 60)
    assert hooked == [s] * 3, "the admin's pre_spawn_hook still runs"
    s.start_timeout = 90  # a group override, between two spawns
    s.run_pre_spawn_hook()
    assert (s.start_timeout, s.parts.placer.server_start_timeout()) == (690, 90)
    ssh = make_spawner(nodelist=NODES, start_timeout=60, slurm_queue_timeout=600)
    ssh.run_pre_spawn_hook()
    assert (ssh.start_timeout, ssh.parts.placer.server_start_timeout()) == (60, 60), "no queue, no wait added"


async def test_a_spawn_the_hub_cancels_while_queued_cancels_the_job(slurm_spawner, fake_ssh, queue):
    queue.pending = 10**6
    s = slurm_spawner()
    start = asyncio.ensure_future(s.start())
    for _ in range(250):
        await asyncio.sleep(0.02)
        if queue.actions().count("state") >= 2:
            break
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    for _ in range(250):
        if "cancel" in queue.actions():
            break
        await asyncio.sleep(0.02)
    assert "cancel" in queue.actions()


async def test_a_job_that_ends_before_it_runs_fails_the_spawn_naming_its_state(slurm_spawner, fake_ssh):
    fake_ssh.node(SUBMIT).on(
        "slurm_job.sh",
        lambda args, stdin: {
            "partitions": reply(partitions=[DEBUG]),
            "submit": reply(job_id="7"),
            "state": reply(
                job_id="7", state="FAILED", reason="launch failed requeued held", partition="debug"
            ),
        }.get(args[0], reply()),
    )
    s = slurm_spawner()
    with pytest.raises(SpawnException) as e:
        await s.start()
    assert format_exception(e.value)[0] == (
        "Your Slurm job 7 ended before your server started: FAILED (launch failed requeued held)"
    )


async def test_sbatch_refusing_the_job_is_said_with_its_reason(slurm_spawner, fake_ssh, queue):
    fake_ssh.node(SUBMIT).on(
        "slurm_job.sh",
        lambda args, stdin: (
            reply(partitions=[DEBUG])
            if args[0] == "partitions"
            else reply(
                remote.ExitCode.SLURM, stderr="sbatch: error: Batch job submission failed: Invalid account"
            )
        ),
    )
    s = slurm_spawner()
    with pytest.raises(SpawnException) as e:
        await s.start()
    assert format_exception(e.value)[0] == (
        "Cannot submit your job on rss-node1: sbatch: error: Batch job submission failed: Invalid account"
    )


# --- poll and stop -----------------------------------------------------------------------


def slurm_state(**values):
    return {
        "version": state.STATE_VERSION, "pid": 42, "start_time": 7, "address": "10.0.0.12",
        "node": "rss-node2", "login": "alice", "port": 50000, "job_id": "4242", "partition": "debug",
        **values,
    }  # fmt: skip


async def test_a_server_whose_job_ended_is_reported_stopped_and_its_job_released(
    slurm_spawner, fake_ssh, queue
):
    s = slurm_spawner()
    s.load_state(slurm_state())
    fake_ssh.node("10.0.0.12").on("check_pid.sh", reply(remote.ExitCode.NOT_RUNNING))
    assert await s.poll() == 0
    assert queue.actions() == ["cancel"]


async def test_stop_ends_the_server_then_cancels_its_job_and_a_second_stop_is_harmless(
    slurm_spawner, fake_ssh, queue
):
    s = slurm_spawner()
    s.load_state(slurm_state())
    node2 = fake_ssh.node("10.0.0.12")
    node2.on("stop.sh", reply(signal="TERM"))
    await s.stop()
    assert node2.scripts_run() == ["stop.sh"] and queue.actions() == ["cancel"]
    assert s.placed.job_id == ""
    await s.stop()
    assert node2.scripts_run() == ["stop.sh"] and queue.actions() == ["cancel"]


async def test_an_unreachable_node_whose_job_slurm_says_ended_is_stopped_at_once(
    slurm_spawner, fake_ssh, queue
):
    fake_ssh.refuse["10.0.0.12"] = remote.ConnectError("cannot connect to 10.0.0.12:22: timed out")
    fake_ssh.node(SUBMIT).on(
        "slurm_job.sh",
        lambda args, stdin: reply(job_id="4242", state="NODE_FAIL" if args[0] == "state" else "GONE"),
    )
    s = slurm_spawner()
    s.load_state(slurm_state())
    s.probe_port = lambda *a: None  # the port does not answer either
    assert await s.poll() == 1


def test_a_state_of_version_1_loads_with_no_job(make_spawner):
    s = make_spawner()
    s.load_state({"version": 1, "pid": 42, "start_time": 7, "address": "10.0.0.1", "node": "n1"})
    assert (s.process.pid, s.placed.job_id, s.placed.partition) == (42, "", "")


def test_a_slurm_server_state_survives_a_hub_restart(make_spawner):
    s = make_spawner()
    s.load_state(slurm_state())
    again = make_spawner()
    again.load_state(s.get_state())
    assert (again.placed.job_id, again.placed.partition, again.placed.node, again.process.pid) == (
        "4242", "debug", "rss-node2", 42
    )


# --- the form ----------------------------------------------------------------------------


async def test_the_form_shows_the_partitions_sinfo_shows_the_user(slurm_spawner, fake_ssh, queue):
    s = slurm_spawner(slurm_partitions=["debug"])
    html = await s._options_form_default()(s)
    assert "debug" in html and "2/2 nodes idle, 4/4 CPUs idle" in html
    assert 'value="small"' not in html
    assert queue.actions() == ["partitions"]
    assert s.run_options_from_form({"partition": ["debug"], "cpus": ["2"], "memory": ["1G"]}) == {
        "partition": "debug", "cpus": "2", "memory": "1G",
    }  # fmt: skip


async def test_placement_ssh_keeps_the_node_form(make_spawner, fake_ssh):
    s = make_spawner(nodelist=NODES)
    fake_ssh.node("10.0.0.11").on("node_status.sh", reply())
    fake_ssh.node("10.0.0.12").on("node_status.sh", reply())
    html = await s._options_form_default()(s)
    assert 'name="host"' in html and 'name="partition"' not in html


async def test_each_change_in_the_queue_is_said_once(slurm_spawner, fake_ssh, queue):
    queue.pending = 4
    s = slurm_spawner()
    fake_ssh.node("10.0.0.12").on("start_singleuser.sh", reply(pid=9, start_time=5, port=50000))
    listener = asyncio.ensure_future(events(s))
    await s.start()
    messages = await asyncio.wait_for(listener, 5)
    assert messages.count("queued in partition debug: Resources, position 3") == 1


async def test_no_partition_for_the_user_is_said_so(slurm_spawner, fake_ssh):
    fake_ssh.node(SUBMIT).on("slurm_job.sh", reply(partitions=[]))
    s = slurm_spawner()
    with pytest.raises(SpawnException) as e:
        await s.start()
    message = format_exception(e.value)[0]
    assert message == "Cannot start your server: sinfo on rss-node1 shows you no partition"


async def test_a_server_gone_with_its_unreachable_node_has_its_job_cancelled(slurm_spawner, fake_ssh, queue):
    fake_ssh.refuse["10.0.0.12"] = remote.ConnectError("cannot connect to 10.0.0.12:22: refused")
    s = slurm_spawner()
    s.load_state(slurm_state())
    s.probe_port = lambda *a: False  # the node answers that nothing listens there
    assert await s.poll() == 1
    for _ in range(250):
        if "cancel" in queue.actions():
            break
        await asyncio.sleep(0.02)
    assert queue.actions() == ["state", "cancel"]
