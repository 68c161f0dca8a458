"""A partition's GPUs as Slurm's GRES shows them, and the GPU type a user may ask for.

Pure: no I/O. ``slurm_job.sh partitions`` reports, per partition, the GPUs of its
nodes (``gpus_total``), those no job holds (``gpus_idle``) and the GPU types its
nodes' GRES name (``gpu_types``, e.g. ``a100`` of ``gpu:a100:4``). A user asks for
GPUs with ``gpus`` (a count) and, where the partition has types, may name one with
``gpu_type``; the job then asks sbatch for ``--gpus=TYPE:COUNT``.
"""

from __future__ import annotations

from ..request import OptionsError, show_value
from .slurm_grammar import name_error

GPU_KEYS = ("gpus_idle", "gpus_total")  # counts of the partitions reply; absent: 0


def gpu_counts(data: dict, partition: str, count) -> dict:
    """The partition's GPU fields from its reply item: counts (by *count*, the reply's
    count check) and types. ValueError if malformed."""
    types = data.get("gpu_types", [])
    if not isinstance(types, list) or any(not isinstance(t, str) or name_error(t) for t in types):
        raise ValueError(f"partition {show_value(partition)}: gpu_types is not a list of GPU type names")
    fields = {key: count(data.get(key, 0), partition, key) for key in GPU_KEYS}
    return {**fields, "gpu_types": tuple(types)}


def gpu_summary(partition) -> str:
    """``, 1/2 GPUs free (a100)`` for a partition with GPUs, else ``""``."""
    if not partition.gpus_total:
        return ""
    types = f" ({', '.join(partition.gpu_types)})" if partition.gpu_types else ""
    return f", {partition.gpus_idle}/{partition.gpus_total} GPUs free{types}"


def check_gpu_type_format(value) -> str | None:
    """Stage 1, no connection: a GPU type's format alone (None: not given); OptionsError naming it."""
    if value is None:
        return None
    error = name_error(value) if isinstance(value, str) else "not a string"
    if error:
        raise OptionsError(f"gpu_type {show_value(str(value))} is not a GPU type name: {error}")
    return value


def choose_gpu_type(value: str | None, gpus: int, partition) -> str | None:
    """Stage 2: the GPU type against the partition's types and the GPU count asked for."""
    if value is None:
        return None
    field, name, types = f"gpu_type {show_value(value)}", partition.name, partition.gpu_types
    if not types:
        raise OptionsError(f"{field} cannot be chosen: partition {name} has no GPU types")
    if value not in types:
        raise OptionsError(f"{field} is not a GPU type of partition {name}: {', '.join(types)}")
    if gpus < 1:
        raise OptionsError(f"gpu_type {show_value(value)} needs at least 1 GPU (gpus)")
    return value


def gpu_type_field(partition) -> list[dict]:
    """The form's GPU type field for *partition* (as slurm_site.site_fields gives fields), if it has types."""
    if not partition.gpu_types:
        return []
    return [{"name": "gpu_type", "label": "GPU type", "choices": partition.gpu_types, "empty": "any type"}]
