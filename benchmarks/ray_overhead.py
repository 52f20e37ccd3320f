"""Ray's own per-step cost: one RayBackend actor against the same Worker in this process.

Same tasks, same groups, one torch thread each, interleaved warm-up then 10 timed steps:

    .venv/bin/python benchmarks/ray_overhead.py
"""
import os, time
for k,v in {"RAY_USAGE_STATS_ENABLED":"0","RAY_AUTH_MODE":"disabled","RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER":"0"}.items(): os.environ[k]=v
import ray, torch, numpy as np
from distmeta.config import load_config
from distmeta.experiment import prepare_experiment
from distmeta.worker import Worker
from distmeta.runtime.actors import RayBackend
from distmeta.tasks.materialise import chunks
torch.set_num_threads(1)
ray.init(num_cpus=2, include_dashboard=False, _temp_dir="/tmp/dmray_ovh", logging_level="warning", log_to_driver=False)
cfg=load_config(None,["workers=1","threads=1","data.source=sinusoid","model.name=mlp","algorithm.name=maml","train.meta_batch=32","algorithm.group_size=8"])
exp=prepare_experiment(cfg)
w=Worker(cfg,**exp.worker_args())
b=RayBackend(cfg,exp.worker_args())
meta={n:t.numpy() for n,t in w.initial_meta.items()}
specs=exp.sampler("train").batch(0,32); groups=[specs[r.start:r.stop] for r in chunks(32,8)]
for i in range(3): b.compute(meta,groups,i); w.meta_grad_groups(meta,groups,i)
t=time.perf_counter()
for i in range(10): w.meta_grad_groups(meta,groups,i)
print(f"in-process worker: {(time.perf_counter()-t)/10*1000:.1f} ms/step")
t=time.perf_counter()
for i in range(10): r=b.compute(meta,groups,i+3)
print(f"one Ray actor:     {(time.perf_counter()-t)/10*1000:.1f} ms/step (actor compute {sum(x.compute_s for x in r)*1000:.1f} ms)")
a=b.actors[0]
t=time.perf_counter()
for i in range(20): ray.get(a.ping.remote())
print(f"actor round trip:  {(time.perf_counter()-t)/20*1000:.2f} ms")
b.close(); ray.shutdown()
