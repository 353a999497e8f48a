"""Unit tests of the pod runner's Kubernetes semantics (no root, no
containers): label selectors, $(VAR) expansion, env from every source,
NetworkPolicy evaluation and Service naming. Run by tests/kubernetes.rs
(`python -m unittest test_podrunner`)."""

import base64
import unittest

import yaml

import podrunner
from podrunner import Cluster, Pod, expand, intersect, selector_matches

OBJECTS = """
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: mon}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm, namespace: app}
data: {mode: fast, level: "3"}
---
apiVersion: v1
kind: Secret
metadata: {name: sec, namespace: app}
data: {token: %s}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: app}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-to-db, namespace: app}
spec:
  podSelector: {matchLabels: {role: web}}
  policyTypes: [Egress]
  egress:
    - to: [{podSelector: {matchLabels: {role: db}}}]
      ports: [{protocol: TCP, port: db}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-accepts, namespace: app}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
    - from:
        - podSelector: {matchLabels: {role: web}}
        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: mon}}
      ports: [{port: 5432}, {port: 9187}]
""" % base64.b64encode(b"s3cret").decode()

STS = {"kind": "StatefulSet", "metadata": {"name": "x"}, "spec": {"serviceName": "x"}}


def pod(name, ns, labels, ports=(), index=0):
    spec = {"containers": [{"name": "c", "ports": [{"name": n, "containerPort": p} for n, p in ports]}]}
    return Pod(name, ns, labels, spec, STS, f"10.244.0.{20 + index}", index)


class Semantics(unittest.TestCase):
    def test_label_selectors(self):
        self.assertTrue(selector_matches({}, {"a": "1"}))
        self.assertFalse(selector_matches(None, {"a": "1"}))
        sel = {"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "In", "values": ["x", "y"]},
                                                                 {"key": "c", "operator": "DoesNotExist"}]}
        self.assertTrue(selector_matches(sel, {"a": "1", "b": "y"}))
        self.assertFalse(selector_matches(sel, {"a": "1", "b": "z"}))
        self.assertFalse(selector_matches(sel, {"a": "1", "b": "x", "c": ""}))

    def test_expansion(self):
        env = {"A": "1", "B": "two"}
        self.assertEqual(expand("$(A)-$(B)-$(C)-$$(A)", env), "1-two-$(C)-$(A)")

    def test_env_from_every_source(self):
        c = Cluster(OBJECTS, "/nonexistent")
        p = pod("web-0", "app", {"role": "web"})
        spec = {
            "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
            "env": [
                {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "ROLE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['role']"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "mode"}}},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
                {"name": "URL", "value": "http://$(NAME):$(CM_level)"},
            ],
        }
        env = c._env(p, spec)
        self.assertEqual(env["CM_mode"], "fast")
        self.assertEqual((env["NAME"], env["ROLE"], env["IP"]), ("web-0", "web", "10.244.0.20"))
        self.assertEqual((env["MODE"], env["TOKEN"], env["URL"]), ("fast", "s3cret", "http://web-0:3"))
        with self.assertRaises(podrunner.RunnerError):
            c._env(p, {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}]})

    def test_network_policies(self):
        c = Cluster(OBJECTS, "/nonexistent")
        web = pod("web-0", "app", {"role": "web"}, index=0)
        db = pod("db-0", "app", {"role": "db"}, ports=[("db", 5432), ("metrics", 9187)], index=1)
        other = pod("other-0", "app", {"role": "other"}, ports=[("db", 5432)], index=2)
        scraper = pod("prom-0", "mon", {"app": "prom"}, index=3)
        allowed = lambda s, d: intersect(c._egress(s, d), c._ingress(s, d))
        # Egress names the db port; the db's ingress allows 5432 and 9187: only 5432 both ways.
        self.assertEqual(allowed(web, db), {("TCP", 5432)})
        # The default deny in app isolates everything else, both directions.
        self.assertEqual(allowed(db, web), set())
        self.assertEqual(allowed(web, other), set())
        # mon has no policies (egress open); db admits namespace mon on both ports.
        self.assertEqual(allowed(scraper, db), {("TCP", 5432), ("TCP", 9187)})
        self.assertEqual(allowed(scraper, web), set())

    def test_intersection(self):
        self.assertEqual(intersect(None, None), {("*", None)})
        self.assertEqual(intersect({("*", None)}, {("TCP", 80)}), {("TCP", 80)})
        self.assertEqual(intersect({("TCP", None)}, {("TCP", 80), ("UDP", 53)}), {("TCP", 80)})
        self.assertEqual(intersect({("TCP", 81)}, {("TCP", 80)}), set())

    def test_hosts_name_services_and_statefulset_pods(self):
        objs = yaml.safe_dump_all([
            {"kind": "Service", "apiVersion": "v1", "metadata": {"name": "api", "namespace": "app"},
             "spec": {"selector": {"role": "web"}, "ports": [{"port": 80}]}},
            {"kind": "Service", "apiVersion": "v1", "metadata": {"name": "x", "namespace": "app"},
             "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": {"role": "web"}, "ports": [{"port": 80}]}},
        ])
        c = Cluster(objs, "/nonexistent")
        web = pod("x-0", "app", {"role": "web"})
        web.containers = [podrunner.Container({"name": "c"}, running=True)]
        c.pods = {"x-0": web}
        c.services = {("app", "api"): c.objects[0], ("app", "x"): c.objects[1]}
        c.cluster_ips = {("app", "api"): "10.96.0.10"}
        hosts = c._hosts_text(web)
        self.assertIn("10.96.0.10\tapi.app.svc.cluster.local api.app.svc api.app api", hosts)
        self.assertIn("10.244.0.20\tx.app.svc.cluster.local", hosts)
        self.assertIn("x-0.x.app.svc.cluster.local", hosts)
        # Not ready and not published: a ClusterIP Service has no endpoint.
        self.assertEqual(c._endpoints(c.objects[0]), [])
        self.assertEqual([p.name for p in c._endpoints(c.objects[1])], ["x-0"])


if __name__ == "__main__":
    unittest.main()
