"""Fault drills: failures injected on purpose (tests, benchmarks, chaos runs), kept out of production code.

A drill is a wrapper the backend factory puts around a backend when the config's
``faults`` list is not empty (:mod:`.faults`); without one nothing here runs.
"""
