"""Images the admin offers: the list checked, the user's choice refused before any connection
when it is unknown or not for them, the chosen image's path, binds and options on the
node's command line, the version check's answers turned into what the user reads."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import jupyterhub
import pytest
from fakes import reply
from test_ui import collect

from remotesingularityspawner import remote
from remotesingularityspawner.images import ImageConfigError, choose, parse_images, shorthand_name
from remotesingularityspawner.request import OptionsError
from remotesingularityspawner.state import dump, restore

BASE = {
    "name": "base",
    "display_name": "Base Python",
    "description": "numpy & <pandas>",
    "path": "/img/base.sif",
}
GPU = {
    "name": "dl",
    "display_name": "Deep learning",
    "path": "/img/dl.sif",
    "binds": "/datasets:/data:ro",
    "args": ["--writable-tmpfs"],
    "gpu": True,
    "groups": ["ml"],
}
CLUSTER = {"nodelist": "n1:10.0.0.1,n2:10.0.0.2", "images": [BASE, GPU]}


def with_groups(spawner, *names):
    spawner.user.groups = [SimpleNamespace(name=n) for n in names]
    return spawner


def start_args(node):
    (run,) = [r for r in node.runs if r.script == "start_singleuser.sh"]
    return run.args


# --- the list --------------------------------------------------------------------------


def test_the_list_is_parsed_with_defaults():
    base, dl = parse_images([BASE, GPU])
    assert (base.name, base.title, base.groups, base.gpu, base.binds, base.args) == (
        "base", "Base Python", None, False, (), (),
    )  # fmt: skip
    assert dl.groups == frozenset({"ml"}) and dl.gpu and dl.args == ("--writable-tmpfs",)
    assert dl.binds[0].spec == "/datasets:/data:ro"


@pytest.mark.parametrize(
    "entries, words",
    [
        ([{"path": "/a.sif"}], "images[0]: name missing"),
        ([{"name": "a"}], "images[0]: path missing"),
        ([{"name": "a b", "path": "/a.sif"}], "images[0]: name 'a b'"),
        ([{"name": "a", "path": "a.sif"}], "images[0] (a): path 'a.sif' is not an absolute path"),
        ([{"name": "a", "path": "/a.sif", "tags": 1}], "unknown key(s) 'tags'"),
        ([{"name": "a", "path": "/a.sif", "groups": "ml"}], "groups must be a list"),
        ([{"name": "a", "path": "/a.sif", "args": "--nv"}], "args must be a list"),
        ([{"name": "a", "path": "/a.sif", "binds": "data"}], "images[0] (a): binds: bind 'data'"),
        ([BASE, {**GPU, "name": "base"}], "the name(s) base are used more than once"),
        ("base", "images must be a list of dicts"),
        ([], "neither images nor singularity_container_path is set"),
    ],
)
def test_a_bad_list_names_the_entry_and_the_key(entries, words):
    with pytest.raises(ImageConfigError) as e:
        parse_images(entries)
    assert words in str(e.value)


@pytest.mark.parametrize(
    "path, name",
    [
        ("/opt/images/jupyter.sif", "jupyter"),
        ("/opt/sandbox/", "sandbox"),
        ("/x/.hidden img.sif", "hidden_img"),
    ],
)
def test_the_one_image_of_singularity_container_path_is_named_after_its_file(path, name):
    assert shorthand_name(path) == name
    assert [i.name for i in parse_images([], path)] == [name]


# --- the choice ------------------------------------------------------------------------


def test_no_choice_is_the_first_image_the_user_may_use():
    images = parse_images([{**GPU, "name": "first"}, BASE])
    assert choose(images, None, []).name == "base"
    assert choose(images, "", ["ml"]).name == "first"


@pytest.mark.parametrize(
    "requested, groups, words",
    [
        ("dl", [], "image 'dl' is not available to you (offered to you: base)"),
        ("nope", ["ml"], "image 'nope' is not one of the images offered to you: base, dl"),
        (["dl"], ["ml"], "image must be the name of an image"),
    ],
)
def test_a_choice_not_offered_to_the_user_is_refused_naming_the_field(requested, groups, words):
    with pytest.raises(OptionsError) as e:
        choose(parse_images([BASE, GPU]), requested, groups)
    assert str(e.value).startswith(words)


async def test_a_refused_image_is_a_400_before_any_connection(make_spawner, fake_ssh):
    s = with_groups(make_spawner(**CLUSTER))
    for image in ("dl", "nope"):
        with pytest.raises(Exception) as e:
            await s.validated_request({"host": "n1", "image": image}, again=True)
        assert e.value.status_code == 400 and f"image '{image}'" in e.value.jupyterhub_message
    assert fake_ssh.connections == []


async def test_a_callable_builds_the_list_per_user(make_spawner):
    async def per_user(spawner):
        return [{**BASE, "name": f"course-{spawner.user.name}"}]

    s = with_groups(make_spawner(nodelist="n1:10.0.0.1", images=per_user))
    await s.validated_request({"image": "course-alice"})
    assert s._request[2].name == "course-alice"


# --- the form --------------------------------------------------------------------------


def nodes_answer(fake_ssh):
    for address in ("10.0.0.1", "10.0.0.2"):
        fake_ssh.node(address).on("node_status.sh", reply())


async def test_the_form_offers_the_users_images_with_their_descriptions(make_spawner, fake_ssh):
    nodes_answer(fake_ssh)
    fake = with_groups(make_spawner(**CLUSTER), "ml")
    form = await fake.options_form(fake)
    assert 'name="image"' in form and 'value="base" checked' in form and 'value="dl"' in form
    assert "Deep learning" in form and "numpy &amp; &lt;pandas&gt;" in form
    assert fake.options_from_form({"host": ["n1"], "image": ["dl"]}, fake) == {"image": "dl", "host": "n1"}


async def test_with_one_image_for_the_user_the_form_offers_no_choice(make_spawner, fake_ssh):
    nodes_answer(fake_ssh)
    s = with_groups(make_spawner(**CLUSTER))
    assert 'name="image"' not in await s.options_form(s)


# --- the start -------------------------------------------------------------------------


async def test_the_chosen_image_its_binds_options_and_gpu_reach_the_node(make_spawner, fake_ssh):
    s = with_groups(make_spawner(**CLUSTER, default_bind_path="/scratch"), "ml")
    node = fake_ssh.node("10.0.0.1")
    node.on("start_singleuser.sh", reply(pid=9, start_time=5, port=50000, jupyterhub_match="same"))
    s.user_options = {"host": "n1", "image": "dl", "binds": ["/home/alice/x"]}
    await s.start()
    args = start_args(node)
    assert args[args.index("--image") + 1] == "/img/dl.sif"
    binds = [args[i + 1] for i, a in enumerate(args) if a == "--bind"]
    assert binds == ["/scratch:/scratch:rw", "/datasets:/data:ro", "/home/alice/x:/home/alice/x:rw"]
    extra = [args[i + 1] for i, a in enumerate(args) if a == "--singularity-arg"]
    assert extra == ["--writable-tmpfs", "--nv"]  # gpu: --nv on a node not in gpu_nodes too
    assert args[args.index("--hub-jupyterhub") + 1] == jupyterhub.__version__
    assert s.process.image == "dl"
    assert restore(s.get_state()).process.image == "dl"


async def test_the_progress_names_the_image_and_the_node(make_spawner, fake_ssh):
    s = with_groups(make_spawner(**CLUSTER))
    fake_ssh.node("10.0.0.2").on("start_singleuser.sh", reply(pid=9, start_time=5, port=50000))
    s.user_options = {"host": "n2"}
    listener = asyncio.ensure_future(collect(s, 2))
    await s.start()
    assert [e["message"] for e in await listener] == [
        "starting image base on n2",
        "connecting to n2 as alice",
    ]


async def test_the_check_can_be_turned_off(make_spawner, fake_ssh):
    s = with_groups(make_spawner(**CLUSTER, check_image_version=False))
    node = fake_ssh.node("10.0.0.1")
    node.on("start_singleuser.sh", reply(pid=9, start_time=5, port=50000))
    s.user_options = {"host": "n1"}
    await s.start()
    assert "--hub-jupyterhub" not in start_args(node)


async def test_another_major_version_fails_with_a_sentence_for_the_user(make_spawner, fake_ssh, caplog):
    s = with_groups(make_spawner(**CLUSTER))
    node = fake_ssh.node("10.0.0.1")
    node.on(
        "start_singleuser.sh",
        reply(
            remote.ExitCode.IMAGE_MISMATCH, image_jupyterhub="4.1.6", hub_jupyterhub=jupyterhub.__version__
        ),
    )
    s.user_options = {"host": "n1"}
    with pytest.raises(Exception) as e:
        await s.start()
    message = e.value.jupyterhub_message
    assert message.startswith("Cannot start image base on n1: it carries JupyterHub 4.1.6")
    assert f"this Hub runs JupyterHub {jupyterhub.__version__}" in message
    assert "choose another image" in message and "/img/base.sif" not in message
    assert "/img/base.sif" in caplog.text and "check_image_version" in caplog.text
    assert s.process is None


async def test_another_minor_version_starts_and_warns_in_the_log(make_spawner, fake_ssh, caplog):
    s = with_groups(make_spawner(**CLUSTER))
    fake_ssh.node("10.0.0.1").on(
        "start_singleuser.sh",
        reply(pid=9, start_time=5, port=50000, image_jupyterhub="0.0.1", jupyterhub_match="minor"),
    )
    s.user_options = {"host": "n1"}
    assert await s.start() == ("10.0.0.1", 50000)
    assert (
        "the image base (/img/base.sif) on n1: carries JupyterHub 0.0.1; the Hub runs JupyterHub"
        in caplog.text
    )


def test_a_state_saved_before_images_is_read_without_an_image():
    state = {"version": 2, "pid": 9, "start_time": 5, "port": 50000, "node": "n1", "address": "10.0.0.1",
             "login": "alice", "log_path": "", "scripts_version": "v", "certs_dir": "", "job_id": "",
             "partition": ""}  # fmt: skip
    kept = restore(state)
    assert kept.process.image == ""
    assert dump(kept)["image"] == ""
