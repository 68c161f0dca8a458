"""Slurm options: what the form and the REST API may ask of a partition, and the admin's settings."""

import pytest

from remotesingularityspawner.placement.slurm_form import render_slurm_form, slurm_options_from_form
from remotesingularityspawner.placement.slurm_request import (
    Limits,
    Partition,
    Resources,
    SlurmRequest,
    check_slurm_format,
    format_memory,
    format_time,
    parse_defaults,
    parse_memory,
    parse_partition_limits,
    parse_time,
    parse_time_limit,
    validate_slurm_options,
)
from remotesingularityspawner.placement.slurm_site import SiteChoice, check_sbatch_args
from remotesingularityspawner.request import Bind, OptionsError


def reply(name="debug", **fields):
    """One partition as the sinfo script reports it."""
    data = {
        "name": name,
        "available": True,
        "nodes": ["rss-node1", "rss-node2"],
        "nodes_idle": 2,
        "nodes_total": 2,
        "cpus_idle": 3,
        "cpus_total": 4,
        "cpus_per_node": 2,
        "memory_mb_per_node": 2000,
        "gpus_per_node": 0,
        "max_time": "1:00:00",
    }
    return data | fields


def partitions(*items):
    return {p.name: p for p in items}


DEBUG = Partition.from_reply(reply(default=True))
SMALL = Partition.from_reply(reply("small", nodes=["rss-node2"], gpus_per_node=2, max_time="infinite"))
GPU = Partition.from_reply(
    reply("gpu", nodes=["rss-gpu1"], cpus_per_node=64, memory_mb_per_node=256000, gpus_per_node=4)
)
PARTITIONS = partitions(DEBUG, SMALL, GPU)
DEFAULTS = parse_defaults({})


def validate(raw, limits=None, parts=None, defaults=DEFAULTS):
    return validate_slurm_options(raw, PARTITIONS if parts is None else parts, limits or {}, defaults)


# --- units ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, mb",
    [
        ("4G", 4096),
        ("512M", 512),
        ("512m", 512),
        ("4096", 4096),
        (4096, 4096),
        ("1T", 1024**2),
        (" 2g ", 2048),
    ],
)
def test_memory_sizes(value, mb):
    assert parse_memory(value) == mb


@pytest.mark.parametrize("value", ["lots", "", "0", 0, -1, "4 G", "4GB", "1.5G", "4K", True, None, "$(id)"])
def test_bad_memory_sizes_are_refused_naming_the_field(value):
    with pytest.raises(OptionsError, match=r"^memory "):
        parse_memory(value)


@pytest.mark.parametrize(
    "value, minutes",
    [
        (30, 30),
        ("30", 30),
        ("90:00", 90),  # MM:SS: the minutes have no upper bound
        ("1:30", 2),  # seconds round up
        ("0:10:00", 10),
        ("1:00:00", 60),
        ("100:00:00", 6000),
        ("0:00:01", 1),
        ("1-2", 26 * 60),
        ("1-2:30", 26 * 60 + 30),
        ("1-0:00:01", 24 * 60 + 1),
    ],
)
def test_slurm_time_formats(value, minutes):
    assert parse_time(value) == minutes


@pytest.mark.parametrize(
    "value",
    [
        "forever",
        "",
        "0",
        "0:00:00",
        "1:60",
        "1:60:00",
        "1-24",
        "1-2:60",
        "1:2:3:4",
        "1-",
        "-1",
        True,
        1.5,
        "UNLIMITED",
    ],
)
def test_bad_times_are_refused_naming_the_field(value):
    with pytest.raises(OptionsError, match=r"^time "):
        parse_time(value)


def test_units_are_shown_as_the_user_writes_them():
    assert [format_memory(mb) for mb in (512, 2000, 2048, 1024**2, 1025)] == [
        "512M",
        "2000M",
        "2G",
        "1T",
        "1025M",
    ]
    assert [format_time(m) for m in (90, 10, 1, 6000)] == ["1:30:00", "0:10:00", "0:01:00", "100:00:00"]
    assert Resources(1, 512, 0, 10).to_dict() == {"cpus": 1, "memory": "512M", "gpus": 0, "time": "0:10:00"}


# --- the partitions sinfo shows -------------------------------------------------------------


def test_partition_from_reply_and_its_summary():
    assert DEBUG == Partition(
        "debug", True, ("rss-node1", "rss-node2"), 2, 2, 3, 4, 2, 2000, 0, 60, default=True
    )
    assert DEBUG.summary() == "2/2 nodes idle, 3/4 CPUs idle"
    down = Partition.from_reply(reply(available=False, nodes_idle=0, cpus_idle=0))
    assert down.summary() == "0/2 nodes idle, 0/4 CPUs idle, down"
    assert SMALL.max_time_minutes is None and SMALL.default is False


def test_slurms_time_limit_formats_in_minutes_seconds_rounded_up():
    limits = ["30", "30:00", "30:01", "1:00:00", "01:30:01", "1-00", "1-02", "1-02:30", "2-00:00:01"]
    assert [parse_time_limit(limit, "p") for limit in [*limits, "infinite", "UNLIMITED"]] == [
        30, 30, 31, 60, 91, 1440, 1560, 1590, 2881, None, None,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "data",
    [
        [],
        reply(name=""),
        reply(name=3),
        reply(nodes="rss-node1"),
        reply(nodes=[1]),
        reply(cpus_idle=-1),
        reply(cpus_total="4"),
        reply(gpus_per_node=True),
        reply(max_time="0"),
        reply(max_time=60),
        reply(max_time="soon"),
        reply(available="yes"),
        {k: v for k, v in reply().items() if k != "memory_mb_per_node"},
    ],
)
def test_malformed_partition_replies_are_refused(data):
    with pytest.raises(ValueError):
        Partition.from_reply(data)


# --- stage 1: the format alone --------------------------------------------------------------


def test_format_normalizes_and_takes_strings_of_digits_from_a_form():
    raw = {"partition": "debug", "cpus": "2", "memory": "1G", "gpus": "0", "time": "30", "host": "rss-node1"}
    assert check_slurm_format(raw) == {
        "partition": "debug",
        "cpus": 2,
        "memory_mb": 1024,
        "gpus": 0,
        "time_minutes": 30,
        "host": "rss-node1",
        "binds": (),
        "site": SiteChoice(),
        "gpu_type": None,
    }
    empty = dict.fromkeys(["partition", "cpus", "memory_mb", "gpus", "time_minutes", "host", "gpu_type"])
    empty |= {"binds": (), "site": SiteChoice()}
    assert check_slurm_format({}) == check_slurm_format(None) == check_slurm_format({"host": ""}) == empty
    assert check_slurm_format({"host": "10.0.0.9"})["host"] == "10.0.0.9"
    assert check_slurm_format({"host": "fd00::9"})["host"] == "fd00::9"


@pytest.mark.parametrize(
    "raw, field",
    [
        ({"partition": "debug;rm -rf ~"}, "partition"),
        ({"partition": "$(id)"}, "partition"),
        ({"partition": "a" * 65}, "partition"),
        ({"partition": ["debug"]}, "partition"),
        ({"host": "rss node1"}, "host"),
        ({"host": "$(id)"}, "host"),
        ({"host": "rss-node1\n"}, "host"),
        ({"host": "fe80::1%$(id)"}, "host"),
        ({"host": "-node"}, "host"),
        ({"cpus": True}, "cpus"),
        ({"cpus": "two"}, "cpus"),
        ({"cpus": "-1"}, "cpus"),
        ({"cpus": 1.5}, "cpus"),
        ({"gpus": "1;id"}, "gpus"),
        ({"memory": "lots"}, "memory"),
        ({"time": "forever"}, "time"),
        ({"binds": ["relative"]}, "bind"),
    ],
)
def test_hostile_or_malformed_values_are_refused_naming_the_field(raw, field):
    with pytest.raises(OptionsError) as e:
        check_slurm_format(raw)
    assert str(e.value).startswith(field + " ")
    value = raw[next(iter(raw))]
    if isinstance(value, str):
        assert repr(value)[:40] in str(e.value), "the message names the value"


def test_unknown_options_are_refused():
    with pytest.raises(OptionsError, match=r"unknown option.*'image'"):
        check_slurm_format({"partition": "debug", "image": "/evil.sif"})


# --- stage 2: against the partitions and the admin's limits -------------------------------------


def test_a_good_request():
    request = validate({"partition": "debug", "cpus": 1, "memory": "512M", "time": "0:10:00"})
    assert request == SlurmRequest("debug", Resources(1, 512, 0, 10), None, ())
    assert request.to_dict() == {
        "partition": "debug",
        "cpus": 1,
        "memory": "512M",
        "gpus": 0,
        "time": "0:10:00",
        "host": None,
        "binds": [],
    }
    assert validate(request.to_dict()) == request, "a request's dict asks for the same again"


def test_host_and_binds_in_a_request():
    request = validate(
        {"partition": "small", "host": "rss-node2", "binds": "/data;/scratch/x:/x:ro", "gpus": 2}
    )
    assert request.host == "rss-node2" and request.resources.gpus == 2
    assert request.binds == (Bind("/data", "/data", "rw"), Bind("/scratch/x", "/x", "ro"))


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"cpus": 0}, "cpus 0 is out of range for partition debug: 1 to 2"),
        ({"cpus": 3}, "cpus 3 is out of range for partition debug: 1 to 2"),
        ({"cpus": -1}, "cpus -1 is out of range for partition debug: 1 to 2"),
        ({"memory": "4G"}, "memory 4G is out of range for partition debug: 1M to 2000M"),
        ({"memory": 2001}, "memory 2001M is out of range for partition debug: 1M to 2000M"),
        ({"gpus": 1}, "gpus 1 is out of range for partition debug: 0 to 0"),
        ({"partition": "small", "gpus": 3}, "gpus 3 is out of range for partition small: 0 to 2"),
        ({"time": "2:00:00"}, "time 2:00:00 is out of range for partition debug: 0:01:00 to 1:00:00"),
        ({"time": "1-0"}, "time 24:00:00 is out of range for partition debug: 0:01:00 to 1:00:00"),
        ({"partition": "nope"}, "partition 'nope' is not one you may use: debug, small, gpu"),
        ({"host": "rss-gpu1"}, "host 'rss-gpu1' is not a node of partition debug: rss-node1, rss-node2"),
        (
            {"partition": "small", "host": "rss-node1"},
            "host 'rss-node1' is not a node of partition small: rss-node2",
        ),
    ],
)
def test_values_out_of_range_are_refused_with_the_field_and_the_range(raw, message):
    with pytest.raises(OptionsError) as e:
        validate(raw)
    assert str(e.value) == message


def test_the_time_of_a_partition_without_a_limit_is_not_bounded():
    assert validate({"partition": "small", "time": "7-0"}).resources.time_minutes == 7 * 24 * 60


def test_the_admins_limits_are_stricter_and_restrict_the_partitions():
    limits = parse_partition_limits(
        {"small": {"cpus": 1, "time": "2:00:00"}, "gpu": {"memory": "8G", "gpus": 1}}
    )
    with pytest.raises(OptionsError, match=r"^partition 'debug' is not one you may use: small, gpu$"):
        validate({"partition": "debug"}, limits)
    with pytest.raises(OptionsError, match=r"^cpus 2 is out of range for partition small: 1 to 1$"):
        validate({"partition": "small", "cpus": 2}, limits)
    with pytest.raises(
        OptionsError, match=r"^time 3:00:00 is out of range for partition small: 0:01:00 to 2:00:00$"
    ):
        validate({"partition": "small", "time": "3:00:00"}, limits)
    with pytest.raises(OptionsError, match=r"^memory 9G is out of range for partition gpu: 1M to 8G$"):
        validate({"partition": "gpu", "memory": "9G"}, limits)
    assert validate(
        {"partition": "gpu", "cpus": 64, "memory": "8G", "gpus": 1}, limits
    ).resources == Resources(64, 8192, 1, 60)


def test_the_default_partition():
    assert validate({}).partition == "debug", "the one sinfo marks as default"
    limits = parse_partition_limits(["gpu", "small"])
    assert validate({}, limits).partition == "gpu", "the admin's first when the default is not allowed"
    no_default = partitions(Partition.from_reply(reply("b")), Partition.from_reply(reply("a")))
    assert validate({}, parts=no_default).partition == "b", "else sinfo's first"
    debug_down = partitions(Partition.from_reply(reply(default=True, available=False)), SMALL)
    assert validate({}, parts=debug_down).partition == "small", "one that is up"


def test_a_partition_that_is_down_or_none_at_all():
    parts = partitions(Partition.from_reply(reply(available=False)), SMALL)
    with pytest.raises(OptionsError, match=r"^partition debug is down; please choose another: small$"):
        validate({"partition": "debug"}, parts=parts)
    with pytest.raises(OptionsError, match=r"^partition: no Slurm partition"):
        validate({}, parts={})
    with pytest.raises(OptionsError, match=r"^partition: no Slurm partition"):
        validate({}, parse_partition_limits(["other"]))


def test_defaults_are_lowered_to_the_limits_but_user_values_are_not():
    defaults = parse_defaults({"cpus": 8, "memory": "4G", "gpus": 1, "time": "8:00:00"})
    assert validate({}, defaults=defaults).resources == Resources(2, 2000, 0, 60)
    assert validate({"partition": "small"}, defaults=defaults).resources == Resources(2, 2000, 1, 480)
    with pytest.raises(OptionsError, match=r"^cpus 8 is out of range"):
        validate({"cpus": 8}, defaults=defaults)


# --- the admin's settings ---------------------------------------------------------------------


def test_partition_limits_setting():
    assert parse_partition_limits([]) == parse_partition_limits({}) == {}
    assert parse_partition_limits(["debug", "small"]) == {"debug": Limits(), "small": Limits()}
    assert parse_partition_limits(
        {"debug": {"cpus": 2, "memory": "2G", "gpus": 0, "time": "1-0"}, "small": None}
    ) == {
        "debug": Limits(2, 2048, 0, 1440),
        "small": Limits(),
    }


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("debug", "not a list of partition names"),
        (["debug;id"], "'debug;id' is not a partition name"),
        ([3], "'3' is not a partition name"),
        ({"debug": {"cpu": 2}}, "partition debug: unknown key(s) 'cpu'"),
        ({"debug": {"cpus": 0}}, "partition debug: cpus '0' is less than 1"),
        ({"debug": {"gpus": -1}}, "partition debug: gpus '-1' is less than 0"),
        ({"debug": {"memory": "lots"}}, "partition debug: memory 'lots' is not a memory size"),
        ({"debug": {"time": "forever"}}, "partition debug: time 'forever' is not a duration"),
        ({"debug": 4}, "partition debug: '4' is not a dict"),
    ],
)
def test_bad_partition_limits_name_the_setting_and_the_entry(value, fragment):
    with pytest.raises(ValueError) as e:
        parse_partition_limits(value)
    assert str(e.value).startswith("c.RemoteSingularitySpawner.slurm_partitions: ")
    assert fragment in str(e.value)


def test_default_resources_setting():
    assert parse_defaults({}) == parse_defaults(None) == Resources(1, 1024, 0, 60)
    assert parse_defaults({"memory": "512M", "time": 30}) == Resources(1, 512, 0, 30)
    for value, fragment in [({"cpus": 0}, "cpus"), ({"mem": "1G"}, "'mem'"), ("1G", "is not a dict")]:
        with pytest.raises(ValueError) as e:
            parse_defaults(value)
        assert str(e.value).startswith("c.RemoteSingularitySpawner.slurm_default_resources: ")
        assert fragment in str(e.value)


def test_sbatch_args_setting():
    args = ["--account=proj-1", "--qos=normal", "--exclusive", "--constraint=a100", "--mail-user=a@b.c"]
    assert check_sbatch_args(args) == tuple(args)
    assert check_sbatch_args(None) == check_sbatch_args([]) == ()


@pytest.mark.parametrize(
    "item, fragment",
    [
        ("-A proj", "is not one word"),
        ("-p", "is not one word"),
        ("--account proj", "is not one word"),
        ("--account=$(id)", "is not one word"),
        ("--account='x'", "is not one word"),
        ("--account=", "is not one word"),
        ("--Account=x", "is not one word"),
        ("--partition=big", "sets --partition"),
        ("--part=big", "sets --partition"),
        ("--wrap=id", "sets --wrap"),
        ("--mem=1G", "sets --mem"),
        ("--time=1", "sets --time"),
        ("--output=/tmp/x", "sets --output"),
        ("--nodelist=n1", "sets --nodelist"),
        ("--job-name=x", "sets --job-name"),
        ("--cpus-per-task=4", "sets --cpus-per-task"),
        ("--gpus=1", "sets --gpus"),
        ("--chdir=/", "sets --chdir"),
        ("--parsable", "sets --parsable"),
        ("--error=/x", "sets --error"),
        ("--nodes=2", "sets --nodes"),
        ("--ntasks=2", "sets --ntasks"),
        (3, "is not one word"),
    ],
)
def test_sbatch_args_the_spawner_sets_or_that_are_not_one_word_are_refused(item, fragment):
    with pytest.raises(ValueError) as e:
        check_sbatch_args([item])
    assert str(e.value).startswith("c.RemoteSingularitySpawner.slurm_sbatch_args: ")
    assert fragment in str(e.value)
    with pytest.raises(ValueError, match="not a list"):
        check_sbatch_args("--account=x")


# --- the form ---------------------------------------------------------------------------------


def options_of(html):
    return [o.split("</option>")[0] for o in html.split("<option")[1:]]


def test_form_shows_partitions_with_their_summary_and_limits():
    down = Partition.from_reply(reply("down", available=False, nodes_idle=0))
    html = render_slurm_form([DEBUG, SMALL, down], {}, DEFAULTS, "/home")
    options = options_of(html)
    assert len(options) == 3
    assert 'value="debug" selected' in options[0] and "disabled" not in options[0]
    assert "debug (default) — 2/2 nodes idle, 3/4 CPUs idle" in options[0]
    assert "at most 2 CPUs, 2000M, 0 GPUs, 1:00:00" in options[0]
    assert options[1].endswith("at most 2 CPUs, 2000M, 2 GPUs"), "no time limit"
    assert "disabled" in options[2] and ", down" in options[2] and "selected" not in options[2]
    # The resources: the defaults, bounded by the selected partition's limits.
    assert 'name="cpus" id="rss-cpus" min="1" max="2" value="1"' in html
    assert 'name="gpus" id="rss-gpus" min="0" max="0" value="0"' in html
    assert 'name="memory" id="rss-memory" value="1G"' in html and "at most 2000M" in html
    assert 'name="time" id="rss-time" value="1:00:00"' in html and "at most 1:00:00" in html
    assert 'name="host"' in html and 'placeholder="any node of the partition"' in html
    assert 'name="binds"' in html and "Always bound: <code>/home</code>" in html


def test_form_lowers_the_defaults_and_lists_only_the_admins_partitions():
    limits = parse_partition_limits({"small": {"cpus": 1, "memory": "1G", "time": 30}})
    html = render_slurm_form([DEBUG, SMALL, GPU], limits, parse_defaults({"cpus": 4, "memory": "4G"}), "")
    options = options_of(html)
    assert len(options) == 1 and 'value="small" selected' in options[0]
    assert "at most 1 CPUs, 1G, 2 GPUs, 0:30:00" in options[0]
    assert 'max="1" value="1"' in html and 'value="1G"' in html and 'value="0:30:00"' in html


def test_form_escapes_hostile_partition_names_from_sinfo_and_disables_them():
    hostile = Partition.from_reply(reply('<script>alert(1)</script>"', nodes=["<b>n</b>"]))
    html = render_slurm_form([hostile, DEBUG], {}, DEFAULTS, "")
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;&#34;" in html
    assert "disabled" in options_of(html)[0], "a name no request may carry cannot be chosen"
    assert 'value="debug" selected' in html


def test_form_when_sinfo_cannot_be_asked_says_so_and_keeps_the_defaults():
    html = render_slurm_form([], {}, DEFAULTS, "", error="sinfo <timed out>")
    assert "sinfo &lt;timed out&gt;" in html and options_of(html) == []
    assert 'value="1"' in html and 'value="1G"' in html and 'value="1:00:00"' in html
    assert "rss-error" not in render_slurm_form([DEBUG], {}, DEFAULTS, "")


def test_form_round_trip():
    form = {
        "partition": ["small"],
        "cpus": ["2"],
        "memory": [" 1G "],
        "gpus": ["1"],
        "time": ["0:30:00"],
        "host": ["rss-node2"],
        "binds": ["/data\n/scratch/x:/x:ro\n"],
    }
    options = slurm_options_from_form(form)
    assert options == {
        "partition": "small",
        "cpus": "2",
        "memory": "1G",
        "gpus": "1",
        "time": "0:30:00",
        "host": "rss-node2",
        "binds": ["/data", "/scratch/x:/x:ro"],
    }
    rest = {"partition": "small", "cpus": 2, "memory": 1024, "gpus": 1, "time": 30, "host": "rss-node2"}
    assert validate(options) == validate(rest | {"binds": "/data;/scratch/x:/x:ro"})
    empty = dict.fromkeys(["partition", "cpus", "memory", "gpus", "time", "host", "binds"], [""])
    assert slurm_options_from_form(empty) == {}
    assert validate(slurm_options_from_form(empty)) == SlurmRequest(
        "debug", Resources(1, 1024, 0, 60), None, ()
    )
