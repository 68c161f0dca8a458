"""Images the admin offers, end to end: each started in turn, the groups' limits and unknown
names refused before anything runs, and the image's JupyterHub checked against the Hub's.

One Hub (ports at offset 800) offers three images of the test cluster, each a real
single-user environment: ``jupyter`` (the Hub's JupyterHub), ``jupyter-older`` (another
minor version; members of group ``ml`` only) and ``jupyter-major`` (the previous major
version). It runs the stand-in as ``apptainer``, whose runtime parent names its image in
its process title, as the real one does.
"""

from __future__ import annotations

import json

import cluster as cluster_mod
import jupyterhub
import pytest
from conftest import make_hub, nothing_left, servers_of, spawn_failure, user_processes, wait_until
from test_spawn import NODE2

GROUP_MEMBER, OUTSIDER = "rss-alice", "rss-bob"
OFFERED = "jupyter, jupyter-major"  # to a user outside group ml


def images_config(cluster) -> str:
    images = [
        {"name": "jupyter", "display_name": "Jupyter", "description": "The Hub's own JupyterHub",
         "path": str(cluster.images["jupyter"])},
        {"name": "jupyter-older", "display_name": "Jupyter, older",
         "description": f"JupyterHub {cluster.image_versions['jupyter-minor']}: starts with a warning",
         "path": str(cluster.images["jupyter-minor"]), "groups": ["ml"]},
        {"name": "jupyter-major", "display_name": "Jupyter, previous major",
         "description": "cannot work with this Hub", "path": str(cluster.images["jupyter-major"])},
    ]  # fmt: skip
    return (
        f"c.RemoteSingularitySpawner.images = {json.dumps(images)}\n"
        f'c.RemoteSingularitySpawner.singularity_exe_path = "{cluster.apptainer}"\n'
        'c.Spawner.default_url = "/lab"\n'
        # The spawn request answers at once (202), and its progress is read from the start.
        'c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}\n'
    )


@pytest.fixture(scope="module")
def images_hub(cluster, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("images-hub")
    hub = make_hub(cluster, workdir, offset=800, extra_config=images_config(cluster))
    hub.start()
    for user in (GROUP_MEMBER, OUTSIDER, "rss-carol"):
        hub.ensure_user(user)
    assert hub.api("POST", "/groups/ml").status_code in (201, 409)
    r = hub.api("POST", "/groups/ml/users", json={"users": [GROUP_MEMBER, "rss-carol"]})
    assert r.ok, r.text
    yield hub
    hub.stop()


def runtime_and_server(node, user):
    """(the runtime parent's args, the server's args) of *user*'s one server on *node*."""
    processes = user_processes(node, user)
    (runtime,) = [p for p in processes if p["args"].startswith("Apptainer runtime parent")]
    (server,) = servers_of(node, user)
    return runtime["args"], server["args"]


def start_image(hub, user, image):
    r = hub.spawn(user, options={"host": NODE2, "image": image})
    assert r.status_code in (201, 202), r.text
    events = hub.progress_events(user)
    assert events[-1].get("ready"), events[-1]
    return [e["message"] for e in events]


def test_a_user_starts_each_image_in_turn(images_hub, cluster):
    user = GROUP_MEMBER
    for name, key in (("jupyter", "jupyter"), ("jupyter-older", "jupyter-minor")):
        messages = start_image(images_hub, user, name)
        assert f"starting image {name} on {NODE2}" in messages
        runtime, server = runtime_and_server(NODE2, user)
        assert runtime == f"Apptainer runtime parent: {cluster.images[key]}"
        assert f"{cluster_mod.CONFIG.image_venvs[key]}/bin/" in server, "the image's own environment"
        assert images_hub.through_proxy(user).status_code == 200
        assert images_hub.server_model(user)["state"]["image"] == name, "kept in the state"
        warned = [m for m in messages if m.startswith("warning:")]
        if name == "jupyter":
            assert warned == [], messages
        else:
            ours, theirs = jupyterhub.__version__, cluster.image_versions["jupyter-minor"]
            assert warned == [
                f"warning: the image jupyter-minor.sif carries JupyterHub {theirs}, the Hub runs {ours}"
            ]
        images_hub.stop_server(user)
        assert wait_until(lambda: nothing_left(NODE2, user)), user_processes(NODE2, user)


@pytest.mark.parametrize(
    "image, words",
    [
        ("jupyter-older", f"image 'jupyter-older' is not available to you (offered to you: {OFFERED})"),
        ("no-such-image", f"image 'no-such-image' is not one of the images offered to you: {OFFERED}"),
    ],
)
def test_an_image_not_offered_to_the_user_is_a_400_and_nothing_runs(images_hub, image, words):
    r = images_hub.spawn(OUTSIDER, options={"host": NODE2, "image": image})
    assert r.status_code == 400, r.text
    assert r.json()["message"] == f"Cannot start your server: {words}"
    assert images_hub.server_model(OUTSIDER) is None
    assert nothing_left(NODE2, OUTSIDER), user_processes(NODE2, OUTSIDER)


def test_an_image_of_another_major_jupyterhub_is_refused_with_what_to_do(images_hub, cluster):
    user = "rss-carol"
    message = spawn_failure(images_hub, user, {"host": NODE2, "image": "jupyter-major"})
    theirs, ours = cluster.image_versions["jupyter-major"], jupyterhub.__version__
    assert message == (
        f"Spawn failed: Cannot start image jupyter-major on {NODE2}: it carries JupyterHub {theirs}, "
        f"and this Hub runs JupyterHub {ours}, another major version, with which the server could "
        f"not work. Please choose another image; the administrators have to update this one (to "
        f"jupyterhub {ours})."
    ), message
    assert wait_until(lambda: nothing_left(NODE2, user)), user_processes(NODE2, user)
    assert str(cluster.images["jupyter-major"]) in images_hub.log_tail(200), "the admin reads the path"
