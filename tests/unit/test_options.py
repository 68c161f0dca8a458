"""User options: what the form and the REST API may ask for."""

import pytest

from remotesingularityspawner.request import (
    Bind,
    OptionsError,
    UserOptions,
    check_login_name,
    options_from_form,
    parse_binds,
    validate_user_options,
)

NODES = ["node1", "node2", "10.0.0.9"]


def test_no_host_means_the_default_node():
    assert validate_user_options({}, NODES) == UserOptions("node1", ())
    assert validate_user_options(None, NODES) == UserOptions("node1", ())


def test_host_and_binds_as_list_or_string_give_the_same_options():
    as_list = validate_user_options({"host": "node2", "binds": ["/data", "/scratch/x:/x:ro"]}, NODES)
    as_text = validate_user_options({"host": "node2", "binds": "/data;/scratch/x:/x:ro"}, NODES)
    assert (
        as_list
        == as_text
        == UserOptions("node2", (Bind("/data", "/data", "rw"), Bind("/scratch/x", "/x", "ro")))
    )
    assert as_list.to_dict() == {"host": "node2", "binds": ["/data:/data:rw", "/scratch/x:/x:ro"]}


def test_form_and_rest_give_the_same_user_options():
    form = options_from_form({"host": ["node2"], "binds": ["/data\n/scratch/x:/x:ro\n"]})
    assert form == {"host": "node2", "binds": ["/data", "/scratch/x:/x:ro"]}
    assert validate_user_options(form, NODES) == validate_user_options(
        {"host": "node2", "binds": "/data;/scratch/x:/x:ro"}, NODES
    )
    assert options_from_form({"host": [""], "binds": [""]}) == {}


@pytest.mark.parametrize(
    "host",
    ["node3", "node1; touch /tmp/x", "$(id)", "NODE1", "node1\n", 42, ["node1"]],
)
def test_host_not_listed_is_refused_naming_it(host):
    with pytest.raises(OptionsError) as e:
        validate_user_options({"host": host}, NODES)
    assert "is not one of the configured nodes" in str(e.value)
    assert repr(str(host))[:40] in str(e.value)


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("data", "is not an absolute path"),
        ("/data:rel", "is not an absolute path"),
        ("/data:/x:rx", "option 'rx' is not one of ro, rw"),
        ("/a:/b:ro:extra", "more than three"),
        ("/a,/b", "character that is not allowed"),
        ("/a/$(touch /tmp/pwned)", "character that is not allowed"),
        ("/a/`id`", "character that is not allowed"),
        ("/a;b", "is not an absolute path"),  # the ';' splits: 'b' is relative
        ("/a\n/b", "character that is not allowed"),
        ("/a\0", "character that is not allowed"),
        ("/a/../etc", "contains '.' or '..'"),
        ("/" + "a" * 2000, "longer than"),
        ("/a'b", "character that is not allowed"),
        ('/a"b', "character that is not allowed"),
    ],
)
def test_bad_bind_is_refused_naming_it(spec, fragment):
    with pytest.raises(OptionsError) as e:
        validate_user_options({"binds": [spec] if ";" not in spec else spec}, NODES)
    assert fragment in str(e.value)
    assert "bind" in str(e.value) or "binds" in str(e.value)


def test_legal_odd_paths_pass_literally():
    binds = parse_binds(["/data/my project", "/données/x:/mnt/d:ro", "/a+b@c=d%e~f"])
    assert [b.spec for b in binds] == [
        "/data/my project:/data/my project:rw",
        "/données/x:/mnt/d:ro",
        "/a+b@c=d%e~f:/a+b@c=d%e~f:rw",
    ]


def test_unknown_option_and_wrong_types_refused():
    with pytest.raises(OptionsError, match="unknown option.*'image'"):
        validate_user_options({"host": "node1", "image": "/evil.sif"}, NODES)
    with pytest.raises(OptionsError, match="binds must be a list"):
        validate_user_options({"binds": {"a": 1}}, NODES)
    with pytest.raises(OptionsError, match="is not a string"):
        validate_user_options({"binds": [3]}, NODES)


def test_too_many_binds():
    with pytest.raises(OptionsError, match="at most"):
        parse_binds([f"/d{i}" for i in range(40)])


@pytest.mark.parametrize("name", ["alice", "a.b@c", "user_1", "x-y"])
def test_login_names_accepted(name):
    assert check_login_name(name) == name


@pytest.mark.parametrize("name", ["", "../root", "a b", "-x", ".hidden", "a/b", "a;b", "é", "x" * 65])
def test_login_names_refused(name):
    with pytest.raises(OptionsError, match="not a valid login name"):
        check_login_name(name)
