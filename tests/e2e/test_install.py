"""The README's install, done as an admin does it: a wheel, a fresh venv, an ordinary account.

The wheel is built from a copy of the clone (so no `build/` left by an earlier
`pip install .` gets into it) by the venv's own pip, as the README says. An
ordinary account (rss-install, made here and removed after) creates the venv
with /usr/bin/python3 and installs the wheel into it, with its dependencies
from pip's configured package index. As that account, the admin command runs,
and a Hub starts from the first Python block of the README's "Installing on a
hub", with only what a test needs added (ports, files, the test cluster's
nodes and image, DummyAuthenticator). The Hub answers its API and shows the
spawn form.

Shares nothing mutable with other tests: its own account, directory and ports
(offset 850); of the test cluster it uses the addresses and the image. Marked
`install` (`-m "not install"` skips it where there is no package index).
"""

from __future__ import annotations

import configparser
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import textwrap
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from conftest import login, nodelist
from harness import Hub
from jupyterhub.app import JupyterHub
from packaging.requirements import Requirement
from traitlets.config import PyFileConfigLoader

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SECTION = "## Installing on a hub\n"
ACCOUNT = "rss-install"
HUB_USER = "rss-alice"  # a login on the test cluster's nodes
OFFSET = 850  # ports as make_hub's: 18850, 18931, 18851: clear of the other tests' Hubs
PYTHON = "/usr/bin/python3"
# Not part of what an admin builds from: git's data, earlier builds, caches.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".benchmarks", "bench-results"
)
PASSED_ON = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")

pytestmark = pytest.mark.install

# What the test adds to the README's configuration.
ADDED_CONFIG = """
# Added by tests/e2e/test_install.py: ports and files of its own, the test cluster,
# a CA of its own, and users with a password.
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {public_port}
c.JupyterHub.hub_ip = "{hub_ip}"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.JupyterHub.db_url = "sqlite:///{workdir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{workdir}/cookie_secret"
c.RemoteSingularitySpawner.nodelist = "{nodelist}"
c.RemoteSingularitySpawner.singularity_exe_path = "{singularity}"
c.RemoteSingularitySpawner.singularity_container_path = "{image}"
c.RemoteSingularitySpawner.ssh_ca_key_file = "{ca}"
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = "{password}"
c.Authenticator.allowed_users = {{"{user}"}}
"""


def readme_section() -> str:
    text = README.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end != -1 else len(text)]


def readme_config() -> str:
    """The first Python block of "Installing on a hub" (indented under a list item)."""
    match = re.search(r"^([ \t]*)```python\n(.*?)^\1```", readme_section(), re.S | re.M)
    assert match, "no ```python block in the README's install section"
    return textwrap.dedent(match.group(2))


def readme_jupyterhub_pin() -> str:
    """The jupyterhub version the README's install step pins the Hub to."""
    pins = set(re.findall(r'pip install dist/\S+\.whl "jupyterhub==([0-9][0-9A-Za-z.]*)"', readme_section()))
    assert len(pins) == 1, f"the README's install step should pin jupyterhub once: {pins}"
    return pins.pop()


def setup_cfg() -> configparser.ConfigParser:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    return setup


def image_pin() -> str:
    """The jupyterhub of the test extra, which tests/unit/test_containers.py ties to the image's."""
    (pin,) = re.findall(r"jupyterhub==([0-9][0-9A-Za-z.]*)", setup_cfg()["options.extras_require"]["test"])
    return pin


def package_version() -> str:
    return re.search(r'__version__ = "([^"]+)"', (ROOT / "spawner" / "__init__.py").read_text()).group(1)


@dataclass
class Install:
    """The account's venv, the wheel in it, and how long each step took."""

    account: pwd.struct_passwd
    root: Path
    wheel: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    def run(self, *argv, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run *argv* as the account, in its directory, with the venv first on PATH."""
        env = {
            "PATH": f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.root / "home"),
            "USER": self.account.pw_name,
            "LANG": "C.UTF-8",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_INPUT": "1",
        }
        # The machine's pip settings (index, certificates) and proxies, not root's home.
        env.update({k: v for k, v in os.environ.items() if k.startswith("PIP_") or k in PASSED_ON})
        argv = ["setpriv", f"--reuid={self.account.pw_uid}", f"--regid={self.account.pw_gid}",
                "--init-groups", *map(str, argv)]  # fmt: skip
        done = subprocess.run(argv, cwd=self.root, env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{argv[4:]} exited {done.returncode}:\n{done.stderr[-3000:]}"
        return done

    def timed(self, step: str, *argv, timeout: float = 600) -> subprocess.CompletedProcess:
        started = time.monotonic()
        done = self.run(*argv, timeout=timeout)
        self.seconds[step] = round(time.monotonic() - started, 1)
        return done


@pytest.fixture(scope="module")
def account():
    """An ordinary system account without a home, removed after."""
    if subprocess.run(["id", ACCOUNT], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
                        "/nonexistent", "--shell", "/usr/sbin/nologin", ACCOUNT], check=True)  # fmt: skip
    yield pwd.getpwnam(ACCOUNT)
    subprocess.run(["userdel", ACCOUNT], check=False)


@pytest.fixture(scope="module")
def installed(account):
    """As the account: a venv of /usr/bin/python3, the wheel built by its pip, installed into it."""
    root = Path(tempfile.mkdtemp(prefix="rss-install-", dir="/var/tmp"))  # pytest's tmp is root's alone
    try:
        shutil.copytree(ROOT, root / "src", ignore=NOT_SOURCE)
        (root / "home").mkdir()
        subprocess.run(["chown", "-R", f"{account.pw_uid}:{account.pw_gid}", str(root)], check=True)
        install = Install(account, root)
        pip = install.venv / "bin" / "pip"
        # The README's steps: python3 -m venv; pip wheel --no-deps -w dist .; pip install the wheel.
        install.timed("venv", PYTHON, "-m", "venv", install.venv)
        install.timed("wheel", pip, "wheel", "--quiet", "--no-deps", "-w", root / "dist", root / "src")
        install.wheel = root / "dist" / f"remote_singularity_spawner-{package_version()}-py3-none-any.whl"
        install.timed("pip install", pip, "install", "--quiet", "--prefer-binary", "--no-cache-dir",
                      install.wheel, f"jupyterhub=={readme_jupyterhub_pin()}")  # fmt: skip
        print(f"install steps as {ACCOUNT} (seconds): {install.seconds}")
        yield install
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_readme_pins_the_hub_to_the_image_and_setup_cfg_accepts_that_major_only():
    pin = readme_jupyterhub_pin()
    assert pin == image_pin(), "the README's install step and the image pin different JupyterHubs"
    lines = setup_cfg()["options"]["install_requires"].splitlines()
    (wanted,) = [r for r in map(Requirement, filter(None, lines)) if r.name == "jupyterhub"]
    major = int(pin.split(".")[0])
    assert wanted.specifier.contains(pin), f"install_requires {wanted} refuses the image's {pin}"
    for other in (f"{major - 1}.99.0", f"{major + 1}.0.0"):
        assert not wanted.specifier.contains(other), f"{wanted} accepts {other}: the image check refuses it"


def test_every_option_the_readmes_install_configuration_sets_exists(tmp_path):
    (tmp_path / "jupyterhub_config.py").write_text(readme_config())
    config = PyFileConfigLoader("jupyterhub_config.py", str(tmp_path)).load_config()
    classes = {cls.__name__: cls for cls in JupyterHub().classes}
    for section, values in config.items():
        assert section in classes, f"the README's install configuration sets {section}, which the Hub lacks"
        unknown = set(values) - set(classes[section].class_traits(config=True))
        assert not unknown, f"{section} has no option {', '.join(sorted(unknown))}"


def test_the_wheel_holds_every_module_script_and_template_and_both_entry_points(installed):
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        info = f"remote_singularity_spawner-{package_version()}.dist-info"
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    sources = {
        "remotesingularityspawner/" + path.relative_to(ROOT / "spawner").as_posix()
        for path in (ROOT / "spawner").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    sources |= {f"remotesingularityspawner/scripts/{path.name}" for path in (ROOT / "scripts").iterdir()}
    packaged = {name for name in names if name.startswith("remotesingularityspawner/")}
    assert sources - packaged == set(), "files of the clone missing from the wheel (setup.cfg)"
    assert packaged - sources == set(), "files in the wheel that the clone does not have"
    assert {"remotesingularityspawner/templates/options_form.html",
            "remotesingularityspawner/scripts/start_singleuser.sh"} <= packaged  # fmt: skip
    assert "remote-singularity-spawner = remotesingularityspawner.admin.command:main" in entry_points
    assert "remote-singularity-spawner = remotesingularityspawner:RemoteSingularitySpawner" in entry_points


def test_the_account_runs_the_admin_command_from_its_venv(installed):
    command = installed.venv / "bin" / "remote-singularity-spawner"
    assert command.stat().st_uid == installed.account.pw_uid, "the venv is the account's"
    out = installed.run(command, "--help").stdout
    assert re.search(r"^\s+check\s", out, re.M) and re.search(r"^\s+deploy\s", out, re.M), out
    version = installed.run(command, "--version").stdout.split()
    assert version == ["remote-singularity-spawner", package_version()]


@dataclass
class ReadmeHub(Hub):
    """A Hub whose configuration is the README's, plus ADDED_CONFIG."""

    user: str = HUB_USER
    ca: str = ""

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        path = self.workdir / "jupyterhub_config.py"
        added = ADDED_CONFIG.format(
            public_port=self.public_port, hub_ip=self.hub_ip, hub_port=self.hub_port,
            proxy_api_port=self.proxy_api_port, workdir=self.workdir, nodelist=self.nodelist,
            singularity=self.singularity, image=self.image, ca=self.ca, password=self.password,
            user=self.user,
        )  # fmt: skip
        path.write_text(readme_config() + added)
        return path


def test_a_hub_from_the_readmes_configuration_answers_as_the_account(cluster, installed):
    hub = ReadmeHub(
        workdir=installed.root / "hub", hub_ip=cluster.hub_ip, nodelist=nodelist(cluster),
        singularity=str(cluster.singularity), image=str(cluster.image), public_port=18000 + OFFSET,
        hub_port=18081 + OFFSET, proxy_api_port=18001 + OFFSET, log_level="INFO",
        python=str(installed.venv / "bin" / "python"), run_as=ACCOUNT,
    )  # fmt: skip
    hub.workdir.mkdir()
    ca = hub.workdir / "ssh_ca"  # the README's /etc/jupyterhub/ssh_ca; start() makes it the account's
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rss-install-ca", "-f", str(ca)],
                   check=True)  # fmt: skip
    hub.ca = str(ca)
    try:
        started = time.monotonic()
        hub.start()
        seconds = round(time.monotonic() - started, 1)
        status = Path(f"/proc/{hub.process.pid}/status").read_text()
        assert int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1)) == installed.account.pw_uid
        r = requests.get(f"{hub.url}/hub/api/", timeout=10)
        assert r.ok and r.json()["version"] == readme_jupyterhub_pin(), r.text

        # The spawn form, from the templates in the wheel, lists the nodes and the README's binds.
        page = login(hub, HUB_USER).get(f"{hub.url}/hub/spawn", timeout=60)
        assert page.status_code == 200, hub.log_tail()
        for node in cluster.nodes:
            assert f'<option value="{node.name}"' in page.text, page.text[-3000:]
        binds = "Always bound: <code>/scratch;/software:/opt/software:ro</code>"  # the README's
        assert binds in page.text, page.text[-3000:]
        log = hub.log_path.read_text(errors="replace")
        assert "not recognized" not in log, "the README's configuration sets an option that does not exist"
        print(f"Hub from the README's configuration answered after {seconds}s")
    finally:
        hub.stop()
