"""JupyterHub spawner: single-user servers in Singularity/Apptainer on a node the user picks."""

from .spawner import RemoteSingularitySpawner

__all__ = ["RemoteSingularitySpawner"]
__version__ = "0.1.0"
