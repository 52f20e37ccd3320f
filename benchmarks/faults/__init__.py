"""Fault tolerance: each fault injected N times, and what the driver reduced (:mod:`benchmarks.faults.fault_table`)."""
