#!/usr/bin/env python3
"""Held-out accuracy of the breast-cancer federation under differential privacy.

Runs `medfed run` (5 hospitals, sorted non-IID, the demo config) for each
epsilon and seed with seeded noise, and prints mean +- std over the seeds of
the final held-out accuracy, beside the no-DP figure and the update-level-DP
comparison. The seed changes the split, the partition, the training and
(through privacy.noise_seed) the noise. Usage (after `cargo build --release`;
MEDFED_BINARY=target/debug/medfed runs a debug build, same results):

    scripts/dp_accuracy.py [--seeds 1,2,3,4,5] [--epsilons 1,3,8]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.environ.get("MEDFED_BINARY", os.path.join(ROOT, "target", "release", "medfed"))

# DP-SGD: config/dp.toml (the tuned private federation). Update-level DP (the
# original platform's approach, done right: clipped, calibrated, accounted):
# the demo federation (FedAvg, 10 rounds) whose hospitals clip each round's
# delta to norm 1 and noise it once; the norm bound of UpdateCheck is lifted
# since noised deltas are large by design.
UPDATE = {
    "MEDFED_PRIVACY__MODE": "update",
    "MEDFED_PRIVACY__MAX_GRAD_NORM": "1.0",
    "MEDFED_TASKS__BREAST_CANCER__MAX_UPDATE_NORM": "1e9",
}


def run(seed, epsilon=None, env_extra=None):
    update_level = env_extra is not None
    config = "config/dp.toml" if epsilon is not None and not update_level else "config/demo.toml"
    args = [BINARY, "run", "--config", os.path.join(ROOT, config), "--json", "--seed", str(seed)]
    env = dict(os.environ, MEDFED_PRIVACY__NOISE="seeded", MEDFED_PRIVACY__NOISE_SEED=str(seed))
    if epsilon is not None:
        args += ["--dp-epsilon", str(epsilon)]
        env.update(env_extra or {})
    out = subprocess.run(args, env=env, capture_output=True, text=True)
    if not out.stdout:
        sys.exit(f"medfed failed: {out.stderr}")
    task = json.loads(out.stdout)["tasks"]["breast_cancer"]
    return task["final"]["accuracy"] if task["final"] else 0.0


def summary(values):
    return f"{statistics.mean(values):.4f} +- {statistics.stdev(values):.4f}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--epsilons", default="1,3,8")
    a = parser.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    epsilons = [float(e) for e in a.epsilons.split(",")]
    print(f"| epsilon | DP-SGD accuracy (mean +- std, {len(seeds)} seeds) | update-level DP |")
    print("|---|---|---|")
    for eps in epsilons:
        sgd = [run(s, eps) for s in seeds]
        upd = [run(s, eps, UPDATE) for s in seeds]
        print(f"| {eps:g} | {summary(sgd)} | {summary(upd)} |")
    no_dp = [run(s) for s in seeds]
    print(f"| no DP | {summary(no_dp)} | |")


if __name__ == "__main__":
    main()
