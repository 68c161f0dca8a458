"""GPUs with placement slurm: a partition's GPUs and types as the form shows them, and a GPU type
asked for, checked against the partition before anything is submitted."""

import pytest
from fakes import reply as script_reply
from jupyterhub.utils import format_exception
from test_slurm_options import PARTITIONS, partitions, reply, validate
from test_slurm_spawner import DEBUG as DEBUG_REPLY
from test_slurm_spawner import arg

from remotesingularityspawner import calls
from remotesingularityspawner.failures import SpawnException
from remotesingularityspawner.placement.slurm_form import render_slurm_form, slurm_options_from_form
from remotesingularityspawner.placement.slurm_request import Partition, parse_defaults
from remotesingularityspawner.request import OptionsError

TYPED = Partition.from_reply(
    reply("gpu", nodes=["rss-gpu1"], gpus_per_node=2, gpus_idle=1, gpus_total=2, gpu_types=["a100", "v100"])
)
PARTS = partitions(*PARTITIONS.values(), TYPED)


def test_a_partitions_gpus_and_types_are_read_and_summed_up_for_the_form():
    assert (TYPED.gpus_idle, TYPED.gpus_total, TYPED.gpu_types) == (1, 2, ("a100", "v100"))
    assert TYPED.summary() == "2/2 nodes idle, 3/4 CPUs idle, 1/2 GPUs free (a100, v100)"
    untyped = Partition.from_reply(reply("g", gpus_per_node=4, gpus_idle=3, gpus_total=4))
    assert untyped.summary().endswith(", 3/4 GPUs free")
    plain = Partition.from_reply(reply())  # a reply without GPU fields: none
    assert (plain.gpus_total, plain.gpu_types, plain.summary()) == (0, (), "2/2 nodes idle, 3/4 CPUs idle")


@pytest.mark.parametrize(
    "fields, what",
    [
        ({"gpu_types": "a100"}, "gpu_types"),
        ({"gpu_types": ["a;b"]}, "gpu_types"),
        ({"gpus_idle": -1}, "gpus_idle"),
    ],
)
def test_a_malformed_gpu_field_of_the_reply_is_refused(fields, what):
    with pytest.raises(ValueError, match=what):
        Partition.from_reply(reply(**fields))


def test_a_gpu_type_of_the_partition_is_taken_with_the_count_and_round_trips():
    request = validate({"partition": "gpu", "gpus": 1, "gpu_type": "v100"}, parts=PARTS)
    assert (request.resources.gpus, request.resources.gpu_type) == (1, "v100")
    assert request.to_dict()["gpu_type"] == "v100"
    assert validate(request.to_dict(), parts=PARTS) == request
    assert "gpu_type" not in validate({"partition": "gpu", "gpus": 1}, parts=PARTS).to_dict()


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"partition": "gpu", "gpus": 1, "gpu_type": "h100"},
            "gpu_type 'h100' is not a GPU type of partition gpu: a100, v100",
        ),
        (
            {"partition": "small", "gpus": 1, "gpu_type": "a100"},
            "gpu_type 'a100' cannot be chosen: partition small has no GPU types",
        ),
        ({"partition": "gpu", "gpu_type": "a100"}, "gpu_type 'a100' needs at least 1 GPU (gpus)"),
        ({"partition": "gpu", "gpus": 1, "gpu_type": "a100:2"}, "gpu_type 'a100:2' is not a GPU type name"),
        ({"partition": "gpu", "gpus": 1, "gpu_type": "a;id"}, "gpu_type 'a;id' is not a GPU type name"),
        (
            {"partition": "gpu", "gpus": 1, "gpu_type": ["a100"]},
            "gpu_type \"['a100']\" is not a GPU type name",
        ),
    ],
)
def test_a_gpu_type_the_partition_has_not_is_refused_naming_the_field(options, message):
    with pytest.raises(OptionsError) as e:
        validate(options, parts=PARTS)
    assert str(e.value).startswith(message), str(e.value)


def test_submit_passes_the_type_after_the_count():
    request = validate({"partition": "gpu", "gpus": 2, "gpu_type": "a100"}, parts=PARTS)
    call = calls.submit_call(job_name="j", partition="gpu", resources=request.resources, host=None,
                             output_dir="d", sbatch_args=(), timeout=5)  # fmt: skip
    assert (arg(call.args, "--gpus"), arg(call.args, "--gpu-type")) == ("2", "a100")


def test_the_form_offers_the_types_of_the_selected_partition_and_they_come_back():
    html = render_slurm_form(list(PARTS.values()), {}, parse_defaults({}), "")
    assert "gpu — 2/2 nodes idle, 3/4 CPUs idle, 1/2 GPUs free (a100, v100)" in html
    assert '<div class="row rss-site" data-partition="gpu" hidden>' in html
    assert '<option value="v100">v100</option>' in html and "any type" in html
    assert 'data-partition="debug"' not in html, "a partition without types shows no GPU type"
    options = slurm_options_from_form({"partition": ["gpu"], "gpus": ["1"], "gpu_type": ["a100"]})
    assert options["gpu_type"] == "a100"
    assert "gpu_type" not in slurm_options_from_form({"partition": ["gpu"], "gpu_type": [""]})


async def test_a_spawn_asks_sbatch_for_the_type_and_a_bad_one_submits_nothing(make_spawner, fake_ssh):
    nodes = "rss-node1:10.0.0.11,rss-node2:10.0.0.12"
    typed = {**DEBUG_REPLY, "gpus_per_node": 2, "gpus_idle": 2, "gpus_total": 2, "gpu_types": ["tesla"]}
    calls_made = []

    def slurm_job(args, stdin):
        calls_made.append(list(args))
        return {
            "partitions": script_reply(partitions=[typed]),
            "submit": script_reply(job_id="5"),
            "cancel": script_reply(job_id="5", state="CANCELLED"),
        }.get(args[0], script_reply(job_id="5", state="RUNNING", node="rss-node2", partition="debug"))

    fake_ssh.node("10.0.0.11").on("slurm_job.sh", slurm_job)
    fake_ssh.node("10.0.0.12").on("start_singleuser.sh", script_reply(pid=9, start_time=5, port=50000))
    s = make_spawner(nodelist=nodes, singularity_container_path="/img.sif", placement="slurm")
    s.user_options = {"partition": "debug", "gpus": 1, "gpu_type": "a100"}
    with pytest.raises(SpawnException) as e:
        await s.start()
    assert e.value.status_code == 400
    assert "gpu_type 'a100' is not a GPU type of partition debug: tesla" in format_exception(e.value)[0]
    assert "submit" not in [c[0] for c in calls_made]
    s.user_options = {"partition": "debug", "gpus": 1, "gpu_type": "tesla"}
    assert await s.start() == ("10.0.0.12", 50000)
    submit = next(c for c in calls_made if c[0] == "submit")
    assert (arg(submit, "--gpus"), arg(submit, "--gpu-type")) == ("1", "tesla")
