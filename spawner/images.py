"""The images a user may choose: ``c.RemoteSingularitySpawner.images``, or the one
``singularity_container_path``.

An image is offered by name; its ``groups`` (JupyterHub groups) limit who may
use it. The choice arrives as ``user_options["image"]`` from the form or a
REST request and is checked here, before any connection: an unknown name or
one the user's groups may not use is a 400 naming the field. The admin's list
is checked too, at every use (it may be a callable that builds it per user):
a bad entry is a configuration error that names the entry and the key.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .request import Bind, OptionsError, parse_binds, show_value

# An image's name: what user_options["image"] carries, a form value and a log word.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
KEYS = ("name", "display_name", "description", "path", "binds", "args", "gpu", "groups")
REQUIRED = ("name", "path")


class ImageConfigError(ValueError):
    """The admin's image list is not usable; the message names the entry and the key."""


@dataclass(frozen=True)
class Image:
    """One image offered to users."""

    name: str
    path: str  # on the nodes: a SIF file or a sandbox directory
    display_name: str = ""
    description: str = ""
    binds: tuple[Bind, ...] = ()  # bound into this image's containers, after default_bind_path
    args: tuple[str, ...] = ()  # runtime options, after singularity_args
    gpu: bool = False  # gets gpu_singularity_args on every node, not only on gpu_nodes
    groups: frozenset[str] | None = None  # the JupyterHub groups that may use it (None: everyone)

    @property
    def title(self) -> str:
        return self.display_name or self.name

    def allows(self, groups: Iterable[str]) -> bool:
        """Whether a member of *groups* may use this image."""
        return self.groups is None or not self.groups.isdisjoint(groups)


def _image(entry, index: int) -> Image:
    """One entry of ``images`` checked; ImageConfigError naming it and the key."""
    where = f"images[{index}]"
    if not isinstance(entry, Mapping):
        raise ImageConfigError(f"{where} is not a dict")
    unknown = sorted(set(entry) - set(KEYS))
    if unknown:
        raise ImageConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (known: {', '.join(KEYS)})"
        )
    missing = [key for key in REQUIRED if not entry.get(key)]
    if missing:
        raise ImageConfigError(f"{where}: {' and '.join(missing)} missing")
    name, path = entry["name"], entry["path"]
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ImageConfigError(
            f"{where}: name {show_value(str(name))} is not 1-64 letters, digits, '_', '.' or '-' (not first)"
        )
    if not isinstance(path, str) or not path.startswith("/") or "\n" in path:
        raise ImageConfigError(f"{where} ({name}): path {show_value(str(path))} is not an absolute path")
    args, groups = entry.get("args") or [], entry.get("groups")
    if not isinstance(args, (list, tuple)) or not all(isinstance(a, str) and a for a in args):
        raise ImageConfigError(f"{where} ({name}): args must be a list of runtime options (strings)")
    if groups is not None and (
        isinstance(groups, str)
        or not isinstance(groups, Iterable)
        or not all(isinstance(g, str) for g in groups)
    ):
        raise ImageConfigError(f"{where} ({name}): groups must be a list of JupyterHub group names")
    for key in ("display_name", "description"):
        if not isinstance(entry.get(key, ""), str):
            raise ImageConfigError(f"{where} ({name}): {key} must be a string")
    try:
        binds = parse_binds(entry.get("binds") or "")
    except OptionsError as e:
        raise ImageConfigError(f"{where} ({name}): binds: {e}") from None
    return Image(
        name=name,
        path=path,
        display_name=entry.get("display_name", ""),
        description=entry.get("description", ""),
        binds=binds,
        args=tuple(args),
        gpu=bool(entry.get("gpu", False)),
        groups=None if groups is None else frozenset(groups),
    )


def parse_images(entries, container_path: str = "") -> list[Image]:
    """The images of the ``images`` setting (a list of dicts), or else the one of
    ``singularity_container_path``; ImageConfigError if a value is not usable."""
    if entries is not None and not isinstance(entries, (list, tuple)):
        raise ImageConfigError(f"images must be a list of dicts, not {type(entries).__name__}")
    if entries:
        images = [_image(entry, i) for i, entry in enumerate(entries)]
        names = [image.name for image in images]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ImageConfigError(f"images: the name(s) {', '.join(twice)} are used more than once")
        return images
    if not container_path:
        raise ImageConfigError("neither images nor singularity_container_path is set")
    if not container_path.startswith("/"):
        raise ImageConfigError(
            f"singularity_container_path {show_value(container_path)} is not an absolute path"
        )
    return [Image(name=shorthand_name(container_path), path=container_path)]


def shorthand_name(path: str) -> str:
    """The name of the one image of singularity_container_path: its file name, without .sif."""
    base = os.path.basename(path.rstrip("/"))
    base = base[:-4] if base.endswith(".sif") else base
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", base).lstrip("._-")[:64]
    return name or "default"


def choose(images: list[Image], requested, groups: Iterable[str]) -> Image:
    """The image *requested* by name (None or "": the first the user may use);
    OptionsError naming the field if it is unknown or not for this user."""
    groups = set(groups)
    usable = [image for image in images if image.allows(groups)]
    if requested is None or requested == "":
        if not usable:
            raise OptionsError("no image is available to you; please ask your administrators")
        return usable[0]
    offered = ", ".join(image.name for image in usable) or "none"
    if not isinstance(requested, str):
        raise OptionsError(f"image must be the name of an image (offered to you: {offered})")
    for image in images:
        if image.name == requested:
            if image not in usable:
                raise OptionsError(
                    f"image {show_value(requested)} is not available to you (offered to you: {offered})"
                )
            return image
    raise OptionsError(f"image {show_value(requested)} is not one of the images offered to you: {offered}")


class ImageChoice:
    """A spawner's images: the list as its configuration gives it, and the user's choice.

    *config*: the spawner, for its ``images`` and ``singularity_container_path`` (a
    callable ``images`` is called with it); *groups()*: the user's group names.
    """

    def __init__(self, config, groups, fail) -> None:
        self.config = config
        self.groups = groups
        self.fail = fail

    async def offered(self) -> list[Image]:
        """Every configured image; SpawnException if the configuration is not usable."""
        entries = self.config.images
        try:
            if callable(entries):
                entries = entries(self.config)
                if inspect.isawaitable(entries):
                    entries = await entries
            return parse_images(entries, self.config.singularity_container_path)
        except ImageConfigError as e:
            raise self.fail(f"the Hub is misconfigured: c.RemoteSingularitySpawner.{e}", "config") from None

    async def for_user(self) -> list[Image]:
        """The images this user may use, in the configured order."""
        groups = set(self.groups())
        return [image for image in await self.offered() if image.allows(groups)]

    async def choose(self, user_options: Mapping) -> tuple[Image, dict]:
        """The image asked for in *user_options* and the other options; SpawnException (400)
        naming the field if the choice is not allowed."""
        options = dict(user_options)
        requested = options.pop("image", None)
        images = await self.offered()
        try:
            return choose(images, requested, self.groups()), options
        except OptionsError as e:
            raise self.fail(f"Cannot start your server: {e}", "options") from None
