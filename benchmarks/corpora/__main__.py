"""``python -m benchmarks.corpora``: build the extra corpora (see :mod:`benchmarks.corpora.build`)."""
import sys

from benchmarks.corpora.build import main

sys.exit(main())
