#!/usr/bin/env python3
"""What robust aggregation buys against one attacking hospital.

The breast-cancer federation (the demo config: 5 hospitals, sorted non-IID
partition, 10 rounds) with hospital breast_cancer-3 attacking, for each
attack and strategy, over several seeds (the seed changes the held-out
split, the partition's ties, the training order and the gaussian attack's
noise). Prints a markdown table of the final held-out accuracy, mean +- std
over the seeds; "aborted" counts runs that could not go on (e.g. Krum needs
every one of its 2f + 3 updates, and a NaN update is refused at intake).
Nothing here is tuned: every strategy runs with its defaults, Multi-Krum
with m = 3. The demo refuses updates whose norm exceeds 100 at intake;
--norm-bound 1e30 shows the strategies without that help.

    cargo build --release && scripts/attack_table.py [--seeds 1,2,3,4,5] [--norm-bound X]

MEDFED_BINARY overrides target/release/medfed.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.environ.get("MEDFED_BINARY", os.path.join(ROOT, "target", "release", "medfed"))
ATTACKER = "breast_cancer-3"
ATTACKS = ["scale:100", "sign_flip:10", "gaussian:10", "nan"]
# (column, extra arguments, extra environment)
STRATEGIES = [
    ("FedAvg", ["--strategy", "fedavg"], {}),
    ("median", ["--strategy", "median"], {}),
    ("trimmed_mean", ["--strategy", "trimmed_mean"], {}),
    ("krum (f=1)", ["--strategy", "krum"], {}),
    ("multi_krum (f=1, m=3)", [], {
        "MEDFED_TASKS__BREAST_CANCER__STRATEGY__NAME": "multi_krum",
        "MEDFED_TASKS__BREAST_CANCER__STRATEGY__M": "3",
    }),
]


NORM_BOUND = {}


def run(seed, attack, extra, env):
    env = {**env, **NORM_BOUND}
    args = [BINARY, "run", "--task", "breast_cancer", "--seed", str(seed), "--json"] + extra
    if attack:
        kind, _, factor = attack.partition(":")
        args += ["--attack", f"{kind}:{ATTACKER}" + (f":{factor}" if factor else "")]
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **env})
    if proc.returncode not in (0, 2):
        sys.exit(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    task = json.loads(proc.stdout)["tasks"]["breast_cancer"]
    if task["status"] != "finished":
        return None
    return task["final"]["accuracy"]


def cell(values):
    done = [v for v in values if v is not None]
    aborted = len(values) - len(done)
    if not done:
        return f"aborted ({aborted}/{len(values)})"
    text = f"{statistics.mean(done):.4f} ± {statistics.pstdev(done):.4f}"
    return text + (f" (aborted {aborted}/{len(values)})" if aborted else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="1,2,3,4,5")
    ap.add_argument("--norm-bound", type=float, default=None,
                    help="max_update_norm instead of the demo's 100 (e.g. 1e30: no bound at intake)")
    args = ap.parse_args()
    if args.norm_bound is not None:
        NORM_BOUND["MEDFED_TASKS__BREAST_CANCER__MAX_UPDATE_NORM"] = repr(args.norm_bound)
    seeds = [int(s) for s in args.seeds.split(",")]
    clean = [run(s, None, ["--strategy", "fedavg"], {}) for s in seeds]
    print(f"clean FedAvg (no attacker), seeds {args.seeds}: {cell(clean)}\n")
    print("| attack (one hospital of 5) | " + " | ".join(name for name, _, _ in STRATEGIES) + " |")
    print("|---" * (len(STRATEGIES) + 1) + "|")
    for attack in ATTACKS:
        row = [cell([run(s, attack, extra, env) for s in seeds]) for _, extra, env in STRATEGIES]
        print(f"| `{attack}` | " + " | ".join(row) + " |", flush=True)
    print("| none (clean) | " + " | ".join(
        cell([run(s, None, extra, env) for s in seeds]) for _, extra, env in STRATEGIES) + " |")


if __name__ == "__main__":
    main()
