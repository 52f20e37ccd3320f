"""The Ray backend: a pool of Ray actors, each holding one :class:`~distmeta.worker.Worker`.

Read it in this order: :mod:`.backend` (``RayBackend`` ties the parts together),
:mod:`.dispatch` (one step's calls, retries and deadlines), :mod:`.transport` (how
parameters and gradients travel), :mod:`.pool` (placement group, actor health),
:mod:`.actor` (what runs in each actor), :mod:`.compiled` (the Compiled Graph path),
:mod:`.plan` (which actor gets which groups, how many actors fit).
"""
