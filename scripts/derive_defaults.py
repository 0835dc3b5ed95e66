"""Derive the per-task defaults (raysim.defaults) from the tuning studies tuning/defaults-*.toml.

Rule, the same for every task and knob: take the best 20% of the COMPLETE trials of the study
(by the validation objective; at least 3, at most 10), take each knob's median over them (in log space for log-scaled knobs),
and round it (1 significant figure for step sizes; 0.05 for fractions and probabilities).
A plateau of equally good trials is common (several settings reach the Bayes accuracy), so
the median of the best trials is a setting from the middle of the plateau, not its edge.

    python scripts/derive_defaults.py --studies results/defaults/studies

Prints the table and writes <studies>/../derived.json; copy the values into raysim/defaults.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

KNOBS = {  # config key -> (log scale, rounding)
    "eta_theta": (True, "sig1"), "eta_phi": (True, "sig1"), "eta_lambda": (True, "sig1"),
    "prune_start": (False, 0.05), "rho_init": (False, 0.05), "eta_local": (True, "sig1"),
}


def _round(v: float, how) -> float:
    if how == "sig1":
        return float(f"{v:.1g}")
    return round(round(v / how) * how, 10)


def derive(study_dir: Path, top: int = 10) -> dict:
    """The rule of the module docstring for one study (``top`` caps the number of best trials)."""
    import optuna

    from raysim.tuning.study import load_from_dir

    study = load_from_dir(study_dir)
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    k = max(3, min(top, round(0.2 * len(done))))
    best = sorted(done, key=lambda t: -t.value)[:k]
    out = {"study": study.study_name, "n_complete": len(done), "top": len(best),
           "best_value": best[0].value if best else None,
           "top_values": [t.value for t in best]}
    searched = {"eta_ratio" if k == "eta_phi" else k: k for k in KNOBS}
    for pname, knob in searched.items():
        if not best or pname not in best[0].params:
            continue
        log, how = KNOBS[knob]
        vals = [t.user_attrs["config"]["algorithm"][knob] for t in best]
        arr = np.asarray(vals, float)
        med = float(np.exp(np.median(np.log(arr)))) if log else float(np.median(arr))
        out[knob] = {"median": med, "default": _round(med, how), "min": float(arr.min()), "max": float(arr.max())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", default="results/defaults/studies")
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()
    root = Path(args.studies)
    res = {}
    for d in sorted([*root.glob("defaults-*"), *root.glob("scenario-*")]):
        if (d / "study.journal").exists():
            res[d.name] = derive(d, args.top)
            r = res[d.name]
            if not r["n_complete"]:
                print(f"{d.name}: no complete trial yet")
                continue
            knobs = ", ".join(f"{k} {v['default']:g} (top-{r['top']} range {v['min']:.3g}..{v['max']:.3g})"
                              for k, v in r.items() if isinstance(v, dict))
            print(f"{d.name}: best {r['best_value']:.4f}, {r['n_complete']} complete; {knobs}")
    (root.parent / "derived.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
