#!/usr/bin/env python3
"""Render every overlay and check it the strongest way short of a cluster:

1. `kubectl kustomize` renders it;
2. `kubernetes-validate --strict -k 1.32.0` validates every object against
   the Kubernetes 1.32 schemas (CRDs — cert-manager, ArgoCD — are checked
   for their required fields below instead);
3. checkov (`--framework kubernetes --skip-download`) lints it, with the
   commented skip list in k8s/checkov.yaml and zero failures;
4. assertions on the rendered objects (see `check_overlay`);
5. promtool on the Prometheus config, rules, rule tests and every Grafana
   dashboard query.

  check_manifests.py --medfed target/debug/medfed --tools VENV/bin --workdir DIR

Prints one JSON line with the counts; exits non-zero naming every problem.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dashboards  # noqa: E402
from podrunner import decoded  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
K8S = os.path.join(REPO, "k8s")
OVERLAYS = ["local-test", "tls", "prod", "site"]
KUBERNETES_VERSION = "1.32.0"
PLACEHOLDER_IMAGE = "medfed"
# Secrets an overlay expects to exist before it is applied (created by the
# operator or another system), per overlay; everything else must resolve.
EXTERNAL_SECRETS = {
    "prod": {"medfed-cookie", "medfed-api-token", "medfed-scrape-token", "grafana-admin",
             "medfed-cluster-ca-key-pair", "medfed-ingress-tls"},
    "site": {"medfed-cookie", "medfed-scrape-token", "hospital-tls"},
}
LOOPBACK = re.compile(r"^(127\.|localhost|\[::1\]|::1)")

problems: list[str] = []


def problem(overlay: str, text: str):
    problems.append(f"{overlay}: {text}")


def run(*args: str, cwd: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(list(args), capture_output=True, text=True, cwd=cwd)
    if check and p.returncode != 0:
        raise SystemExit(f"`{' '.join(args)}` failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def pod_specs(objects: list[dict]):
    for o in objects:
        if o.get("kind") in ("StatefulSet", "Deployment", "DaemonSet"):
            yield o, o["spec"]["template"]


def check_overlay(name: str, objects: list[dict]):
    by_kind: dict[str, dict[tuple, dict]] = {}
    for o in objects:
        key = (o["metadata"].get("namespace", ""), o["metadata"]["name"])
        by_kind.setdefault(o["kind"], {})[key] = o
    namespaces = {o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"}
    external = EXTERNAL_SECRETS.get(name, set())
    certificate_secrets = {c["spec"]["secretName"] for c in by_kind.get("Certificate", {}).values()}

    for o in objects:
        if o["kind"] not in ("Namespace",) and o["metadata"].get("namespace") not in namespaces:
            problem(name, f"{o['kind']} {o['metadata']['name']} is not in the overlay's Namespace {sorted(namespaces)}")

    def resolves(kind: str, ref: str, ns: str, what: str, optional: bool = False):
        if (ns, ref) in by_kind.get(kind, {}) or optional:
            return
        if kind == "Secret" and (ref in external or ref in certificate_secrets):
            return
        problem(name, f"{what} refers to {kind} {ref}, which the overlay does not define")

    for workload, template in pod_specs(objects):
        ns = workload["metadata"]["namespace"]
        wname = f"{workload['kind']} {workload['metadata']['name']}"
        spec = template["spec"]
        psc = spec.get("securityContext") or {}
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates") or []}
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for v in volumes.values():
            if "configMap" in v:
                resolves("ConfigMap", v["configMap"]["name"], ns, f"{wname} volume {v['name']}", v["configMap"].get("optional", False))
            if "secret" in v:
                resolves("Secret", v["secret"]["secretName"], ns, f"{wname} volume {v['name']}", v["secret"].get("optional", False))
            if "persistentVolumeClaim" in v:
                resolves("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"], ns, f"{wname} volume {v['name']}")
            if "emptyDir" in v and name != "local-test" and v["name"] not in ("tmp", "cache"):
                problem(name, f"{wname}: volume {v['name']} is an emptyDir (only local-test may use emptyDir for data)")
        if not psc.get("runAsNonRoot") or (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problem(name, f"{wname}: the pod must set runAsNonRoot and seccompProfile RuntimeDefault")
        if spec.get("automountServiceAccountToken") is not False:
            problem(name, f"{wname}: automountServiceAccountToken must be false (no pod here talks to the API)")
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            cname = f"{wname} container {c['name']}"
            image = c.get("image", "")
            if image == PLACEHOLDER_IMAGE or image.startswith(PLACEHOLDER_IMAGE + ":"):
                problem(name, f"{cname}: image {image!r} was not rewritten by the overlay's images:")
            if name == "prod" and "medfed" in image.split("/")[-1] and "@sha256:" not in image:
                problem(name, f"{cname}: prod pins medfed's image by digest, got {image}")
            sc = c.get("securityContext") or {}
            if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
                    and (sc.get("capabilities") or {}).get("drop") == ["ALL"] and sc.get("runAsNonRoot")):
                problem(name, f"{cname}: securityContext must set readOnlyRootFilesystem, runAsNonRoot, allowPrivilegeEscalation false and drop ALL")
            res = c.get("resources") or {}
            if not (res.get("requests") and res.get("limits")):
                problem(name, f"{cname}: needs resource requests and limits")
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in c:
                    problem(name, f"{cname}: has no {probe}")
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                handler = (c.get(probe) or {}).get("httpGet") or (c.get(probe) or {}).get("tcpSocket")
                if handler and isinstance(handler["port"], str) and handler["port"] not in ports:
                    problem(name, f"{cname}: {probe} uses port {handler['port']!r}, which the container does not name")
            args = (c.get("command") or []) + (c.get("args") or [])
            for i, arg in enumerate(args):
                m = re.match(r"--(listen|http)(?:=(.*))?$", arg)
                value = m and (m.group(2) if m.group(2) is not None else (args[i + 1] if i + 1 < len(args) else ""))
                if m and LOOPBACK.match(value):
                    problem(name, f"{cname}: --{m.group(1)} {value} listens on loopback: probes and peers reach the pod IP")
            for e in c.get("env") or []:
                vf = e.get("valueFrom") or {}
                if "secretKeyRef" in vf:
                    problem(name, f"{cname}: env {e['name']} comes from a Secret: mount Secrets as files")
                if "configMapKeyRef" in vf:
                    resolves("ConfigMap", vf["configMapKeyRef"]["name"], ns, f"{cname} env {e['name']}")
            for src in c.get("envFrom") or []:
                if "secretRef" in src:
                    problem(name, f"{cname}: envFrom a Secret: mount Secrets as files")
            for m in c.get("volumeMounts") or []:
                if m["name"] not in volumes and m["name"] not in claims:
                    problem(name, f"{cname}: volumeMount {m['name']} has no volume")
            if workload["metadata"]["name"].startswith(("coordinator", "hospital")):
                state = [m for m in c.get("volumeMounts") or [] if m["mountPath"] == "/var/lib/medfed"]
                if not state or state[0]["name"] not in claims:
                    problem(name, f"{cname}: /var/lib/medfed (store, ledgers) must be a PersistentVolumeClaim")

    for (ns, sname), svc in by_kind.get("Service", {}).items():
        selector = svc["spec"].get("selector") or {}
        selected = [(w, t) for w, t in pod_specs(objects) if w["metadata"]["namespace"] == ns
                    and all((t["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())]
        if not selected:
            problem(name, f"Service {sname} selects no pod template ({selector})")
        for port in svc["spec"].get("ports") or []:
            target = port.get("targetPort")
            if isinstance(target, str):
                for w, t in selected:
                    named = {p.get("name") for c in t["spec"]["containers"] for p in c.get("ports") or []}
                    if target not in named:
                        problem(name, f"Service {sname}: targetPort {target!r} is not a port of {w['metadata']['name']}")

    for ns in namespaces:
        if not any(p["spec"].get("podSelector") == {} and set(p["spec"].get("policyTypes") or []) == {"Ingress", "Egress"}
                   for (pns, _), p in by_kind.get("NetworkPolicy", {}).items() if pns == ns):
            problem(name, f"namespace {ns} has no default-deny NetworkPolicy")
        labels = next(o for o in objects if o["kind"] == "Namespace" and o["metadata"]["name"] == ns)["metadata"].get("labels") or {}
        if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
            problem(name, f"namespace {ns} does not enforce the restricted Pod Security Standard")

    for (ns, iname), ing in by_kind.get("Ingress", {}).items():
        for rule in ing["spec"].get("rules") or []:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                svc = by_kind.get("Service", {}).get((ns, backend["name"]))
                if svc is None:
                    problem(name, f"Ingress {iname}: {path['path']} goes to Service {backend['name']}, which does not exist")
                elif backend["port"].get("name") not in {p.get("name") for p in svc["spec"]["ports"]}:
                    problem(name, f"Ingress {iname}: Service {backend['name']} has no port {backend['port']}")

    check_config_and_certificates(name, by_kind)


def check_config_and_certificates(name: str, by_kind: dict):
    """No loopback listeners in the config, and the coordinator's
    certificate carries the host hospitals dial."""
    import tomllib

    dialed = set()
    for (ns, cname), cm in by_kind.get("ConfigMap", {}).items():
        for key, text in decoded(cm).items():
            if not key.endswith(".toml"):
                continue
            config = tomllib.loads(text.decode())
            web, cluster = config.get("web", {}), config.get("cluster", {})
            for k, v in (("web.http", web.get("http")), ("cluster.listen", cluster.get("listen"))):
                if v and LOOPBACK.match(v):
                    problem(name, f"ConfigMap {cname}: {k} = {v!r} listens on loopback")
            if cluster.get("coordinator"):
                dialed.add(cluster["coordinator"].rsplit(":", 1)[0])
    for (ns, sname), secret in by_kind.get("Secret", {}).items():
        if sname.startswith("coordinator-tls"):
            pem = decoded(secret)["tls.crt"]
            text = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName"], input=pem, capture_output=True).stdout.decode()
            sans = set(re.findall(r"DNS:([^,\s]+)", text))
            for host in dialed:
                if host not in sans:
                    problem(name, f"Secret {sname}: the coordinator's certificate does not name {host!r}, which hospitals dial (SANs: {sorted(sans)})")
    for (ns, cname), cert in by_kind.get("Certificate", {}).items():
        spec = cert["spec"]
        for field in ("secretName", "issuerRef"):
            if field not in spec:
                problem(name, f"Certificate {cname}: no spec.{field}")
        if cname.startswith("coordinator"):
            for host in dialed:
                if host not in (spec.get("dnsNames") or []):
                    problem(name, f"Certificate {cname}: dnsNames lack {host!r}, which hospitals dial")
        elif not any(u.startswith("urn:medfed:hospital:") for u in spec.get("uris") or []):
            problem(name, f"Certificate {cname}: a hospital certificate needs a urn:medfed:hospital:NAME URI")
        issuer = spec.get("issuerRef", {}).get("name")
        if (ns, issuer) not in by_kind.get(spec.get("issuerRef", {}).get("kind", "Issuer"), {}):
            problem(name, f"Certificate {cname}: issuer {issuer} is not in the overlay")


def self_test(objects: list[dict]):
    """The checks can fail: three mistakes planted in a copy of local-test
    are each reported."""
    import copy

    broken = copy.deepcopy(objects)
    for o in broken:
        if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "hospital-1":
            c = o["spec"]["template"]["spec"]["containers"][0]
            c["args"] = [a.replace("--http=0.0.0.0:9100", "--http=127.0.0.1:9100") for a in c["args"]]
            o["spec"]["template"]["spec"]["volumes"].append({"name": "extra", "secret": {"secretName": "nowhere"}})
        if o["kind"] == "Service" and o["metadata"]["name"] == "coordinator":
            o["spec"]["ports"][0]["targetPort"] = "no-such-port"
    before = len(problems)
    check_overlay("self-test", broken)
    found = problems[before:]
    del problems[before:]
    for needle in ("--http 127.0.0.1:9100 listens on loopback", "refers to Secret nowhere", "targetPort 'no-such-port'"):
        if not any(needle in p for p in found):
            problem("self-test", f"a planted mistake was not reported: {needle} (reported: {found})")


def check_argocd(k8s: str):
    """Each Application: the fields ArgoCD requires, a path that is an
    overlay here, and the overlay's namespace as destination."""
    count = 0
    for f in sorted(os.listdir(os.path.join(k8s, "argocd"))):
        app = yaml.safe_load(open(os.path.join(k8s, "argocd", f)))
        where = f"argocd/{f}"
        count += 1
        if app.get("apiVersion") != "argoproj.io/v1alpha1" or app.get("kind") != "Application":
            problem(where, "not an argoproj.io/v1alpha1 Application")
        meta, spec = app.get("metadata") or {}, app.get("spec") or {}
        for path, value in (("metadata.name", meta.get("name")), ("metadata.namespace", meta.get("namespace")),
                            ("spec.project", spec.get("project")), ("spec.source.repoURL", (spec.get("source") or {}).get("repoURL")),
                            ("spec.source.path", (spec.get("source") or {}).get("path")),
                            ("spec.source.targetRevision", (spec.get("source") or {}).get("targetRevision")),
                            ("spec.destination.namespace", (spec.get("destination") or {}).get("namespace"))):
            if not value:
                problem(where, f"{path} is required")
        dest = spec.get("destination") or {}
        if bool(dest.get("server")) == bool(dest.get("name")):
            problem(where, "spec.destination needs exactly one of server and name")
        path = (spec.get("source") or {}).get("path", "")
        overlay = os.path.join(os.path.dirname(k8s), path)
        if not path.startswith("k8s/") or not os.path.exists(os.path.join(overlay, "kustomization.yaml")):
            problem(where, f"spec.source.path {path} is not a kustomization in this repository")
        else:
            # From git alone, as ArgoCD renders it: no generated files needed.
            rendered = run("kubectl", "kustomize", os.path.join(REPO, path)).stdout
            namespaces = {o["metadata"]["name"] for o in yaml.safe_load_all(rendered) if o and o["kind"] == "Namespace"}
            if dest.get("namespace") not in namespaces:
                problem(where, f"destination namespace {dest.get('namespace')} is not the overlay's ({sorted(namespaces)})")
    return count


def check_prometheus(workdir: str) -> int:
    """promtool: config, rules, rule unit tests; every dashboard query as a
    recording rule (Grafana's variables made concrete)."""
    comp = os.path.join(K8S, "components", "prometheus")
    for args in (["check", "config", "--syntax-only", "prometheus.yml"], ["check", "rules", "rules.yml"], ["test", "rules", "rules.test.yml"]):
        p = run("promtool", *args, cwd=comp, check=False)
        if p.returncode != 0:
            problem("prometheus", f"promtool {' '.join(args)}: {p.stdout}{p.stderr}")
    rules = [{"record": f"dashboard:{name}", "expr": expr} for name, expr in dashboards.queries()]
    path = os.path.join(workdir, "dashboard-rules.yml")
    with open(path, "w") as fh:
        yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, fh)
    p = run("promtool", "check", "rules", path, check=False)
    if p.returncode != 0:
        problem("grafana", f"a dashboard query does not parse: {p.stdout}{p.stderr}")
    return len(rules)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--medfed", required=True, help="the medfed binary (writes the tls overlay's throwaway Secrets)")
    parser.add_argument("--tools", required=True, help="bin/ of the venv with kubernetes-validate and checkov")
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    work = os.path.abspath(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    # A private copy of k8s/: the tls overlay renders from generated files.
    k8s = os.path.join(work, "k8s")
    shutil.copytree(K8S, k8s, ignore=shutil.ignore_patterns("certs", "secrets", "secrets.yaml", "ca-key.pem"))
    env = dict(os.environ, MEDFED=os.path.abspath(args.medfed))
    p = subprocess.run([os.path.join(k8s, "overlays", "tls", "generate-secrets.sh")], env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"generate-secrets.sh failed: {p.stderr}")
    # The skip list: k8s/checkov.yaml, each entry with its reason.
    skip_list = set(yaml.safe_load(open(os.path.join(K8S, "checkov.yaml")))["skip-check"])
    report = {"kubernetes_version": KUBERNETES_VERSION, "checkov_skip_list": sorted(skip_list), "overlays": {}}
    for overlay in OVERLAYS:
        rendered = run("kubectl", "kustomize", os.path.join(k8s, "overlays", overlay)).stdout
        objects = [o for o in yaml.safe_load_all(rendered) if o]
        # tls: the Secrets generate-secrets.sh wrote, applied beside the overlay.
        created = os.path.join(k8s, "overlays", overlay, "secrets.yaml")
        extra = [o for o in yaml.safe_load_all(open(created)) if o] if os.path.exists(created) else []
        out_dir = os.path.join(work, "rendered", overlay)
        os.makedirs(out_dir)
        path = os.path.join(out_dir, f"{overlay}.yaml")
        with open(path, "w") as f:
            f.write(rendered)
        v = run(os.path.join(args.tools, "kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, path, check=False)
        custom = {"Certificate", "Issuer"}
        for line in (v.stdout + v.stderr).splitlines():
            if line.startswith("INFO"):
                continue
            if line.startswith("WARN") and any(f"kind {k} with api version" in line for k in custom):
                continue  # CRDs: checked by check_config_and_certificates
            problem(overlay, f"kubernetes-validate: {line}")
        if v.returncode != 0:
            problem(overlay, f"kubernetes-validate exited {v.returncode}")
        ck = run(os.path.join(args.tools, "checkov"), "-d", out_dir, "--framework", "kubernetes", "--skip-download",
                 "-o", "json", check=False)
        try:
            result = json.loads(ck.stdout)
        except json.JSONDecodeError:
            raise SystemExit(f"checkov printed no JSON for {overlay}: {ck.stdout[:2000]}{ck.stderr[-2000:]}")
        result = result[0] if isinstance(result, list) else result
        summary = result.get("summary", {})
        failed, skipped = 0, 0
        for check in (result.get("results") or {}).get("failed_checks") or []:
            if check["check_id"] in skip_list:
                skipped += 1
            else:
                failed += 1
                problem(overlay, f"checkov {check['check_id']} ({check['check_name']}) on {check['resource']}")
        if summary.get("passed", 0) == 0:
            problem(overlay, f"checkov checked nothing in {out_dir} (a hidden directory is skipped)")
        report["overlays"][overlay] = {
            "objects": len(objects),
            "checkov": {"passed": summary.get("passed", 0), "failed": failed, "skipped": skipped},
        }
        check_overlay(overlay, objects + extra)
        if overlay == "local-test":
            self_test(objects)
    report["argocd_applications"] = check_argocd(k8s)
    report["dashboard_queries"] = check_prometheus(work)
    print(json.dumps(report), flush=True)
    if problems:
        print("\n".join(["problems:"] + problems), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
