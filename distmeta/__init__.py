"""distmeta: distributed meta-learning for few-shot NLP."""
from __future__ import annotations

__version__ = "0.1.0"
