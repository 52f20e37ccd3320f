"""The persistence layer: where a run's files live and how they are written, read and fenced.

:mod:`.rundir` (a run directory: refuse to clobber, one writer), :mod:`.checkpoint`
(atomic, checksummed, weights-only checkpoints), :mod:`.storage` and :mod:`.uris`
(local paths and ``pyarrow.fs`` object stores, credentials never in a URI),
:mod:`.lease` and :mod:`.identity` (one fenced writer per remote run), :mod:`.remote_run`
(a run directory on an object store) and :mod:`.reopen` (a saved run for ``distmeta eval``).

It knows nothing of training, Ray or the models: it imports only the config, the error
types and :mod:`distmeta.files`.
"""
