"""The distribution layer: everything Ray. A pool of Ray actors, each holding one :class:`~distmeta.worker.Worker`.

Read it in this order: :mod:`.ray_backend` (``RayBackend`` ties the parts together),
:mod:`.dispatch` (one step's calls, retries and deadlines), :mod:`.transport` and
:mod:`.shm` (how parameters and gradients travel), :mod:`.wire` (the request and packed
results) and :mod:`.answers` (checks on what comes back), :mod:`.actor_pool` (placement
group, actor health), :mod:`.actor` (what runs in each actor), :mod:`.compiled` (the
Compiled Graph path), :mod:`.node_sum` (a node sums its own groups), :mod:`.elastic`
(growing the pool), :mod:`.plan` and :mod:`.preflight` (how many actors fit),
:mod:`.session` (connecting to Ray or starting a private one).

It implements :class:`~distmeta.training.backend.Backend` structurally, without importing
the training layer, and knows nothing of run directories or storage.
"""
