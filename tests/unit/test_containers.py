"""containers/jupyterhub.def: a well-formed definition file whose jupyterhub pin is the Hub's."""

import configparser
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEF_FILE = REPO / "containers" / "jupyterhub.def"
SECTION = re.compile(r"^%([a-z]+)\s*$")


def parse_definition(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """(header keys, section name -> body) of a Singularity/Apptainer definition file."""
    header, sections, current = {}, {}, None
    for line in text.splitlines():
        match = SECTION.match(line)
        if match:
            current = match.group(1)
            assert current not in sections, f"%{current} appears twice"
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
        elif line.strip() and not line.lstrip().startswith("#"):
            key, colon, value = line.partition(":")
            assert colon, f"header line without 'Key: value': {line!r}"
            header[key.strip()] = value.strip()
    return header, sections


@pytest.fixture(scope="module")
def definition():
    return parse_definition(DEF_FILE.read_text())


def test_header_bootstraps_from_a_current_python_image(definition):
    header, _ = definition
    assert header["Bootstrap"] == "docker"
    match = re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", header["From"])
    assert match and int(match.group(1)) >= 12, header["From"]


def test_sections_are_those_every_supported_runtime_knows(definition):
    _, sections = definition
    assert {"post", "environment", "runscript", "startscript", "test", "labels", "help"} <= set(sections)
    assert "arguments" not in sections, "%arguments needs Apptainer >= 1.2"
    assert all(body.strip() for body in sections.values()), "no empty section"


def test_the_image_has_lab_4_notebook_7_and_python_and_r_kernels(definition):
    post = definition[1]["post"]
    for requirement in (
        '"jupyterlab>=4',
        '"notebook>=7',
        '"ipykernel"',
        "r-cran-irkernel",
        "IRkernel::installspec",
    ):
        assert requirement in post, requirement
    assert "configurable-http-proxy" in post, "the image can run the Hub"


def pins(text: str) -> list[str]:
    return re.findall(r"jupyterhub==([0-9][0-9A-Za-z.]*)", text)


def test_jupyterhub_is_pinned_once_to_the_version_the_tests_run_against(definition):
    _, sections = definition
    assert len(pins(sections["post"])) == 1, "exactly one jupyterhub==X.Y.Z in %post"
    (image_pin,) = pins(sections["post"])
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    assert pins(setup["options.extras_require"]["test"]) == [image_pin], (
        "setup.cfg's test extra and containers/jupyterhub.def must pin the same jupyterhub"
    )
    assert f"JupyterHub.version {image_pin}" in sections["labels"]


def test_the_hub_runs_from_the_image_with_a_configuration_from_outside(definition):
    _, sections = definition
    for name in ("runscript", "startscript"):
        assert 'jupyterhub -f "${JUPYTERHUB_CONFIG}"' in sections[name], name
    assert "JUPYTERHUB_CONFIG" in sections["environment"]


def test_the_files_the_build_copies_exist_in_the_repository(definition):
    _, sections = definition
    sources = [line.split()[0] for line in sections["files"].splitlines() if line.strip()]
    assert "spawner" in sources and "scripts" in sources
    for source in sources:
        assert (REPO / source).exists(), f"%files copies {source}, which the repository lacks"


def test_the_readme_shows_run_and_instance_start_with_the_homes_bound_and_the_logs():
    readme = (REPO / "containers" / "README.md").read_text()
    for command in ("singularity run", "singularity instance start", "build jupyterhub.sif"):
        assert command in readme, command
    assert readme.count("--bind /home") >= 2
    assert "instance list --logs" in readme and "hub.err" in readme
