"""The README's complete jupyterhub_config.py: it loads, and every option it sets exists."""

import re
from pathlib import Path

from jupyterhub.app import JupyterHub
from jupyterhub.auth import PAMAuthenticator
from traitlets.config import PyFileConfigLoader

from remotesingularityspawner import RemoteSingularitySpawner
from remotesingularityspawner.placement.nodes import parse_nodelist

README = Path(__file__).resolve().parents[2] / "README.md"


def example_config(tmp_path):
    """The first Python block of the README's "Configuration example", loaded by traitlets."""
    text = README.read_text()
    section = text[text.index("### Configuration example\n") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    path = tmp_path / "jupyterhub_config.py"
    path.write_text(code)
    return PyFileConfigLoader(path.name, str(tmp_path)).load_config()


def test_every_option_the_example_sets_exists(tmp_path):
    config = example_config(tmp_path)
    classes = {cls.__name__: cls for cls in JupyterHub().classes}
    assert {"JupyterHub", "RemoteSingularitySpawner", "Spawner"} <= set(config)
    for section, values in config.items():
        assert section in classes, f"the example configures {section}, which the Hub does not know"
        unknown = set(values) - set(classes[section].class_traits(config=True))
        assert not unknown, f"{section} has no option {', '.join(sorted(unknown))}"


def test_the_example_configures_a_two_node_site_the_spawner_accepts(tmp_path):
    config = example_config(tmp_path)
    hub = JupyterHub(config=config)  # the values have the types the Hub's options want
    assert hub.spawner_class is RemoteSingularitySpawner
    assert hub.authenticator_class is PAMAuthenticator
    assert hub.hub_ip == "10.0.0.1"
    spawner = RemoteSingularitySpawner(config=config)
    nodes, warnings = parse_nodelist(spawner.nodelist, resolve=lambda name: "192.0.2.1")
    assert [n.label for n in nodes] == ["node1", "node2"] and not warnings
    assert spawner.singularity_exe_path == "apptainer"
    assert spawner.singularity_container_path.endswith(".sif")
    assert spawner.default_url == "/lab"  # Spawner options reach this spawner too
