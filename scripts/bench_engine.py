#!/usr/bin/env python3
"""Benchmark the Ray engine against the single-process reference (prints a table).

    python scripts/bench_engine.py --out results/bench            # the full grid
    python scripts/bench_engine.py --clients 1000 --rates 0.1     # one case

Same code as `raysim bench`; see raysim/bench.py for what is measured.
"""

import sys

from raysim.bench import main

if __name__ == "__main__":
    sys.exit(main())
