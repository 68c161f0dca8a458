"""Site options per partition: account, QOS, reservation and constraint, and the site's sbatch words.

Slurm's grammars as data (node lists, feature expressions, names), the admin's
settings, the two stages of a user's value, the form, and the argv that reaches
slurm_job.sh (tests/bats/slurm_job.bats follows it on to sbatch).
"""

import pytest
from fakes import reply
from jupyterhub.utils import format_exception

from remotesingularityspawner import calls
from remotesingularityspawner.failures import SpawnException
from remotesingularityspawner.placement.slurm_form import render_slurm_form, slurm_options_from_form
from remotesingularityspawner.placement.slurm_grammar import features_error, names_error, nodelist_error
from remotesingularityspawner.placement.slurm_request import (
    Partition,
    Resources,
    check_slurm_format,
    parse_defaults,
    parse_partition_limits,
    validate_slurm_options,
)
from remotesingularityspawner.placement.slurm_site import (
    ASSOCIATIONS,
    FREE,
    SiteChoice,
    SiteOptions,
    check_sbatch_args,
    wants_associations,
)
from remotesingularityspawner.request import OptionsError, show_value


def sinfo(name, **fields):
    """One partition as slurm_job.sh partitions reports it."""
    data = {
        "name": name, "available": True, "default": name == "debug", "nodes": ["rss-node1", "rss-node2"],
        "nodes_idle": 2, "nodes_total": 2, "cpus_idle": 4, "cpus_total": 4, "cpus_per_node": 2,
        "memory_mb_per_node": 2000, "gpus_per_node": 0, "max_time": "1:00:00",
    }  # fmt: skip
    return data | fields


ASSOCS = [
    {"account": "proj1", "partition": ""},
    {"account": "proj2", "partition": ""},
    {"account": "gpu-proj", "partition": "gpu"},
    {"account": "<b>x</b>", "partition": ""},  # not an account name: never offered
]
PARTITIONS = {
    p.name: p
    for p in Partition.all_from_reply(
        {
            "partitions": [sinfo("debug"), sinfo("small"), sinfo("gpu")],
            "accounting": True,
            "associations": ASSOCS,
        }
    )
}
SETTING = {
    "debug": {"cpus": 2, "accounts": ["proj1", "proj2"], "qos": ["normal", "high"], "reservations": True,
              "constraint": True},
    "gpu": {"accounts": "associations", "constraint": ["a100", "[rack1|rack2]&ib"]},
    "small": {},
}  # fmt: skip
LIMITS = parse_partition_limits(SETTING)
DEFAULTS = parse_defaults({})


def validate(raw, limits=LIMITS, parts=PARTITIONS):
    return validate_slurm_options(raw, parts, limits, DEFAULTS)


def refusal(raw, **kwargs) -> str:
    with pytest.raises(OptionsError) as e:
        validate(raw, **kwargs)
    return str(e.value)


# --- Slurm's grammars -----------------------------------------------------------------------

GOOD_FEATURES = [
    "intel", "a100", "gpu_v2.1", "intel&gpu", "intel|amd", "graphics*4", "[rack1|rack2|rack3|rack4]",
    "[rack1*2&rack2*4]", "[(rack1|rack2)*1&(rack3)*2]", "[(knl&snc4&flat)*4&haswell*1]",
    "[rack1|rack2]&ib", "ib&[rack1|rack2]", "(intel|amd)&ib", "(knl&quad)*2", "a" * 64,
]  # fmt: skip


@pytest.mark.parametrize("text", GOOD_FEATURES)
def test_slurms_feature_expressions_are_accepted(text):
    assert features_error(text) == ""


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "expected a feature name or '(' at character 1, found the end"),
        ("!gpu", "has no NOT"),
        ("intel&!gpu", "has no NOT"),
        ("a,b", "join features with & or |"),
        ("a||b", "expected a feature name or '(' at character 3, found '|'"),
        ("a&", "found the end"),
        ("&a", "expected a feature name"),
        ("gpu*", "a count is * and a number"),
        ("gpu*0", "the count at character 4 is not 1 to 999999"),
        ("gpu*1234567", "is not 1 to 999999"),
        ("gpu*2x", "found 'x'"),
        ("[a]", "two or more features"),
        ("[a|b*2]", "(matching OR) takes no counts"),
        ("[a*2&b]", "needs a count on each feature"),
        ("[a|b&c]", "by | only, or by & only"),
        ("[a|b]&[c|d]", "one [...] per job"),
        ("[[a|b]|c]", "expected a feature name or '('"),
        ("([a|b])", "expected a feature name at character 2"),
        ("((a))", "expected a feature name at character 2, found '('"),
        ("(a*2)", "expected ')' at character 3, found '*2'"),
        ("(a|b", "expected ')'"),
        ("a)", "found ')'"),
        ("[a|b]*2", "found '*2'"),
        ("-a", "'-' at character 1"),
        (".a", "'.' at character 1"),
        ("a b", "' ' at character 2"),
        ("a\nb", "'\\n' at character 2"),
        ("a;id", "';' at character 2"),
        ("$(id)", "'$' at character 1"),
        ("`id`", "'`' at character 1"),
        ("a'b", '"\'" at character 2'),
        ("--wrap=x", "'-' at character 1"),
        ("gpü", "'ü' at character 3"),
        ("a" * 65, "longer than 64 characters"),
        ("a&" * 200 + "a", "longer than 256 characters"),
    ],
)
def test_feature_expressions_slurm_would_refuse_or_that_are_hostile_are_refused_saying_why(text, why):
    assert why in features_error(text)


@pytest.mark.parametrize(
    "text",
    ["node1", "node[01-04,07],gpu1", "rack[1-2]-node[01-04]", "n[1,2-3],m[5]", "a-b_c.d", "n[0-65535]"],
)
def test_slurms_node_lists_are_accepted(text):
    assert nodelist_error(text) == ""


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "not a list of node names"),
        ("node[1-3]x", "not a list of node names"),  # Slurm: nothing may follow the last bracket
        ("node[]", "not a list"),
        ("node[1-]", "not a list"),
        ("node[a-b]", "not a list"),
        ("node[1-2", "not a list"),
        ("node1,", "not a list"),
        (",node1", "not a list"),
        ("node1 node2", "not a list"),
        ("-node1", "not a list"),
        ("node;id", "not a list"),
        ("$(id)", "not a list"),
        ("nöde", "not a list"),
        ("node[4-1]", "the range 4-1 in node[4-1] runs backwards"),
        ("n[0-65536]", "stands for more than 65536 nodes"),
        ("a[0-300]b[0-300]", "stands for more than 65536 nodes"),
        ("n," * 600 + "n", "longer than 1024 characters"),
    ],
)
def test_node_lists_slurm_would_refuse_or_that_are_hostile_are_refused_saying_why(text, why):
    assert why in nodelist_error(text)


def test_reservation_names_one_or_several():
    assert names_error("maint") == names_error("maint,rsv_2") == ""
    assert "a name is letters" in names_error("maint,")
    assert "more than 16 names" in names_error(",".join(["r"] * 17))


# --- stage 1: the format alone, before any connection ----------------------------------------

HOSTILE = [
    "proj;id", "$(id)", "`id`", "proj\n", "proj\nid", "proj 1", "proj'", 'proj"', "proj|id", "proj&",
    "--wrap=x", "-A", "-x", ".hidden", "a" * 65, "prøj", "proj\0", "proj\t", "../x",
]  # fmt: skip


@pytest.mark.parametrize("field", ["account", "qos", "reservation"])
@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_name_is_refused_naming_the_field_and_the_value(field, value):
    with pytest.raises(OptionsError) as e:
        check_slurm_format({field: value})
    message = str(e.value)
    assert message.startswith(
        f"{field} {show_value(value)} is not a Slurm {field if field != 'qos' else 'QOS'}"
    )


@pytest.mark.parametrize(
    "value", ["--wrap=x", "-C", "a;id", "$(id)", "a|`id`", "a\nb", "a & b", "!a", "a" * 300, "gpü", "a,b"]
)
def test_a_hostile_constraint_is_refused_naming_the_field_and_the_value(value):
    with pytest.raises(OptionsError) as e:
        check_slurm_format({"constraint": value})
    assert str(e.value).startswith(f"constraint {show_value(value)} is not a Slurm feature expression: ")


@pytest.mark.parametrize("value", [5, True, ["proj1"], {"a": 1}])
def test_a_site_option_that_is_not_a_string_is_refused(value):
    with pytest.raises(OptionsError, match=r"^account .* is not a string$"):
        check_slurm_format({"account": value})


def test_the_format_stage_gives_the_choice_and_empty_values_are_not_given():
    raw = {"account": "proj1", "qos": "high", "reservation": "maint,rsv2", "constraint": "[a|b]&ib"}
    assert check_slurm_format(raw)["site"] == SiteChoice("proj1", "high", "maint,rsv2", "[a|b]&ib")
    assert check_slurm_format({"account": "", "qos": None})["site"] == SiteChoice()


# --- stage 2: what the partition offers -------------------------------------------------------


def test_values_a_partition_offers_are_chosen_and_round_trip():
    request = validate(
        {"partition": "debug", "account": "proj2", "qos": "high", "reservation": "maint", "constraint": "a&b"}
    )
    assert request.site == SiteChoice("proj2", "high", "maint", "a&b")
    assert request.to_dict() | {} == {
        "partition": "debug", "cpus": 1, "memory": "1G", "gpus": 0, "time": "1:00:00", "host": None,
        "binds": [], "account": "proj2", "qos": "high", "reservation": "maint", "constraint": "a&b",
    }  # fmt: skip
    assert validate(request.to_dict()) == request
    assert "account" not in validate({"partition": "debug"}).to_dict(), "not given: Slurm's default"


@pytest.mark.parametrize("field", ["account", "qos", "reservation", "constraint"])
def test_a_field_the_partition_does_not_offer_is_refused_naming_it_and_the_partition(field):
    assert refusal({"partition": "small", field: "x1"}) == (
        f"{field} 'x1' cannot be chosen: partition small offers no choice of {field}"
    )


def test_a_partition_the_admin_lists_by_name_only_offers_nothing():
    with pytest.raises(OptionsError, match=r"^qos 'normal' cannot be chosen: partition debug offers no"):
        validate({"partition": "debug", "qos": "normal"}, limits=parse_partition_limits(["debug"]))
    with pytest.raises(OptionsError, match=r"^account 'proj1' cannot be chosen: partition debug offers no"):
        validate({"account": "proj1"}, limits={})


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            {"partition": "debug", "account": "proj3"},
            "account 'proj3' is not one you may use in partition debug: proj1, proj2",
        ),
        (
            {"partition": "debug", "qos": "Normal"},
            "qos 'Normal' is not one you may use in partition debug: normal, high",
        ),
        (
            {"partition": "gpu", "constraint": "a100&ib"},
            "constraint 'a100&ib' is not one you may use in partition gpu: a100, [rack1|rack2]&ib",
        ),
        (
            {"partition": "gpu", "account": "other"},
            "account 'other' is not one you may use in partition gpu: proj1, proj2, gpu-proj",
        ),
        (
            {"partition": "debug", "account": "gpu-proj"},
            "account 'gpu-proj' is not one you may use in partition debug: proj1, proj2",
        ),
    ],
)
def test_a_value_the_partition_does_not_list_is_refused_with_what_it_lists(raw, message):
    assert refusal(raw) == message


def test_free_fields_take_any_value_of_their_grammar():
    assert validate({"reservation": "rsv_a,rsv_b", "constraint": "[rack1*1&rack2*1]"}).site == SiteChoice(
        reservation="rsv_a,rsv_b", constraint="[rack1*1&rack2*1]"
    )


def test_accounts_from_associations_are_those_of_the_partition():
    assert PARTITIONS["gpu"].accounts == ("proj1", "proj2", "gpu-proj")
    assert PARTITIONS["debug"].accounts == ("proj1", "proj2"), "gpu-proj is gpu's; '<b>x</b>' no name"
    assert validate({"partition": "gpu", "account": "gpu-proj"}).site.account == "gpu-proj"


@pytest.mark.parametrize(
    "extra, note",
    [
        (
            {"accounting": False},
            "Slurm accounting is off on this cluster, so it has no accounts to choose from",
        ),
        (
            {"accounting": True, "associations": None, "associations_error": "sacctmgr failed: no database"},
            "Slurm could not tell your accounts (sacctmgr failed: no database)",
        ),
        ({}, "Slurm could not tell your accounts (they were not asked for)"),
    ],
)
def test_accounts_from_associations_unknown_are_refused_saying_why_and_not_shown(extra, note):
    parts = {p.name: p for p in Partition.all_from_reply({"partitions": [sinfo("gpu")], **extra})}
    assert parts["gpu"].accounts is None
    assert refusal({"partition": "gpu", "account": "proj1"}, parts=parts) == (
        f"account 'proj1' cannot be chosen in partition gpu: {note}"
    )
    assert validate({"partition": "gpu"}, parts=parts).site == SiteChoice(), "Slurm's default account"
    assert 'name="account"' not in render_slurm_form(list(parts.values()), LIMITS, DEFAULTS, "")


@pytest.mark.parametrize(
    "associations", [[["proj1", ""]], [{"account": 1, "partition": ""}], [{"account": "a"}]]
)
def test_a_malformed_association_is_refused(associations):
    with pytest.raises(ValueError, match="an association is not"):
        Partition.all_from_reply(
            {"partitions": [sinfo("gpu")], "accounting": True, "associations": associations}
        )


# --- the admin's settings ---------------------------------------------------------------------


def test_site_options_in_the_partitions_setting():
    assert LIMITS["debug"].cpus == 2
    assert LIMITS["debug"].site == SiteOptions(("proj1", "proj2"), ("normal", "high"), FREE, FREE)
    assert LIMITS["gpu"].site == SiteOptions(account=ASSOCIATIONS, constraint=("a100", "[rack1|rack2]&ib"))
    assert LIMITS["small"].site == SiteOptions()
    assert parse_partition_limits({"p": {"reservations": ["r1", "r1", "r2"]}})["p"].site.reservation == (
        "r1",
        "r2",
    )
    assert wants_associations(SETTING) and not wants_associations({"debug": {"accounts": ["a"]}})
    assert not wants_associations(["debug"]) and not wants_associations({"debug": None})


@pytest.mark.parametrize(
    "entry, fragment",
    [
        ({"accounts": "assoc"}, "accounts 'assoc' is not \"associations\" or a non-empty list"),
        ({"accounts": []}, "accounts '[]' is not \"associations\" or a non-empty list"),
        ({"accounts": ["proj;id"]}, "accounts: 'proj;id' is not a Slurm account name"),
        ({"qos": "high"}, "qos 'high' is not a non-empty list"),
        ({"qos": True}, "qos 'True' is not a non-empty list"),
        ({"qos": [3]}, "qos: '3' is not a Slurm QOS name: not a string"),
        ({"reservations": "yes"}, "reservations 'yes' is not True or a non-empty list"),
        ({"reservations": ["a,b"]}, "reservations: 'a,b' is not a Slurm reservation name"),
        ({"constraint": 1}, "constraint '1' is not True or a non-empty list"),
        ({"constraint": ["a||b"]}, "constraint: 'a||b' is not a Slurm feature expression"),
        ({"account": ["proj1"]}, "unknown key(s) 'account'"),
    ],
)
def test_bad_site_options_name_the_setting_the_partition_and_the_key(entry, fragment):
    with pytest.raises(ValueError) as e:
        parse_partition_limits({"debug": entry})
    assert str(e.value).startswith("c.RemoteSingularitySpawner.slurm_partitions: partition debug: ")
    assert fragment in str(e.value)


GOOD_SBATCH_ARGS = [
    "--exclude=node[01-04]", "--exclude=node[01-04,07],gpu1", "--exclude=/etc/slurm/exclude.txt",
    "--constraint=a|b", "--constraint=[rack1|rack2]&ib", "--prefer=(intel|amd)&ib", "--account=proj1",
    "--qos=interactive", "--reservation=maint,rsv2", "--dependency=afterok:1?afterok:2",
    "--gres=gpu:a100:1", "--exclusive", "--mail-user=a+b@c.d", "--export=NONE",
]  # fmt: skip


def test_sbatch_args_take_node_lists_and_feature_expressions_as_one_word_each():
    assert check_sbatch_args(GOOD_SBATCH_ARGS) == tuple(GOOD_SBATCH_ARGS)
    assert check_sbatch_args(["--account=jupyter"], parse_partition_limits({"debug": {"qos": ["a"]}}))


@pytest.mark.parametrize(
    "item, fragment",
    [
        ("--exclude=node[4-1]", "the value of --exclude is not a Slurm node list or a file name: the range"),
        ("--exclude=node[1-3]x", "the value of --exclude is not a Slurm node list"),
        ("--exc=node[1-", "the value of --exclude is not"),
        ("--constraint=a||b", "the value of --constraint is not a Slurm feature expression: expected"),
        ("--constraint=[a|b]&[c|d]", "one [...] per job"),
        ("--constraint", "the value of --constraint is not a Slurm feature expression: needs =value"),
        ("--account=-x", "the value of --account is not a Slurm account name"),
        ("--constraint=!a", "is not one word"),  # '!' cannot travel through a tcsh login shell
        ("--comment=a b", "is not one word"),
        ("--comment=a\tb", "is not one word"),
        ("--comment=a\nb", "is not one word"),
        ("--comment=$HOME", "is not one word"),
        ("--comment=a;b", "is not one word"),
        ("--comment='a'", "is not one word"),
        ('--comment="a"', "is not one word"),
        ("--comment=`id`", "is not one word"),
        ("--comment=a\\b", "is not one word"),
        ("--comment=é", "is not one word"),
        ("--comment=" + "a" * 1020, "is not one word --name or --name=value of at most 1024 characters"),
        ("--wrap=id", "sets --wrap, which the spawner sets itself"),
    ],
)
def test_sbatch_args_refuse_what_no_sbatch_value_needs_and_bad_node_lists_or_features(item, fragment):
    with pytest.raises(ValueError) as e:
        check_sbatch_args([item])
    assert str(e.value).startswith("c.RemoteSingularitySpawner.slurm_sbatch_args: ")
    assert fragment in str(e.value)


@pytest.mark.parametrize(
    "item, field, where",
    [
        ("--account=jupyter", "account", "debug, gpu"),
        ("--acc=jupyter", "account", "debug, gpu"),  # sbatch takes an abbreviation
        ("--qos=high", "qos", "debug"),
        ("--reservation=maint", "reservation", "debug"),
        ("--constraint=a100", "constraint", "debug, gpu"),
    ],
)
def test_sbatch_args_refuse_an_option_users_choose_in_a_partition(item, field, where):
    with pytest.raises(ValueError) as e:
        check_sbatch_args([item], LIMITS)
    assert str(e.value) == (
        f"c.RemoteSingularitySpawner.slurm_sbatch_args: {show_value(item)} sets --{field}, which "
        f"slurm_partitions lets users choose (partition {where})"
    )
    assert check_sbatch_args([item], parse_partition_limits(["debug"])) == (item,), "fixed for the site"


# --- the form ---------------------------------------------------------------------------------


def site_rows(html):
    return html.split('<div class="row rss-site"')[1:]


def test_the_form_shows_each_partitions_enabled_fields_and_only_the_selected_ones_enabled():
    html = render_slurm_form(list(PARTITIONS.values()), LIMITS, DEFAULTS, "")
    rows = site_rows(html)
    assert len(rows) == 2, "debug and gpu offer site options, small none"
    debug, gpu = rows
    assert debug.startswith(' data-partition="debug">'), "debug is selected: shown"
    assert gpu.startswith(' data-partition="gpu" hidden>')
    for field in ("account", "qos", "reservation", "constraint"):
        assert f'name="{field}"' in debug
    assert " disabled" not in debug.split("</div>\n</div>")[0]
    assert '<option value="">your default account</option>' in debug
    assert '<option value="proj1">proj1</option>' in debug and '<option value="high">high</option>' in debug
    assert 'type="text" name="reservation"' in debug and 'type="text" name="constraint"' in debug
    assert 'placeholder="none; or e.g. a100, intel&amp;ib, [rack1|rack2]"' in debug
    assert '<option value="">none</option>' in gpu, "no constraint"
    assert 'name="qos"' not in gpu and 'name="reservation"' not in gpu
    assert '<option value="gpu-proj">gpu-proj</option>' in gpu and "&lt;b&gt;" not in gpu
    assert '<option value="[rack1|rack2]&amp;ib">[rack1|rack2]&amp;ib</option>' in gpu, "escaped"
    assert gpu.count(" disabled") == 2, "a field of a partition not selected is not sent"
    assert 'id="rss-account-1"' in debug and 'id="rss-account-2"' in gpu


def test_the_form_without_site_options_has_none():
    html = render_slurm_form(
        list(PARTITIONS.values()), parse_partition_limits({"debug": {"cpus": 1}}), DEFAULTS, ""
    )
    assert site_rows(html) == [] and 'name="account"' not in html


def test_the_forms_site_fields_come_back_as_user_options():
    form = {"partition": ["debug"], "account": ["proj1"], "qos": [""], "reservation": [" maint "],
            "constraint": ["[a|b]&ib"]}  # fmt: skip
    options = slurm_options_from_form(form)
    expected = {"partition": "debug", "account": "proj1", "reservation": "maint", "constraint": "[a|b]&ib"}
    assert options == expected, "an empty field is not given"
    assert validate(options).site == SiteChoice("proj1", None, "maint", "[a|b]&ib")


# --- to slurm_job.sh: one argv word each ------------------------------------------------------


def test_submit_call_passes_each_site_option_as_its_own_words():
    site = {"account": "proj1", "qos": "high", "reservation": "maint,rsv2", "constraint": "[a|b]&ib"}
    call = calls.submit_call(
        job_name="jupyter-alice", partition="debug", resources=Resources(1, 512, 0, 10), host=None,
        output_dir=".rss/x", sbatch_args=["--exclude=node[01-04]"], timeout=30, site_options=site,
    )  # fmt: skip
    args = list(call.args)
    tail = args[args.index("--output-dir") + 2 :]
    assert tail == [
        "--account", "proj1", "--qos", "high", "--reservation", "maint,rsv2", "--constraint", "[a|b]&ib",
        "--sbatch-arg", "--exclude=node[01-04]",
    ]  # fmt: skip
    plain = calls.submit_call(
        job_name="j", partition="debug", resources=Resources(1, 512, 0, 10), host=None, output_dir="d",
        sbatch_args=[], timeout=30,
    )  # fmt: skip
    assert "--account" not in plain.args


NODES = "rss-node1:10.0.0.11,rss-node2:10.0.0.12"


class Slurm:
    """slurm_job.sh on the submit host: records its calls; the job runs at once on rss-node2."""

    def __init__(self, extra=None):
        self.calls, self.extra = [], extra or {"accounting": True, "associations": ASSOCS}

    def __call__(self, args, stdin):
        self.calls.append(list(args))
        if args[0] == "partitions":
            return reply(partitions=[sinfo("debug"), sinfo("small"), sinfo("gpu")], **self.extra)
        if args[0] == "submit":
            return reply(job_id="77")
        return reply(job_id="77", state="RUNNING", reason="None", partition="debug", node="rss-node2")

    def submitted(self):
        return [c for c in self.calls if c[0] == "submit"]


@pytest.fixture
def slurm(fake_ssh):
    queue = Slurm()
    fake_ssh.node("10.0.0.11").on("slurm_job.sh", queue)
    fake_ssh.node("10.0.0.12").on("start_singleuser.sh", reply(pid=9, start_time=5, port=50000))
    return queue


@pytest.fixture
def spawner(make_spawner):
    def make(user_options, **traits):
        traits = {"nodelist": NODES, "singularity_container_path": "/img.sif", "placement": "slurm",
                  "slurm_partitions": SETTING, **traits}  # fmt: skip
        s = make_spawner(**traits)
        s.user_options = user_options
        return s

    return make


async def test_a_spawn_passes_the_chosen_site_options_to_slurm_job_sh_as_words(spawner, slurm):
    hostile_but_valid = "[rack1|rack2]&ib"
    s = spawner({"partition": "gpu", "account": "gpu-proj", "constraint": hostile_but_valid})
    assert await s.start() == ("10.0.0.12", 50000)
    assert ["partitions", "--associations"] in slurm.calls
    (submit,) = slurm.submitted()
    assert submit[submit.index("--account") + 1] == "gpu-proj"
    assert submit[submit.index("--constraint") + 1] == hostile_but_valid
    assert "--qos" not in submit and "--reservation" not in submit


@pytest.mark.parametrize(
    "options, start",
    [
        (
            {"partition": "small", "account": "proj1"},
            "account 'proj1' cannot be chosen: partition small offers",
        ),
        ({"partition": "debug", "account": "--wrap=id"}, "account '--wrap=id' is not a Slurm account name"),
        ({"partition": "debug", "constraint": "a;id"}, "constraint 'a;id' is not a Slurm feature expression"),
        ({"partition": "debug", "qos": "root"}, "qos 'root' is not one you may use in partition debug"),
    ],
)
async def test_a_refused_site_option_is_a_400_and_nothing_is_submitted(
    spawner, slurm, fake_ssh, options, start
):
    s = spawner(options)
    with pytest.raises(SpawnException) as e:
        await s.start()
    assert e.value.status_code == 400
    assert format_exception(e.value)[0].startswith(f"Cannot start your server: {start}")
    assert slurm.submitted() == []


async def test_a_site_option_in_sbatch_args_that_users_choose_is_a_config_error(spawner, slurm):
    s = spawner({"partition": "debug"}, slurm_sbatch_args=["--qos=high"])
    with pytest.raises(SpawnException) as e:
        await s.start()
    assert "slurm_sbatch_args: '--qos=high' sets --qos" in format_exception(e.value)[0]
    assert slurm.submitted() == []


async def test_the_form_asks_for_associations_only_when_a_partition_offers_them(spawner, slurm, fake_ssh):
    s = spawner({}, slurm_partitions={"debug": {"qos": ["normal"]}})
    html = await s._options_form_default()(s)
    assert 'name="qos"' in html and 'name="account"' not in html
    assert slurm.calls == [["partitions"]]
