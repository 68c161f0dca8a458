"""Values a Slurm spawn must refuse, naming the field: the issue's list, for the unit and e2e tests.

For the partitions of the test cluster: debug (rss-node1, rss-node2; 2 CPUs per
node) and small (rss-node2 only).
"""

BAD_VALUES = [
    ({"cpus": 0}, "cpus"),
    ({"cpus": 3}, "cpus"),
    ({"memory": "lots"}, "memory"),
    ({"time": "forever"}, "time"),
    ({"partition": "nosuch"}, "partition"),
    ({"partition": "debug;touch /tmp/rss-pwned"}, "partition"),
    ({"partition": "small", "host": "rss-node1"}, "host"),
    ({"gpus": 1, "gpu_type": "tesla;id"}, "gpu_type"),
]
