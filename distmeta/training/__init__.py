"""The training layer: the meta-training loop and what it needs to run on any backend.

Read :mod:`.trainer` first (the loop, top to bottom). Around it: :mod:`.backend` (the one
interface to whatever computes meta-gradients, and the factory that picks one),
:mod:`.in_process` (the reference backend, ``resources.workers: 0``), :mod:`.reduce` (group results
to one update, ``nan_policy``), :mod:`.evaluation` (meta-validation and meta-test with the
baselines), :mod:`.selection` (best-on-validation, early stopping), :mod:`.metrics`
(``metrics.jsonl`` and TensorBoard), :mod:`.report` (what a run prints) and
:mod:`.pretrain` (the optional supervised stage).

It sits on the compute layer (models, algorithms, tasks, the Worker), the distribution
layer (:mod:`distmeta.distributed`, reached only through :mod:`.backend`) and the
persistence layer (:mod:`distmeta.persistence`); none of those imports it.
"""
