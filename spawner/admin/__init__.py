"""The admin command, ``remote-singularity-spawner check|deploy`` (command.py), what it does on
the nodes (deploy.py), and the configuration reference made from the traits (configdoc.py)."""
