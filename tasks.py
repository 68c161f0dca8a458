"""Development, test and demo tasks for remote-singularity-spawner.

    invoke test            lint, then bats, unit and end-to-end tests (as root)
    invoke test --layer unit|bats|e2e
    invoke lint            ruff, shellcheck, and that docs/configuration.md is up to date
    invoke docs            write docs/configuration.md from the traits' help
    invoke demo            a Hub on http://127.0.0.1:8000 on the local two-node cluster
    invoke bench           this spawner against LocalProcessSpawner (invoke bench --help)
    invoke cluster up|down|status
    invoke check  --hosts a,b | --config jupyterhub_config.py   inspect the compute nodes
    invoke deploy --hosts a,b | --config jupyterhub_config.py [--dry-run]   and install the scripts
                           (the same tasks as `remote-singularity-spawner check|deploy`)

The end-to-end tests and the demo build a local emulated cluster (network
and PID namespaces, one sshd per node, test users): they need root.
"""

from __future__ import annotations

import importlib.util
import os
import pprint
import shutil
import sys
import tempfile
import time
from pathlib import Path

from invoke import Exit, task

ROOT = Path(__file__).resolve().parent
SHELL_FILES = (
    "scripts/*.sh tests/bats/helpers.bash tests/bats/*.bats tests/bin/make-fake-image "
    ".ci/setup .ci/run .ci/demo"
)
LAYERS = ("unit", "bats", "e2e")


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise Exit(f"{what} builds network namespaces, sshd nodes and test users: run it as root.")


def _require(tool: str, hint: str) -> None:
    if shutil.which(tool) is None:
        raise Exit(f"'{tool}' is not installed: {hint}")


def _cluster():
    sys.path.insert(0, str(ROOT / "tests"))
    import cluster  # noqa: PLC0415 - tests/ is not a package

    return cluster


def _checkout_package():
    """The package of this checkout (not an installed, maybe older, copy)."""
    name = "remotesingularityspawner"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, ROOT / "spawner" / "__init__.py", submodule_search_locations=[str(ROOT / "spawner")]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _configdoc():
    _checkout_package()
    from remotesingularityspawner.admin import configdoc  # noqa: PLC0415

    return configdoc


# `invoke check` and `invoke deploy`: the admin command's own tasks
# (`remote-singularity-spawner check|deploy` after pip install).
_checkout_package()
from remotesingularityspawner.admin.command import check as check_nodes  # noqa: E402, F401
from remotesingularityspawner.admin.command import deploy as deploy_nodes  # noqa: E402, F401


@task(help={"check": "only check that the file is up to date (fails if not)"})
def docs(c, check=False):
    """Write the configuration reference (docs/configuration.md) from the traits' help."""
    configdoc = _configdoc()
    path = ROOT / configdoc.DOC_PATH
    text = configdoc.render()
    current = path.read_text() if path.exists() else ""
    if check:
        if current != text:
            raise Exit(f"{configdoc.DOC_PATH} is out of date with the traits' help: run `invoke docs`")
        print(f"{configdoc.DOC_PATH} is up to date")
    elif current != text:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        print(f"wrote {configdoc.DOC_PATH}")


@task
def lint(c):
    """Check the Python code with ruff, the shell scripts with shellcheck, and the docs."""
    _require("shellcheck", "apt-get install shellcheck (or run .ci/setup)")
    with c.cd(str(ROOT)):
        c.run(f"{sys.executable} -m ruff check spawner tests tasks.py")
        c.run(f"shellcheck -x {SHELL_FILES}")
    docs(c, check=True)


@task(help={"layer": "run only one layer: unit, bats or e2e", "pytest_args": "extra pytest arguments"})
def test(c, layer="", pytest_args=""):
    """Install the package as an admin would, then run all test layers."""
    if layer and layer not in LAYERS:
        raise Exit(f"--layer must be one of {', '.join(LAYERS)}")
    with c.cd(str(ROOT)):
        # Test what `pip install` gives a hub admin, scripts and templates included.
        c.run(f"{sys.executable} -m pip install --quiet --no-deps --force-reinstall .", hide="out")
        if not layer:
            lint(c)
        if layer in ("", "bats"):
            _require("bats", "apt-get install bats (or run .ci/setup)")
            c.run("bats tests/bats", pty=False)
        paths = {"": "tests/unit tests/e2e", "unit": "tests/unit", "e2e": "tests/e2e"}.get(layer)
        if paths:
            if "e2e" in paths:
                _require_root("the end-to-end layer")
                _require("configurable-http-proxy", "npm install -g configurable-http-proxy")
            c.run(f"{sys.executable} -m pytest -ra {paths} {pytest_args}", pty=False)


@task(help={"action": "up, down or status"})
def cluster(c, action="status"):
    """Bring the local test cluster and its Slurm up or down, or show their state."""
    _require_root("the test cluster")
    if action not in ("up", "down", "status"):
        raise Exit("--action must be up, down or status")
    nodes = f"{sys.executable} {ROOT / 'tests' / 'cluster.py'} {action}"
    slurm = f"{sys.executable} {ROOT / 'tests' / 'slurm_cluster.py'} {action}"
    if action == "up":
        c.run(nodes, pty=False)
        c.run(slurm, pty=False)
    elif action == "down":  # Slurm first: cluster.py down removes its directory
        c.run(slurm, pty=False)
        c.run(nodes, pty=False)
    else:
        nodes_up = c.run(nodes, pty=False, warn=True).ok
        if not c.run(slurm, pty=False, warn=True).ok or not nodes_up:
            raise Exit(code=1)


def _demo_images(state) -> str:
    """The Hub's config lines offering the stand-in's image of the Hub's JupyterHub and an older one."""
    versions = state.image_versions
    images = [
        {
            "name": "jupyter",
            "display_name": f"Jupyter (JupyterHub {versions['jupyter']})",
            "description": "JupyterLab with the Hub's own JupyterHub version",
            "path": str(state.image),
        },
        {
            "name": "jupyter-older",
            "display_name": f"Jupyter (JupyterHub {versions['jupyter-minor']})",
            "description": "an older JupyterHub: starts with a warning",
            "path": str(state.image_minor),
        },
    ]
    return f"c.RemoteSingularitySpawner.images = {pprint.pformat(images, sort_dicts=False)}\n"


@task(
    help={
        "image": "a real Singularity/Apptainer image to run (with --singularity)",
        "singularity": "a real singularity or apptainer executable on the nodes",
        "port": "the Hub's public port on 127.0.0.1 (default 8000)",
        "keep_cluster": "leave the test cluster up afterwards (for the tests, or another demo)",
        "slurm": "placement slurm: the form offers partitions and resources; servers run in jobs",
    }
)
def demo(c, image="", singularity="", port=8000, keep_cluster=False, slurm=False):
    """Run a Hub on http://127.0.0.1:8000 with this spawner on the local two-node cluster.

    Uses a real singularity/apptainer when one is on PATH and --image is given;
    otherwise the test stand-in, and says so, and offers two images: one with the
    Hub's JupyterHub version and one with another minor version (older when the Hub's
    minor is not 0; its server starts with a warning). Ctrl-C stops everything.
    """
    _require_root("the demo")
    _require("configurable-http-proxy", "npm install -g configurable-http-proxy (or run .ci/setup)")
    cl = _cluster()
    sys.path.insert(0, str(ROOT / "tests"))
    from harness import Hub  # noqa: PLC0415

    real = singularity or shutil.which("apptainer") or shutil.which("singularity")
    print("Bringing up the local cluster (first time: about a minute)...", flush=True)
    state = cl.up()
    extra = 'c.Spawner.default_url = "/lab"\n'
    if slurm:
        import slurm_cluster  # noqa: PLC0415

        print("Starting Slurm on the cluster (slurmctld here, a slurmd on each node)...", flush=True)
        slurm_cluster.up()
        extra += 'c.RemoteSingularitySpawner.placement = "slurm"\nc.Spawner.start_timeout = 300\n'
    if real and image:
        exe, img, note = real, image, f"using {real} with the image {image}"
    else:
        exe, img = str(state.singularity), str(state.image)
        extra += _demo_images(state)
        versions = state.image_versions
        note = (
            "no real singularity/apptainer and image given (--singularity, --image): using the "
            f"test stand-in {exe}, which runs the server from the image's venv on the node\n"
            f"  images: jupyter (JupyterHub {versions['jupyter']}, {state.venv}) and jupyter-older "
            f"(JupyterHub {versions['jupyter-minor']}, {state.image_minor.name}: starts with a warning)"
        )
    workdir = Path(tempfile.mkdtemp(prefix="rss-demo-"))
    hub = Hub(
        workdir=workdir,
        hub_ip=state.hub_ip,
        nodelist=",".join(f"{n.name}:{n.ip}" for n in state.nodes),
        singularity=exe,
        image=img,
        public_port=port,
        hub_port=8081,
        proxy_api_port=8001,
        log_level="INFO",
        extra_config=extra,
    )
    try:
        hub.start()
        hub.ensure_user("rss-demo")
        print(
            f"\nJupyterHub is up: {hub.url}\n"
            f"  login: rss-demo   password: {hub.password}\n"
            f"  nodes: {', '.join(n.name for n in state.nodes)}"
            f"{' (placement slurm: partitions debug and small)' if slurm else ''}\n"
            f"  {note}\n"
            f"  Hub log: {hub.log_path}\n"
            "Press Ctrl-C to stop the Hub, the servers and the cluster.\n",
            flush=True,
        )
        while hub.process.poll() is None:
            time.sleep(1)
        print(f"JupyterHub exited:\n{hub.log_tail()}")
    except KeyboardInterrupt:
        print("\nStopping...", flush=True)
    finally:
        hub.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if keep_cluster:
            print("Demo stopped; the cluster is still up (invoke cluster down removes it).")
        else:
            if slurm:
                slurm_cluster.down()
            cl.down(keep_venv=True)
            print("Demo stopped; the cluster is down.")


@task(
    help={
        "n": "running servers for the poll round, the restart and the memory figure (default 48)",
        "spawns": "spawns one at a time for the latency figures (default 10)",
        "storm": "concurrent spawns in the storm (default 24)",
        "json": "where to write the results (default bench-results/bench.json)",
        "quick": "a short smoke run (6 servers, 3 spawns, a storm of 4; with --scale: N = 48 only)",
        "scale": "the scale run instead: 48, 120 and 240 users with a server each (default JSON "
        "bench-results/scale.json)",
        "slurm": "with --scale: placement slurm beside placement ssh at 48 and 120 servers, with "
        "slurmctld's RPCs per poll round (default JSON bench-results/scale-slurm.json)",
    }
)
def bench(c, n=48, spawns=10, storm=24, json="", quick=False, scale=False, slurm=False):
    """Measure this spawner against LocalProcessSpawner on the local test cluster (as root).

    Prints one table (spawn latency, poll round, Hub restart, a spawn storm, Hub
    memory) and writes it with every raw figure as JSON. Holds the test cluster
    for the whole run (about 11 minutes; --quick about 2). With --scale: the
    costs per server as servers grow, N = 48, 120, 240 (--quick: 48 only).
    """
    _require_root("the benchmark")
    _require("configurable-http-proxy", "npm install -g configurable-http-proxy (or run .ci/setup)")
    _cluster()
    with c.cd(str(ROOT)):
        # Measure what `pip install` gives a hub admin, as the tests do.
        c.run(f"{sys.executable} -m pip install --quiet --no-deps --force-reinstall .", hide="out")
    if scale and slurm:
        import bench_slurm_scale  # noqa: PLC0415 - tests/ is not a package

        command = "invoke bench --scale --slurm" + (" --quick" if quick else "")
        json_path = ROOT / (json or "bench-results/scale-slurm.json")
        bench_slurm_scale.run(bench_slurm_scale.settings(quick), json_path, command)
        return
    if scale:
        import bench_scale  # noqa: PLC0415 - tests/ is not a package

        settings = bench_scale.Settings.quick() if quick else bench_scale.Settings()
        command = "invoke bench --scale" + (" --quick" if quick else "")
        bench_scale.run(settings, ROOT / (json or "bench-results/scale.json"), command)
        return
    import bench as bench_mod  # noqa: PLC0415 - tests/ is not a package

    settings = (
        bench_mod.Settings.quick() if quick else bench_mod.Settings(servers=n, spawns=spawns, storm=storm)
    )
    command = "invoke bench" + (" --quick" if quick else f" -n {n} --spawns {spawns} --storm {storm}")
    bench_mod.run(settings, ROOT / (json or "bench-results/bench.json"), command)
