#!/usr/bin/env python3
"""The MLflow component's server arguments and probes, run against the real
MLflow 3.17.2 server (the pod runner cannot run MLflow's image: none can be
obtained here). From the rendered prod overlay it takes the mlflow
container's command, args, env and probes and the coordinator's
MLFLOW_TRACKING_URI, starts the server on 127.0.0.1 with only the listen
address and storage paths replaced, and checks:

- the startup/readiness probe (path and headers as rendered) answers 200;
- the coordinator's tracking calls (the URI's path prefix, its Host) work;
- the Ingress host is allowed, and any other Host header is refused (403).

  mlflow_args.py --mlflow PATH/TO/bin/mlflow --workdir DIR
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def free_port() -> int:
    """A free loopback port below the ephemeral range (where outgoing
    connections could take it before the server binds it)."""
    import random

    for port in random.sample(range(10_000, 32_000), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit("no free loopback port between 10000 and 31999")


def call(url: str, host: str, method: str = "GET", body: dict | None = None, headers: dict | None = None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    h = {"Host": host, **(headers or {})}
    if data is not None:
        h["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mlflow", required=True)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    rendered = subprocess.run(["kubectl", "kustomize", os.path.join(REPO, "k8s", "overlays", "prod")],
                              capture_output=True, text=True, check=True).stdout
    objects = [o for o in yaml.safe_load_all(rendered) if o]
    sts = {o["metadata"]["name"]: o for o in objects if o["kind"] == "StatefulSet"}
    mlflow = sts["mlflow"]["spec"]["template"]["spec"]["containers"][0]
    coordinator = sts["coordinator"]["spec"]["template"]["spec"]["containers"][0]
    tracking = next(e["value"] for e in coordinator["env"] if e["name"] == "MLFLOW_TRACKING_URI")
    ingress_host = next(r["host"] for o in objects if o["kind"] == "Ingress" and o["metadata"]["name"] == "mlflow"
                        for r in o["spec"]["rules"])
    assert mlflow["command"] == ["mlflow"] and mlflow["args"][0] == "server", mlflow["args"]

    port = free_port()
    work = os.path.abspath(args.workdir)
    os.makedirs(work, exist_ok=True)
    replaced = {
        "--host": "127.0.0.1",
        "--port": str(port),
        "--backend-store-uri": f"sqlite:///{work}/mlflow.db",
        "--artifacts-destination": f"{work}/artifacts",
    }
    server_args = []
    for a in mlflow["args"][1:]:
        key = a.split("=", 1)[0]
        server_args.append(f"{key}={replaced[key]}" if key in replaced else a)
    env = dict(os.environ)
    env.update({e["name"]: e["value"] for e in mlflow.get("env") or [] if "value" in e})
    env["HOME"] = work
    log = open(os.path.join(work, "mlflow.log"), "w")
    server = subprocess.Popen([args.mlflow, "server", *server_args], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    report = {}
    try:
        probe = mlflow["readinessProbe"]["httpGet"]
        headers = {h["name"]: h["value"] for h in probe.get("httpHeaders") or []}
        probe_host = headers.pop("Host", f"10.244.0.99:{port}")
        started = time.time()
        while call(f"http://127.0.0.1:{port}{probe['path']}", probe_host, headers=headers) != 200:
            if server.poll() is not None or time.time() - started > 90:
                raise SystemExit(f"the MLflow server never answered its readiness probe {probe['path']}:\n"
                                 + open(os.path.join(work, "mlflow.log")).read()[-3000:])
            time.sleep(0.5)
        report["ready_seconds"] = round(time.time() - started, 1)

        uri = urllib.parse.urlparse(tracking)
        prefix = uri.path.rstrip("/")
        api = f"http://127.0.0.1:{port}{prefix}/api/2.0/mlflow"
        # The coordinator, as it calls MLflow inside the cluster.
        status = call(f"{api}/experiments/create", uri.netloc, "POST", {"name": "manifest-check"})
        assert status == 200, f"the coordinator's tracking call ({tracking}) was answered {status}"
        status = call(f"{api}/experiments/get-by-name?experiment_name=manifest-check", uri.netloc)
        assert status == 200, f"get-by-name through {tracking}: {status}"
        # A browser through the ingress, and a rebinding attempt.
        assert call(f"{api}/experiments/get-by-name?experiment_name=manifest-check", ingress_host) == 200
        status = call(f"{api}/experiments/get-by-name?experiment_name=manifest-check", "evil.example")
        assert status == 403, f"a foreign Host header was answered {status}, not 403"
        report.update(tracking_uri=tracking, ingress_host=ingress_host)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    sys.exit(main())
