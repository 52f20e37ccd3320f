"""Quality of shipped configs: held-out accuracy on ICD-10-CM and the extra corpora (:mod:`benchmarks.quality.table`)."""
