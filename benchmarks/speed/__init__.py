"""Speed and memory benchmarks: distmeta's paths and its peers, timed in interleaved rounds.

``python -m benchmarks.speed`` (``make bench``) runs every benchmark's ``--quick`` mode in
turn (:mod:`benchmarks.speed.__main__`); ``python -m benchmarks.speed.NAME`` runs one in full,
with the flags its docstring lists. What they share is :mod:`benchmarks.speed.common`.
"""
