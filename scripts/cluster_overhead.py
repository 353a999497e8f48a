#!/usr/bin/env python3
"""Per-round overhead of cluster mode versus in-process (issue #3).

Usage: cargo build --release && scripts/cluster_overhead.py [--repeats 3] [--secure-aggregation]

For each demo task, runs the federation in one process (`medfed run`) and as
separate processes on 127.0.0.1 (`medfed coordinator` + one `medfed
hospital --shard I/K` per hospital, all joined before round 1), with the
same seed, and compares the mean seconds per round the coordinator reports
(request sent to global model aggregated and evaluated). Also checks that
both give the same final held-out accuracy.

With --secure-aggregation: the breast-cancer task only, each way with and
without secure aggregation (every process given the flag), so the per-round
cost of SecAgg+'s four stages is measured against the plain round in the
same run; and the cluster again over mutual TLS (certificates from `medfed
cluster gen-certs`), where each hospital also signs its setup keys and
checks its peers' signatures and certificates.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "medfed")
TASKS = {"breast_cancer": 5, "pneumonia_xray": 3}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mean_round(run, task):
    return statistics.mean(r["seconds"] for r in run["tasks"][task]["rounds"])


def in_process(task, env, flags=()):
    out = subprocess.run([BIN, "run", "--task", task, "--json", *flags], cwd=ROOT, env=env,
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def tls_flags(certs, name):
    if certs is None:
        return []
    return ["--tls-cert", os.path.join(certs, f"{name}.pem"), "--tls-key",
            os.path.join(certs, f"{name}-key.pem"), "--tls-ca", os.path.join(certs, "ca.pem")]


def cluster(task, hospitals, env, flags=(), certs=None):
    addr = f"127.0.0.1:{free_port()}"
    env = dict(env, MEDFED_CLUSTER_COOKIE="overhead-Measurement/7Hq2xVw9Lp4Rz8Kd1Mb",
               **{f"MEDFED_TASKS__{task.upper()}__MIN_HOSPITALS": str(hospitals)})
    with tempfile.TemporaryFile() as log:
        coord = subprocess.Popen([BIN, "coordinator", "--task", task, "--listen", addr,
                                  "--auto-start", "--exit-after-run", "--json", *flags,
                                  *tls_flags(certs, "coordinator")],
                                 cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log)
        procs = [subprocess.Popen([BIN, "hospital", "--task", task, "--coordinator", addr,
                                   "--shard", f"{i}/{hospitals}", *flags,
                                   *tls_flags(certs, f"{task}-{i}")],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
                 for i in range(1, hospitals + 1)]
        try:
            out, _ = coord.communicate(timeout=600)
        finally:
            for p in procs:
                p.kill()
                p.wait()
        if coord.returncode != 0:
            log.seek(0)
            raise SystemExit(f"coordinator failed:\n{log.read().decode()[-3000:]}")
        return json.loads(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--secure-aggregation", action="store_true")
    args = parser.parse_args()
    env = dict(os.environ, RUST_LOG="warn")
    if args.secure_aggregation:
        secure(args.repeats, env)
        return
    for task, hospitals in TASKS.items():
        local, remote = [], []
        for _ in range(args.repeats):
            a = in_process(task, env)
            b = cluster(task, hospitals, env)
            fa = a["tasks"][task]["final"]["accuracy"]
            fb = b["tasks"][task]["final"]["accuracy"]
            if abs(fa - fb) > 1e-6:
                print(f"  NOTE {task}: final accuracy differs: {fa} in-process vs {fb} cluster")
            local.append(mean_round(a, task))
            remote.append(mean_round(b, task))
        lm, rm = statistics.median(local), statistics.median(remote)
        print(f"{task} ({hospitals} hospitals): in-process {lm * 1000:.1f} ms/round, "
              f"cluster {rm * 1000:.1f} ms/round, overhead {(rm - lm) * 1000:+.1f} ms/round "
              f"(medians of {args.repeats}; per run in-process "
              f"{[round(x * 1000, 1) for x in local]}, cluster {[round(x * 1000, 1) for x in remote]})")


def secure(repeats, env):
    task, hospitals = "breast_cancer", 5
    flags = ["--secure-aggregation"]
    runs = {"in-process": [], "in-process secure": [], "cluster": [], "cluster secure": [],
            "cluster mTLS": [], "cluster mTLS secure": []}
    accuracy = {}
    with tempfile.TemporaryDirectory() as certs:
        names = ",".join(f"{task}-{i}" for i in range(1, hospitals + 1))
        subprocess.run([BIN, "cluster", "gen-certs", "--out", certs, "--hospitals", names],
                       cwd=ROOT, env=env, check=True, capture_output=True)
        for _ in range(repeats):
            for name, run in (("in-process", lambda: in_process(task, env)),
                              ("in-process secure", lambda: in_process(task, env, flags)),
                              ("cluster", lambda: cluster(task, hospitals, env)),
                              ("cluster secure", lambda: cluster(task, hospitals, env, flags)),
                              ("cluster mTLS", lambda: cluster(task, hospitals, env, (), certs)),
                              ("cluster mTLS secure", lambda: cluster(task, hospitals, env, flags, certs))):
                r = run()
                runs[name].append(mean_round(r, task))
                accuracy[name] = r["tasks"][task]["final"]["accuracy"]
    m = {k: statistics.median(v) * 1000 for k, v in runs.items()}
    for k in runs:
        print(f"{task} ({hospitals} hospitals) {k}: {m[k]:.2f} ms/round "
              f"(median of {repeats}; final accuracy {accuracy[k]:.4f})")
    print(f"secure aggregation adds {m['in-process secure'] - m['in-process']:+.2f} ms/round in process, "
          f"{m['cluster secure'] - m['cluster']:+.2f} ms/round across 6 processes, "
          f"{m['cluster mTLS secure'] - m['cluster mTLS']:+.2f} ms/round across 6 processes over mutual TLS "
          f"(setup keys signed and checked)")


if __name__ == "__main__":
    main()
