#!/usr/bin/env python3
"""Scenarios that run the rendered overlays' pods (podrunner.py) with the
real image, each asserting what a user of the manifests relies on.

  scenarios.py --binary target/debug/medfed --workdir DIR SCENARIO

Prints one JSON line {"scenario", "seconds", ...} at the end; exits non-zero
with the reason (and the pods' state and logs) when an assertion fails.
tests/kubernetes.rs runs each scenario as a cargo test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import dashboards  # noqa: E402
import images  # noqa: E402
import podrunner  # noqa: E402
from podrunner import Cluster, render  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
NS = "medfed"
LOCAL_TEST_IMAGE = "localhost/medfed:test"
REGISTRY_IMAGE = "registry.example.org/medfed/medfed:0.1.0"


def log_records(text: str) -> list[dict]:
    """The JSON log lines of a medfed pod (MEDFED_LOG_FORMAT=json)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def messages(cluster: Cluster, pod: str) -> list[dict]:
    return [r.get("fields", {}) for r in log_records(cluster.logs(pod))]


def http(url: str, token: str | None = None, timeout: float = 5) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, OSError) as e:
        # Not listening (yet): callers that poll treat it as not ready.
        return 0, str(e)


def metric(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def can_connect(cluster: Cluster, pod: str, host: str, port: int, timeout: float = 3) -> bool:
    """A TCP connection from inside `pod`'s network namespace."""
    code = (
        "import socket,sys\n"
        f"try:\n socket.create_connection(({host!r},{port}),timeout={timeout}).close()\n"
        "except OSError:\n sys.exit(1)\n"
    )
    return cluster.in_pod(pod, sys.executable, "-c", code, timeout=timeout + 10).returncode == 0


def set_env(cluster_objects: list[dict], workload: str, container: str, name: str, value: str):
    for o in cluster_objects:
        if o.get("kind") == "StatefulSet" and o["metadata"]["name"] == workload:
            for c in o["spec"]["template"]["spec"]["containers"]:
                if c["name"] == container:
                    env = [e for e in c.get("env") or [] if e["name"] != name]
                    c["env"] = env + [{"name": name, "value": value}]
                    return
    raise AssertionError(f"no container {container} in {workload}")


def wait_run_end(cluster: Cluster, timeout: float) -> dict:
    def ended():
        for m in messages(cluster, "coordinator-0"):
            if m.get("message") == "run ended":
                return m
        return None

    return cluster.wait("the coordinator to log 'run ended'", ended, timeout, every=1.0)


def rounds_aggregated(cluster: Cluster) -> int:
    return max([m.get("round", 0) for m in messages(cluster, "coordinator-0") if m.get("message") == "round aggregated"] or [0])


class Scenario:
    def __init__(self, args):
        self.args = args
        self.workdir = os.path.abspath(args.workdir)
        self.report: dict = {"scenario": args.scenario}
        os.makedirs(self.workdir, exist_ok=True)
        os.environ.setdefault("CONTAINERS_CONF", podrunner.containers_conf(os.path.join(self.workdir, "containers.conf")))
        self.cluster: Cluster | None = None

    def images(self, extra_tags=()):
        cache = os.path.join(os.path.expanduser("~"), ".cache", "medfed", "k8s")
        images.base_image(cache)
        built = images.medfed_image(self.args.binary, REPO, self.workdir, [LOCAL_TEST_IMAGE, REGISTRY_IMAGE, *extra_tags])
        images.prometheus_image(self.workdir)
        self.report["image_bytes"] = built["size"]

    def copy_k8s(self) -> str:
        """A private copy of k8s/ (overlays that need generated files)."""
        dst = os.path.join(self.workdir, "k8s")
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(os.path.join(REPO, "k8s"), dst, ignore=shutil.ignore_patterns("certs", "secrets", "secrets.yaml", "ca-key.pem"))
        return dst

    def start(self, rendered: str, mutate=None) -> Cluster:
        # Fresh volumes: a scenario never inherits another run's store or ledgers.
        shutil.rmtree(os.path.join(self.workdir, "cluster"), ignore_errors=True)
        cluster = Cluster(rendered, os.path.join(self.workdir, "cluster"), log=lambda line: print(line, flush=True))
        if mutate:
            mutate(cluster.objects)
        self.cluster = cluster
        cluster.__enter__()
        return cluster

    def tls_overlay(self, **names) -> str:
        """A copy of the tls overlay with its Secrets generated."""
        tls = os.path.join(self.copy_k8s(), "overlays", "tls")
        env = dict(os.environ, MEDFED=self.args.binary)
        if names.get("coordinator_names"):
            env["COORDINATOR_NAMES"] = names["coordinator_names"]
        subprocess.run([os.path.join(tls, "generate-secrets.sh")], env=env, check=True, capture_output=True)
        return tls

    def api_token(self) -> str:
        return self.cluster.secret_named("medfed-api-token", "token", NS)

    def scrape_token(self) -> str:
        return self.cluster.secret_named("medfed-scrape-token", "token", NS)

    def finish(self):
        if self.cluster:
            self.cluster.__exit__(None, None, None)

    def dump(self):
        if not self.cluster:
            return
        print(self.cluster.status())
        for name in self.cluster.pods:
            print(f"----- logs of {name} (last 40 lines) -----")
            print("\n".join(self.cluster.logs(name).splitlines()[-40:]))


# -- scenarios ------------------------------------------------------------


def render_with_secrets(overlay: str) -> str:
    """The overlay, plus the Secrets its generate-secrets.sh wrote (what an
    operator applies beside it)."""
    created = os.path.join(overlay, "secrets.yaml")
    extra = open(created).read() if os.path.exists(created) else ""
    return render(overlay) + "\n---\n" + extra


def federation(s: Scenario, overlay_dir: str, label: str):
    """The overlay's whole federation runs to the end with every pod Ready;
    Services, probes, Secrets, Prometheus and NetworkPolicies all work."""
    started = time.time()
    c = s.start(render_with_secrets(overlay_dir))
    c.wait_ready(timeout=180)
    s.report["all_ready_seconds"] = round(time.time() - started, 1)
    end = wait_run_end(c, 180)
    assert end.get("outcome") == "finished", f"the run ended {end}"
    s.report["run_seconds"] = round(time.time() - started, 1)
    assert rounds_aggregated(c) == 3, f"rounds aggregated: {rounds_aggregated(c)}"
    c.wait_ready(timeout=30)  # every pod is still Ready after the run

    coordinator = c.pods["coordinator-0"].ip
    status, body = http(f"http://{coordinator}:8080/api/runs")
    assert status == 401, f"/api/runs without the token: {status}"
    status, body = http(f"http://{coordinator}:8080/api/runs", s.api_token())
    runs = json.loads(body)["runs"]
    assert status == 200 and runs and runs[0]["status"] == "finished", body

    token = s.scrape_token()
    hospital = c.pods["hospital-1-0"].ip
    status, _ = http(f"http://{hospital}:9100/metrics")
    assert status == 401, f"a hospital's /metrics without the scrape token: {status}"
    status, text = http(f"http://{hospital}:9100/metrics", token)
    assert status == 200, text
    assert metric(text, "medfed_hospital_rounds_trained_total") == 3, text
    assert metric(text, "medfed_hospital_ready") == 1, text
    if label == "tls":
        assert metric(text, 'medfed_tls_cert_expiry_seconds{certificate="node"}'), text

    prometheus(s, c)
    network_policies(s, c)
    s.report["seconds"] = round(time.time() - started, 1)


def prometheus(s: Scenario, c: Cluster):
    """Prometheus (in its pod) scrapes the coordinator and every hospital
    through Services and NetworkPolicies; every dashboard query runs."""
    base = f"http://{c.pods['prometheus-0'].ip}:9090"

    def query(q: str) -> list:
        status, body = http(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': q})}")
        assert status == 200, f"{q}: {status} {body}"
        reply = json.loads(body)
        assert reply["status"] == "success", f"{q}: {body}"
        return reply["data"]["result"]

    def all_up():
        up = query("up")
        return len(up) == 4 and all(r["value"][1] == "1" for r in up)

    c.wait("Prometheus to scrape the coordinator and 3 hospitals (up == 1)", all_up, 90, every=2)
    trained = query("medfed_hospital_rounds_trained_total")
    assert len(trained) == 3 and all(r["value"][1] == "3" for r in trained), trained
    for _, expr in dashboards.queries():
        query(expr)
    s.report["dashboard_queries"] = len(dashboards.queries())
    # And they query series that exist: every medfed_* name a panel uses is
    # in Prometheus, but for those this overlay cannot produce.
    status, body = http(f"{base}/api/v1/label/__name__/values")
    assert status == 200, body
    present = set(json.loads(body)["data"])
    missing = sorted(dashboards.metric_names() - present - CONDITIONAL_SERIES)
    assert not missing, f"dashboard panels query series nobody exports: {missing}"


# Series the dashboards chart that a plaintext, DP-off federation without
# MLflow never exports (each is checked where it exists: tests/cluster.rs,
# tests/cluster_security.rs, tests/serve_api.rs, tests/mlflow_tracking.rs).
CONDITIONAL_SERIES = {
    "medfed_hospital_epsilon_spent", "medfed_hospital_epsilon_budget",  # DP on
    "medfed_privacy_epsilon_spent", "medfed_privacy_epsilon_budget",  # DP on
    "medfed_tls_cert_expiry_seconds",  # mutual TLS
}


def network_policies(s: Scenario, c: Cluster):
    """Hospitals reach only the coordinator's cluster port."""
    coordinator_service = c.service_ip("coordinator", NS)
    assert can_connect(c, "hospital-1-0", coordinator_service, 7400), "a hospital cannot reach the coordinator's cluster port"
    blocked = {
        "another hospital's port": (c.pods["hospital-2-0"].ip, 9100),
        "the coordinator's http port": (coordinator_service, 8080),
        "Prometheus": (c.pods["prometheus-0"].ip, 9090),
    }
    for what, (host, port) in blocked.items():
        assert not can_connect(c, "hospital-1-0", host, port), f"hospital-1 reached {what} ({host}:{port})"
    # The same ports answer from the node: the policy, not a closed port, blocks them.
    assert http(f"http://{c.pods['hospital-2-0'].ip}:9100/healthz")[0] == 200


# Long enough a run to delete a pod in the middle of it: rounds of a few
# hundred milliseconds (more local epochs), many of them.
ROUNDS = 200


def slow_run(rounds: int, dp: bool = False):
    def mutate(objs):
        for workload, container in (("coordinator", "coordinator"), ("hospital-1", "hospital"), ("hospital-2", "hospital"), ("hospital-3", "hospital")):
            # Hospitals calibrate their noise for the rounds their config says.
            set_env(objs, workload, container, "MEDFED_RUN__ROUNDS", str(rounds))
            set_env(objs, workload, container, "MEDFED_TASKS__BREAST_CANCER__TRAINING__LOCAL_EPOCHS", "60")
            if dp:
                set_env(objs, workload, container, "MEDFED_PRIVACY__MODE", "dp-sgd")
                set_env(objs, workload, container, "MEDFED_PRIVACY__EPSILON", "8")

    return mutate


def coordinator_restart(s: Scenario):
    """The coordinator pod deleted mid-run is re-created on its volume and
    resumes the same run, to the end."""
    started = time.time()
    c = s.start(render(os.path.join(REPO, "k8s", "overlays", "local-test")),
                mutate=slow_run(ROUNDS))
    c.wait_ready(timeout=180)
    c.wait("round 3 to be aggregated", lambda: rounds_aggregated(c) >= 3, 120, every=0.5)
    before = rounds_aggregated(c)
    deleted_at = time.time()
    c.delete_pod("coordinator-0")
    c.wait_ready(["coordinator-0"], timeout=120)
    end = wait_run_end(c, 240)
    assert end.get("outcome") == "finished", end
    resumed = [m for m in messages(c, "coordinator-0") if str(m.get("message", "")).startswith("resuming the interrupted run")]
    assert resumed, "the new coordinator pod did not resume the run"
    assert before < ROUNDS and resumed[-1]["committed"] >= 1, resumed
    ids = {m.get("run") for m in messages(c, "coordinator-0") if m.get("message") in ("run ended",) or m.get("run")}
    status, body = http(f"http://{c.pods['coordinator-0'].ip}:8080/api/runs", s.api_token())
    runs = json.loads(body)["runs"]
    assert len(runs) == 1 and runs[0]["status"] == "finished", f"one run, resumed and finished: {body}"
    assert runs[0]["id"] in ids, (runs, ids)
    s.report.update(
        rounds_before_delete=before,
        resumed_at_round=resumed[-1]["committed"] + 1,
        recovery_seconds=round(time.time() - deleted_at, 1),
        seconds=round(time.time() - started, 1),
    )


def ledger_entries(directory: str) -> list:
    """The entries of the one ledger file in a hospital's ledger directory."""
    files = [f for f in os.listdir(directory) if f.endswith(".json")]
    assert len(files) == 1, f"expected one ledger in {directory}: {files}"
    with open(os.path.join(directory, files[0])) as f:
        return json.load(f)["entries"]


def hospital_restart(s: Scenario):
    """A hospital pod deleted mid-run is replaced, rejoins and the run ends;
    its privacy ledger, on its volume, survives the restart."""
    started = time.time()

    c = s.start(render(os.path.join(REPO, "k8s", "overlays", "local-test")), mutate=slow_run(ROUNDS, dp=True))
    c.wait_ready(timeout=180)
    c.wait("round 3 to be aggregated", lambda: rounds_aggregated(c) >= 3, 120, every=0.5)
    token = s.scrape_token()
    old_ip = c.pods["hospital-2-0"].ip
    spent_before = metric(http(f"http://{old_ip}:9100/metrics", token)[1], "medfed_hospital_epsilon_spent")
    assert spent_before and spent_before > 0, spent_before
    ledger_dir = os.path.join(c.workdir, "pvc", NS, "state-hospital-2-0", "ledgers")
    entries_before = ledger_entries(ledger_dir)
    deleted_at = time.time()
    c.delete_pod("hospital-2-0")
    ip = c.pods["hospital-2-0"].ip
    assert ip != old_ip, "a re-created pod gets a new IP"

    # The new pod opens its ledger on its volume: once it reports a budget,
    # its ledger still holds every release made before the restart (it
    # appended to it; a forgotten ledger would start a new list), and what
    # it reports spent is at least what was spent before.
    def opened():
        status, text = http(f"http://{ip}:9100/metrics", token, timeout=2)
        return status == 200 and (metric(text, "medfed_hospital_epsilon_budget") or 0) > 0 and text

    text = c.wait("the new hospital-2 pod to open its ledger", opened, 60, every=0.1)
    spent_at_start = metric(text, "medfed_hospital_epsilon_spent")
    assert spent_at_start >= spent_before, f"the ledger was forgotten: {spent_at_start} < {spent_before}"
    entries_after = ledger_entries(ledger_dir)
    assert entries_after[: len(entries_before)] == entries_before, "the ledger file was replaced, not appended to"
    c.wait_ready(["hospital-2-0"], timeout=120)
    end = wait_run_end(c, 300)
    assert end.get("outcome") == "finished", end
    status, text = http(f"http://{ip}:9100/metrics", token)
    # The new pod trained again (it rejoined), and charged its ledger for it.
    assert metric(text, "medfed_hospital_updates_sent_total") >= 1, text
    assert metric(text, "medfed_hospital_ledger_writes_total") >= 1, text
    s.report.update(
        epsilon_before_delete=spent_before,
        epsilon_at_restart=spent_at_start,
        ledger_entries_before_delete=len(entries_before),
        rejoin_seconds=round(time.time() - deleted_at, 1),
        seconds=round(time.time() - started, 1),
    )


def loopback_http(s: Scenario):
    """Negative: a hospital whose --http binds 127.0.0.1 never gets Ready
    (probes come from the node to the pod IP)."""
    started = time.time()

    def mutate(objs):
        for o in objs:
            if o.get("kind") == "StatefulSet" and o["metadata"]["name"] == "hospital-1":
                c = o["spec"]["template"]["spec"]["containers"][0]
                c["args"] = [a.replace("--http=0.0.0.0:9100", "--http=127.0.0.1:9100") for a in c["args"]]

    c = s.start(render(os.path.join(REPO, "k8s", "overlays", "local-test")), mutate=mutate)
    c.wait_ready(["coordinator-0", "hospital-2-0", "hospital-3-0"], timeout=180)
    deadline = time.time() + 20
    while time.time() < deadline:
        assert not c.pods["hospital-1-0"].ready, "a loopback-bound hospital became Ready"
        time.sleep(0.5)
    error = c.pods["hospital-1-0"].containers[0].last_probe_error
    assert "refused" in error.lower(), f"expected the probe to be refused at the pod IP, got {error!r}"
    s.report.update(probe_error=error, seconds=round(time.time() - started, 1))


def cert_without_service_name(s: Scenario):
    """Negative: a coordinator certificate without the Service name that
    hospitals dial is refused by every hospital; none gets Ready."""
    started = time.time()
    # The coordinator's certificate lacks "coordinator" (what hospitals dial).
    tls = s.tls_overlay(coordinator_names="coordinator.medfed.svc.cluster.local")
    c = s.start(render_with_secrets(tls))
    c.wait_ready(["coordinator-0", "prometheus-0"], timeout=180)
    refused = 'certificate not valid for name "coordinator"'
    hospitals = ("hospital-1-0", "hospital-2-0", "hospital-3-0")
    c.wait("every hospital to refuse the coordinator's certificate",
           lambda: all(refused in c.logs(h) for h in hospitals), 90, every=1)
    deadline = time.time() + 10
    while time.time() < deadline:
        assert not any(c.pods[h].ready for h in hospitals), "a hospital got Ready"
        time.sleep(0.5)
    # The refusal is fatal (the pod restarts with backoff, as CrashLoopBackOff).
    assert all(c.pods[h].containers[0].restarts >= 1 for h in hospitals), c.status()
    assert not [m for m in messages(c, "coordinator-0") if m.get("message") == "hospital joined"]
    line = next(l for l in c.logs("hospital-1-0").splitlines() if refused in l)
    s.report.update(hospital_error=line[:300], seconds=round(time.time() - started, 1))


SCENARIOS = {
    "local-test": lambda s: federation(s, os.path.join(REPO, "k8s", "overlays", "local-test"), "local-test"),
    "tls": None,  # below: needs generated Secrets
    "coordinator-restart": coordinator_restart,
    "hospital-restart": hospital_restart,
    "loopback-http": loopback_http,
    "cert-without-service-name": cert_without_service_name,
}


def tls_federation(s: Scenario):
    federation(s, s.tls_overlay(), "tls")


SCENARIOS["tls"] = tls_federation


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    args = parser.parse_args()
    args.binary = os.path.abspath(args.binary)
    s = Scenario(args)
    try:
        s.images()
        SCENARIOS[args.scenario](s)
    except BaseException:
        s.dump()
        s.finish()
        raise
    s.finish()
    print(json.dumps(s.report), flush=True)


if __name__ == "__main__":
    main()
