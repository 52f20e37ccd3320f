"""A cluster in a box: Ray nodes on one machine that share nothing but a network.

Each node runs in its own network namespace (its own address on a bridge this package
creates, no route off the machine) and its own mount namespace (a private ``/dev/shm`` of a
stated size, a private ``/tmp`` and a private home, so caches and Ray's session files are
per node; the repository is mounted read-only). Links get a bandwidth (``tc tbf``) and can be
cut (link down, processes alive) and restored. Run storage is an S3-compatible server
(``moto``) inside the head's namespace.

It needs root and iproute2. It is test and benchmark machinery: nothing in ``distmeta``
imports it. Everything it makes is removed by namespace (never by process name) on
:meth:`NetCluster.close`, on SIGINT/SIGTERM, and by a reaper process when its owner dies
without cleaning up (SIGKILL included).

    from clusterbox import NetCluster, Spec
    with NetCluster(Spec(workers=2, rate="100mbit")) as cluster:
        cluster.run("head", ["python", "-c", "import ray; ray.init(); print(ray.nodes())"])
"""
from clusterbox.cluster import NetCluster, Spec, unavailable_reason

__all__ = ["NetCluster", "Spec", "unavailable_reason"]
