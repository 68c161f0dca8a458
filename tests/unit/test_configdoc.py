"""The configuration reference: generated from the traits' help, and kept up to date."""

import importlib.util
import inspect
from pathlib import Path

import pytest
from invoke import Exit, MockContext
from traitlets import Integer, List, Unicode, default
from traitlets.config import Configurable

from remotesingularityspawner import RemoteSingularitySpawner
from remotesingularityspawner.admin import configdoc

REPO = Path(__file__).resolve().parents[2]


class Base(Configurable):
    inherited = Unicode("x", help="Not ours.").tag(config=True)
    keep = List(Unicode(), help="A list the subclass changes.").tag(config=True)


class Small(Base):
    second = Integer(
        3,
        help="""Line one,
        line two.""",
    ).tag(config=True)
    first = Unicode("", help="Comes second: the class body's order counts.").tag(config=True)
    internal = Unicode("not an option")

    @default("keep")
    def _keep_default(self):
        return ["Z"]


def headings(text):
    return [line[3:] for line in text.splitlines() if line.startswith("## ")]


def test_render_lists_own_options_in_class_order_with_type_default_and_help():
    text = configdoc.render(Small)
    assert headings(text) == ["second", "first", "Spawner options with a different default here"]
    assert "`c.Small.second`: Int, default `3`\n\nLine one,\nline two.\n" in text
    assert "| [`first`](#first) | Unicode | `''` (empty) |" in text
    assert "internal" not in text and "inherited" not in text
    assert "- `keep`: `['Z']`" in text


def test_every_option_of_the_spawner_is_in_the_reference():
    text = configdoc.render()
    names = [name for name, _ in configdoc.own_config_traits(RemoteSingularitySpawner)]
    assert set(names) == set(RemoteSingularitySpawner.class_own_traits(config=True))
    assert headings(text)[: len(names)] == names
    for name, trait in configdoc.own_config_traits(RemoteSingularitySpawner):
        assert f"`c.RemoteSingularitySpawner.{name}`" in text
        assert inspect.cleandoc(trait.help) in text, name
    assert "`env_keep`: `['LANG', 'LC_ALL', 'JUPYTERHUB_SINGLEUSER_APP']`" in text


def test_the_checked_in_reference_is_up_to_date():
    assert (REPO / configdoc.DOC_PATH).read_text() == configdoc.render(), "run `invoke docs`"


@pytest.fixture
def tasks(monkeypatch, tmp_path):
    """tasks.py, working on a copy of docs/ in tmp_path."""
    spec = importlib.util.spec_from_file_location("rss_tasks", REPO / "tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "ROOT", tmp_path)
    return module


def test_invoke_docs_check_fails_on_a_stale_reference_and_invoke_docs_fixes_it(tasks, tmp_path):
    path = tmp_path / configdoc.DOC_PATH
    path.parent.mkdir()
    path.write_text(configdoc.render().replace("Seconds", "Minutes"))
    with pytest.raises(Exit, match="out of date.*run `invoke docs`"):
        tasks.docs(MockContext(), check=True)
    tasks.docs(MockContext())
    assert path.read_text() == configdoc.render()
    tasks.docs(MockContext(), check=True)
