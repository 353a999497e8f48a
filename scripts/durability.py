#!/usr/bin/env python3
"""What durability costs: the store's round commit, and a restart.

1. Store cost per round. `medfed run --store` on the demo's breast-cancer
   task (a 31-value model) and its CNN task (synthetic X-rays, ~25k values),
   10 rounds each; every round commit (model file written and fsynced, then
   one SQLite transaction with synchronous=FULL) is timed by the coordinator
   ("round committed", ms). In the same run, the peer: a bare atomic write
   of the same number of bytes (write, fsync, rename, fsync of the
   directory) from Python; the ratio commit / bare write is printed.
2. Restart to the first resumed round. A coordinator + 5 hospital processes
   (breast cancer, 10 rounds) whose coordinator SIGKILLs itself after round
   4's commit (a crash point); a second coordinator starts on the same store.
   Reported from its start: the run resumed (store read, model and strategy
   restored) and the first resumed round asked for (the hospitals have
   reconnected by themselves: their backoff dominates).

    cargo build --release --features failpoints && scripts/durability.py [--repeat 3]

MEDFED_BINARY overrides target/release/medfed (it must have the feature).
"""
import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.environ.get("MEDFED_BINARY", os.path.join(ROOT, "target", "release", "medfed"))
COOKIE = "durability-bench-cookie-0123456789"


def log_lines(path):
    with open(path) as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def stamp(record):
    return datetime.datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()


def bare_write_ms(directory, size, repeat=10):
    """Write `size` bytes atomically and durably, as the store writes a model."""
    data = os.urandom(size)
    times = []
    for i in range(repeat):
        path = os.path.join(directory, f"peer-{i}.bin")
        start = time.perf_counter()
        with open(path + ".partial", "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(path + ".partial", path)
        fd = os.open(directory, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def store_cost(task, work):
    store = os.path.join(work, f"{task}.sqlite")
    log = os.path.join(work, f"{task}.log")
    env = dict(os.environ, RUST_LOG="warn,medfed_actors::coordinator::actor=debug",
               MEDFED_RUN__CACHE_DIR=os.path.join(work, "cache"), MEDFED_RUN__DATA_DIR=os.path.join(work, "data"))
    with open(log, "w") as err:
        subprocess.run([BINARY, "--log-format", "json", "run", "--config", "config/demo.toml", "--task", task,
                        "--rounds", "10", "--json", "--store", store],
                       cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err, check=True)
    commits = [r["fields"]["ms"] for r in log_lines(log) if r.get("fields", {}).get("message") == "round committed"]
    models = os.path.join(work, f"{task}-models", "registry")
    size = max(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(models) for f in fs)
    peer = bare_write_ms(work, size)
    return {"task": task, "rounds": len(commits), "model_bytes": size,
            "commit_ms_median": statistics.median(commits), "commit_ms_max": max(commits),
            "bare_atomic_write_ms": peer, "ratio": statistics.median(commits) / peer}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def restart(work, index):
    run = os.path.join(work, f"restart-{index}")
    os.makedirs(run)
    addr = f"127.0.0.1:{free_port()}"
    base = dict(os.environ, MEDFED_CLUSTER_COOKIE=COOKIE, MEDFED_RUN__CACHE_DIR=os.path.join(work, "cache"),
                RUST_LOG="info,medfed_actors::coordinator::actor=debug")
    coordinator = [BINARY, "--log-format", "json", "coordinator", "--config", "config/demo.toml", "--task",
                   "breast_cancer", "--listen", addr, "--auto-start", "--exit-after-run", "--json"]
    data = dict(base, MEDFED_RUN__DATA_DIR=os.path.join(run, "coordinator"))
    first = subprocess.Popen(coordinator, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(run, "c1.log"), "w"),
                             env=dict(data, FAILPOINTS="coordinator::round_committed=3*off->return"))
    hospitals = [subprocess.Popen([BINARY, "--log-format", "json", "hospital", "--config", "config/demo.toml",
                                   "--task", "breast_cancer", "--coordinator", addr, "--shard", f"{i}/5"],
                                  cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=open(os.path.join(run, f"h{i}.log"), "w"),
                                  env=dict(base, MEDFED_RUN__DATA_DIR=os.path.join(run, f"h{i}")))
                 for i in range(1, 6)]
    first.wait(timeout=300)
    if first.returncode != -9:
        sys.exit(f"the first coordinator was not killed at its crash point (exit {first.returncode})")
    log = os.path.join(run, "c2.log")
    started = time.time()
    second = subprocess.run(coordinator, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "w"),
                            env=data, timeout=300)
    for h in hospitals:
        h.kill()
    if second.returncode != 0:
        sys.exit(f"the second coordinator failed; see {log}")
    resumed = first_round = None
    for r in log_lines(log):
        message = r.get("fields", {}).get("message", "")
        if resumed is None and message.startswith("run resumed"):
            resumed = stamp(r)
        if first_round is None and message == "round started":
            first_round = stamp(r)
    return {"to_resumed_ms": (resumed - started) * 1e3, "to_first_round_ms": (first_round - started) * 1e3}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not os.path.exists(BINARY):
        sys.exit(f"{BINARY} not found: cargo build --release --features failpoints")
    with tempfile.TemporaryDirectory() as work:
        print("store cost per round (synchronous=FULL), median of 10 commits:")
        for task in ["breast_cancer", "pneumonia_xray"]:
            r = store_cost(task, work)
            print(f"  {task}: model {r['model_bytes']} bytes, commit {r['commit_ms_median']:.2f} ms "
                  f"(max {r['commit_ms_max']:.2f}); bare atomic write of the same bytes {r['bare_atomic_write_ms']:.2f} ms; "
                  f"ratio {r['ratio']:.2f}")
        runs = [restart(work, i) for i in range(args.repeat)]
        resumed = statistics.median(r["to_resumed_ms"] for r in runs)
        first = statistics.median(r["to_first_round_ms"] for r in runs)
        print(f"restart to resumed run: {resumed:.0f} ms; to the first resumed round asked for: {first:.0f} ms "
              f"(median of {len(runs)}; the hospitals reconnect by themselves)")


if __name__ == "__main__":
    main()
