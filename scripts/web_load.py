#!/usr/bin/env python3
"""Load test of `medfed serve` (issue #4): how fast /api/state and /metrics
answer under wrk while a run trains, and how much that load slows the run.

Usage: cargo build --release && scripts/web_load.py [--rounds 10] [--connections 8]

Runs the demo federation twice with the same seed: once with no HTTP load,
once with two wrk processes (one per endpoint) hammering the server for the
whole run. Prints requests/s and p99 latency per endpoint and the run's
slowdown. Needs `wrk` (apt-get install wrk).
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "load-test-token-0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None):
    req = urllib.request.Request(url, method=method, data=body)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


def run_once(base, rounds):
    run = http("POST", f"{base}/api/runs", json.dumps({"rounds": rounds}).encode())
    while True:
        r = http("GET", f"{base}/api/runs/{run['id']}")
        if r["status"] != "running":
            return r["ended_at"] - r["started_at"], r
        time.sleep(0.05)


def parse_wrk(text):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", text)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
    return rps, float(p99.group(1)) * scale


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--client-idle", type=int, default=1,
                    help="1: run wrk under SCHED_IDLE like a remote client; 0: compete with training as equals")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/medfed"))
    args = ap.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, MEDFED_API_TOKEN=TOKEN)
    server = subprocess.Popen([args.binary, "serve", "--http", f"127.0.0.1:{port}"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/readyz", timeout=2)
                break
            except Exception:
                if time.time() > deadline:
                    sys.exit("server not ready")
                time.sleep(0.2)
        run_once(base, 1)  # warm-up: caches, synthetic data
        quiet, _ = run_once(base, args.rounds)
        duration = int(quiet * 1.5) + 5
        # The load generator stands for remote clients: SCHED_IDLE, so that it
        # does not take the cores from training on this shared machine.
        nice = ["chrt", "--idle", "0"] if args.client_idle else []
        wrks = [subprocess.Popen(nice + ["wrk", "-t1", f"-c{args.connections}", f"-d{duration}s", "--latency",
                                  "-H", f"Authorization: Bearer {TOKEN}", f"{base}{path}"], stdout=subprocess.PIPE, text=True)
                for path in ("/api/state", "/metrics")]
        time.sleep(1)
        loaded, _ = run_once(base, args.rounds)
        results = {}
        for path, w in zip(("/api/state", "/metrics"), wrks):
            out, _ = w.communicate()
            rps, p99 = parse_wrk(out)
            results[path] = {"requests_per_s": rps, "p99_ms": p99}
        print(json.dumps({"rounds": args.rounds, "connections_per_endpoint": args.connections,
                          "client_idle": bool(args.client_idle),
                          "run_seconds_no_load": round(quiet, 2), "run_seconds_under_load": round(loaded, 2),
                          "slowdown": round(loaded / quiet - 1, 3), "endpoints": results}, indent=1))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
