"""The admin command, ``remote-singularity-spawner check|deploy`` (command.py): the hosts and
settings from the Hub's config (settings.py; with placement slurm the submit host and the nodes
its sinfo lists, slurm_hosts.py), what it does on them (deploy.py), and the configuration
reference made from the traits (configdoc.py)."""
