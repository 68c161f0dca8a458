"""The node list: every format of the original project, and bad records."""

import pytest

from remotesingularityspawner.placement.nodes import Node, parse_nodelist

NAMES = {"node1": "10.0.0.1", "node2": "10.0.0.2", "gpu-a.cluster.example": "10.0.1.1"}


def fake_resolve(name):
    try:
        return NAMES[name]
    except KeyError:
        raise OSError(f"[Errno -2] Name or service not known: {name}") from None


def parse(text):
    return parse_nodelist(text, resolve=fake_resolve)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("h1:10.0.0.5,h2:10.0.0.6", [Node("h1", "10.0.0.5"), Node("h2", "10.0.0.6")]),
        ("node1:,node2:", [Node("node1", "10.0.0.1"), Node("node2", "10.0.0.2")]),
        (":10.0.0.7,:10.0.0.8", [Node("10.0.0.7", "10.0.0.7"), Node("10.0.0.8", "10.0.0.8")]),
        (
            "node1:, :10.0.0.9 ,gpu-a.cluster.example:",
            [
                Node("node1", "10.0.0.1"),
                Node("10.0.0.9", "10.0.0.9"),
                Node("gpu-a.cluster.example", "10.0.1.1"),
            ],
        ),
        # A name with an address is not resolved: the address names the node.
        ("unresolvable:10.0.0.3", [Node("unresolvable", "10.0.0.3")]),
    ],
)
def test_formats_of_the_original(text, expected):
    nodes, warnings = parse(text)
    assert nodes == expected
    assert warnings == []


@pytest.mark.parametrize(
    "record, fragment",
    [
        ("nowhere:", "does not resolve"),
        ("h1:10.0.0.300", "not a valid IP address"),
        ("h1:not-an-ip", "not a valid IP address"),
        ("h;rm -rf:10.0.0.1", "not a valid host name"),
        ("h1", "expected 'name:address'"),
        (":", "neither a name nor an address"),
        ("h1:10.0.0.1:22", "expected 'name:address'"),
        ("-bad:10.0.0.1", "not a valid host name"),
    ],
)
def test_invalid_record_is_dropped_with_a_warning_naming_it(record, fragment):
    nodes, warnings = parse(f"{record},node2:")
    assert nodes == [Node("node2", "10.0.0.2")], "the valid record survives and becomes the default"
    assert len(warnings) == 1
    assert repr(record) in warnings[0] and fragment in warnings[0]


def test_nothing_valid_left():
    nodes, warnings = parse("nowhere:,h:999.1.1.1")
    assert nodes == []
    assert len(warnings) == 2


def test_duplicate_label_keeps_the_first():
    nodes, warnings = parse("h1:10.0.0.5,h1:10.0.0.6")
    assert nodes == [Node("h1", "10.0.0.5")]
    assert "listed twice" in warnings[0]


def test_a_bare_ipv6_address_is_refused_with_a_warning():
    # The format has one ':' between name and address: an IPv6 node needs a name that resolves.
    nodes, warnings = parse_nodelist("v6:fd00::5", resolve=fake_resolve)
    assert nodes == []
    assert warnings == [
        "nodelist record 'v6:fd00::5' ignored: expected 'name:address', 'name:' or ':address'"
    ]


def test_real_resolver_resolves_localhost():
    nodes, warnings = parse_nodelist("localhost:")
    assert warnings == []
    assert nodes[0].label == "localhost" and nodes[0].address in ("127.0.0.1", "::1")
