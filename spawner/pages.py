"""The forms' templates (templates/), rendered with Jinja2, escaped."""

from __future__ import annotations

import jinja2


def page_templates() -> jinja2.Environment:
    """A Jinja2 environment of the package's templates (the Hub keeps one: hub_resources.py)."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("remotesingularityspawner", "templates"), autoescape=True
    )
