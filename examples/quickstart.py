"""FLoPS against Fed-HT on a small synthetic scenario, from Python.

    python examples/quickstart.py                   # on Ray (a local Ray instance is started)
    python examples/quickstart.py --backend local   # in this process, no Ray (same metrics)

It starts from the catalog scenario ``datasets/synthetic-lr.toml`` (sparse linear regression
with a known true support), shrinks it with overrides so that it runs in seconds, runs FLoPS
and Fed-HT at the same target density rho and prints their final metrics side by side. Each
run also writes its run directory (config, metrics.csv, summary.json, model.npz, plots)
under ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import raysim

SCENARIO = Path(__file__).resolve().parents[1] / "datasets" / "synthetic-lr.toml"

#: a small version of the scenario: p = 200 features (10 in the true support), 40 clients
SMALL = {
    "data.p": 200,
    "data.rho_true": 0.05,
    "data.n_clients": 40,
    "data.n_per_client": 30,
    "data.test_samples": 2000,
    "participation.rate": 0.25,
    "algorithm.rho": 0.05,
    "run.progress": False,
}

COLUMNS = ("r2", "tdr", "tpr", "nnz", "m", "cum_bytes_up")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("ray", "local"), default="ray",
                        help="ray: server and client actors on Ray; local: everything in this process")
    parser.add_argument("--rounds", type=int, default=20, help="rounds per run (default 20)")
    parser.add_argument("--out", default="runs/examples", help="parent folder of the run directories")
    parser.add_argument("--no-plots", action="store_true", help="do not draw the PNG plots")
    args = parser.parse_args(argv)

    results = {}
    for algorithm in ("flops", "fed-ht"):
        results[algorithm] = raysim.run(
            SCENARIO, SMALL,
            algorithm__name=algorithm, run__name=f"quickstart-{algorithm}", run__rounds=args.rounds,
            run__out_dir=args.out, run__plots=not args.no_plots, cluster__backend=args.backend,
            cluster__num_actors=2)

    print(f"{'algorithm':<10}" + "".join(f"{c:>14}" for c in COLUMNS))
    for algorithm, res in results.items():
        final = res.summary["final"]
        cells = "".join(f"{final[c]:>14.4g}" if isinstance(final[c], float) else f"{final[c]:>14}"
                        for c in COLUMNS)
        print(f"{algorithm:<10}{cells}")
    for algorithm, res in results.items():
        print(f"{algorithm}: {res.run_dir}")
    return results


if __name__ == "__main__":
    main()
