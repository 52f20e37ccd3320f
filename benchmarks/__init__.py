"""distmeta's benchmarks and experiments, run as modules from the repository root.

* :mod:`benchmarks.speed`: speed and memory benchmarks on one shared set-up module
  (:mod:`benchmarks.speed.common`); ``python -m benchmarks.speed`` (``make bench``) runs every
  one's ``--quick`` mode in turn, ``python -m benchmarks.speed.NAME`` one in full.
* :mod:`benchmarks.quality`: the quality table of shipped configs on every corpus.
* :mod:`benchmarks.probes`: what-if probes of the default's training and test-time use.
* :mod:`benchmarks.corpora`: builds the extra labelled corpora (``python -m benchmarks.corpora``).
* :mod:`benchmarks.faults`: the fault-tolerance table.
* ``benchmarks/results/``: what the full runs wrote, behind the tables in ``docs/``.

Importing this package sets the environment every benchmark runs in (offline Hugging Face,
quiet Ray) before a benchmark module imports ray, datasets or tokenizers; a value already set
wins.
"""
from __future__ import annotations

import os

#: Read at import or start-up by ray, datasets, huggingface_hub and tokenizers (as in tests/conftest.py).
ENVIRONMENT = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
for _key, _value in ENVIRONMENT.items():
    os.environ.setdefault(_key, _value)
