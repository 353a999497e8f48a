#!/usr/bin/env python3
"""How an in-process federation scales with the number of hospitals.

On a generated SYNTHETIC CSV (labelled Gaussian blobs, not patient data) of
1,000,000 rows and 30 features, `medfed run` trains 10 rounds of 1 local
epoch (IID partition, FedAvg, federated scaling, federated evaluation) with
K = 100, 1,000, 10,000 and 100,000 hospitals in one process, and reports the
per-round time (median of the 10 rounds, from the run's JSON: a whole round,
its federated evaluation included) and the peak resident memory. medfed
trains on every core; the numpy loop below runs on one (numpy's own
threads aside). In the same run, a plain numpy FedAvg loop does the same
work at K = 1,000 (each client one epoch of mini-batch SGD on its shard, the
weighted mean, the held-out metrics, each client's metrics on its share of
the held-out set), and the ratio medfed / numpy is printed.

    cargo build --release && scripts/scale.py [--ks 100,1000,10000,100000]
        [--rows 1000000] [--dir target/scale] [--numpy-k 1000 (0: skip)]

numpy comes from a virtual environment the script makes on first use
(~/.cache/medfed/bench-venv). MEDFED_BINARY overrides target/release/medfed.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.environ.get("MEDFED_BINARY", os.path.join(ROOT, "target", "release", "medfed"))
VENV = os.path.join(os.path.expanduser("~"), ".cache", "medfed", "bench-venv")
FEATURES = 30
ROUNDS = 10
BATCH = 32
LR = 0.1
SEED = 42


def ensure_numpy():
    """Re-run this script under a venv that has numpy, made once."""
    try:
        import numpy  # noqa: F401
        return
    except ImportError:
        pass
    python = os.path.join(VENV, "bin", "python")
    if not os.path.exists(python):
        print(f"making {VENV} with numpy (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "numpy==2.2.6"], check=True)
    os.execv(python, [python] + sys.argv)


def config(path, csv, cache):
    with open(path, "w") as f:
        f.write(f"""[run]
rounds = {ROUNDS}
seed = {SEED}
cache_dir = "{cache}"

[federation]
round_timeout_secs = 86400
assemble_timeout_secs = 86400

[tasks.scale]
kind = "tabular"
hospitals = 100

[tasks.scale.data]
path = "{csv}"
label_column = "label"
positive_class = "1"
test_fraction = 0.2

[tasks.scale.partition]
scheme = "iid"

[tasks.scale.training]
local_epochs = 1
batch_size = {BATCH}
learning_rate = {LR}
l2 = 0.0
""")


def run_medfed(cfg, k):
    started = time.time()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", BINARY, "run", "--config", cfg, "--hospitals", str(k), "--json"],
        capture_output=True, text=True)
    wall = time.time() - started
    if proc.returncode != 0:
        sys.exit(f"medfed failed at K={k}:\n{proc.stderr[-3000:]}")
    rss_kib = int(proc.stderr.strip().splitlines()[-1])
    task = json.loads(proc.stdout)["tasks"]["scale"]
    # Whole rounds: training, aggregation, held-out metrics and every
    # hospital's evaluation of the new model (as the numpy loop does).
    seconds = [r["seconds_with_evaluation"] for r in task["rounds"]]
    return {
        "k": k,
        "round_median": statistics.median(seconds),
        "rounds": sum(seconds),
        "wall": wall,
        "rss_mib": rss_kib / 1024,
        "accuracy": task["final"]["accuracy"],
    }


def numpy_fedavg(csv, k):
    """The same work as one medfed round, in numpy; returns per-round seconds."""
    import numpy as np
    data = np.loadtxt(csv, delimiter=",", skiprows=1, dtype=np.float64)
    x, y = data[:, :-1], data[:, -1]
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(y))
    cut = int(len(y) * 0.2)
    test, train = order[:cut], order[cut:]
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    z = (x - mean) / std
    shards = np.array_split(rng.permutation(train), k)
    shares = np.array_split(test, k)
    w, b = np.zeros(x.shape[1]), 0.0

    def metrics(rows, w, b):
        p = 1.0 / (1.0 + np.exp(-(z[rows] @ w + b)))
        t = y[rows] == 1
        pred = p >= 0.5
        tp, fp = np.sum(pred & t), np.sum(pred & ~t)
        fn, tn = np.sum(~pred & t), np.sum(~pred & ~t)
        eps = 1e-12
        loss = -np.mean(t * np.log(p + eps) + (~t) * np.log(1 - p + eps))
        return tp, fp, fn, tn, loss, p, t

    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        deltas, weights = [], []
        for shard in shards:
            lw, lb = w.copy(), b
            local = rng.permutation(shard)
            for i in range(0, len(local), BATCH):
                rows = local[i:i + BATCH]
                p = 1.0 / (1.0 + np.exp(-(z[rows] @ lw + lb)))
                r = p - y[rows]
                lw -= LR * (z[rows].T @ r) / len(rows)
                lb -= LR * r.mean()
            deltas.append(np.append(lw - w, lb - b))
            weights.append(len(shard))
        step = np.average(np.array(deltas), axis=0, weights=np.array(weights, dtype=np.float64))
        w, b = w + step[:-1], b + step[-1]
        # Held-out metrics, AUC by ranks (as medfed's).
        tp, fp, fn, tn, loss, p, t = metrics(test, w, b)
        ranks = np.argsort(np.argsort(p)) + 1
        positives = t.sum()
        auc = (ranks[t].sum() - positives * (positives + 1) / 2) / (positives * (len(t) - positives))
        # Federated evaluation: every client on its share, pooled.
        pooled = np.zeros(4)
        for share in shares:
            if len(share):
                pooled += np.array(metrics(share, w, b)[:4], dtype=np.float64)
        times.append(time.perf_counter() - started)
    accuracy = (tp + tn) / len(test)
    return times, accuracy, auc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ks", default="100,1000,10000,100000")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dir", default=os.path.join(ROOT, "target", "scale"))
    ap.add_argument("--numpy-k", type=int, default=1000)
    args = ap.parse_args()
    ensure_numpy()
    os.makedirs(args.dir, exist_ok=True)
    csv = os.path.join(args.dir, f"synthetic-{args.rows}x{FEATURES}.csv")
    if not os.path.exists(csv):
        subprocess.run([BINARY, "data", "synth-tabular", "--rows", str(args.rows), "--features", str(FEATURES),
                        "--seed", "1", "--out", csv], check=True)
    cfg = os.path.join(args.dir, "scale.toml")
    config(cfg, csv, os.path.join(args.dir, "cache"))
    results = []
    for k in [int(v) for v in args.ks.split(",")]:
        r = run_medfed(cfg, k)
        results.append(r)
        print(f"K={k:>7}: {r['round_median']:.3f} s/round (median of {ROUNDS}), "
              f"{r['round_median'] / k * 1e6:.1f} us per hospital-round, peak RSS {r['rss_mib']:.0f} MiB, "
              f"wall {r['wall']:.1f} s, accuracy {r['accuracy']:.4f}", flush=True)
    if args.numpy_k > 0:
        times, accuracy, auc = numpy_fedavg(csv, args.numpy_k)
        numpy_round = statistics.median(times)
        print(f"numpy FedAvg loop, K={args.numpy_k}: {numpy_round:.3f} s/round (median of {ROUNDS}), "
              f"accuracy {accuracy:.4f}, AUC {auc:.4f}")
        ours = [r for r in results if r["k"] == args.numpy_k]
        if ours:
            print(f"medfed / numpy at K={args.numpy_k}: {ours[0]['round_median'] / numpy_round:.2f}x")
    print("| K | s/round | us per hospital-round | peak RSS (MiB) | accuracy |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['k']:,} | {r['round_median']:.3f} | {r['round_median'] / r['k'] * 1e6:.1f} | "
              f"{r['rss_mib']:.0f} | {r['accuracy']:.4f} |")


if __name__ == "__main__":
    main()
