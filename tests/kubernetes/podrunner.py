"""A pod runner for rendered Kubernetes manifests, without a Kubernetes.

No API server can run on these machines, so the tests run the pods of a
rendered overlay the way a kubelet and kube-proxy would, with the real
image and podman (runc):

- each pod gets its own network namespace on a bridge, and a stable IP;
- ClusterIP Services are iptables DNAT rules to the *Ready* endpoints only
  (headless Services and StatefulSet pod names are /etc/hosts entries, kept
  up to date as endpoints change; the kubelet manages /etc/hosts too);
- NetworkPolicies (podSelector, namespaceSelector, ipBlock, ports by number
  or name) become iptables filter rules on the bridge: default allow, and
  once a pod is selected for a direction, only what a policy allows;
- env from literals, ConfigMaps, Secrets and the downward API, with $(VAR)
  expansion in env, command and args;
- ConfigMap, Secret, emptyDir and PVC volumes (PVCs persist across pod
  re-creation), with their modes, subPath, and fsGroup ownership;
- the securityContext (runAsUser/Group, runAsNonRoot checked against the
  image, fsGroup, readOnlyRootFilesystem, capabilities, no_new_privs,
  seccomp);
- startup, liveness and readiness probes (httpGet, tcpSocket, exec) run
  from the node against the pod IP; failed liveness and exits restart the
  container; StatefulSet pods deleted are re-created under the same name on
  the same volumes.

Not simulated (said so in the README): scheduling and resource limits,
image pulls (images must exist locally), DNS servers (names come from
/etc/hosts), Deployments' rolling updates. Anything else a manifest asks
for that this runner cannot do is an error, not silently ignored.

Needs root (network namespaces, iptables). One runner at a time per
machine (a lock file).
"""

from __future__ import annotations

import base64
import copy
import fcntl
import ipaddress
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import yaml

BRIDGE = "mfk8s0"
POD_NET = ipaddress.ip_network("10.244.0.0/24")
GATEWAY = "10.244.0.1"
SERVICE_NET = ipaddress.ip_network("10.96.0.0/24")
NAT_CHAIN = "MEDFED-SERVICES"
FILTER_CHAIN = "MEDFED-POLICIES"
NETNS_PREFIX = "mfp-"
VETH_PREFIX = "mfv"
LABEL = "medfed.podrunner"
LOCK_FILE = "/run/lock/medfed-podrunner.lock"
NAMESPACED_DEFAULT = "default"


class RunnerError(Exception):
    """Something a manifest asks for that the runner cannot do, or a pod
    that cannot start: worded for the test log."""


def sh(*args: str, check: bool = True, timeout: float | None = 120, input: bytes | None = None) -> str:
    p = subprocess.run(list(args), capture_output=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise RunnerError(
            f"`{' '.join(args)}` failed ({p.returncode}): {p.stderr.decode(errors='replace').strip()}"
        )
    return p.stdout.decode(errors="replace")


def selector_matches(selector: dict | None, labels: dict) -> bool:
    """A LabelSelector (matchLabels, matchExpressions); {} matches all."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def expand(text: str, env: dict) -> str:
    """Kubernetes' $(VAR) expansion ($$ escapes; unknown names stay)."""

    def sub(m: re.Match) -> str:
        if m.group(0).startswith("$$"):
            return m.group(0)[1:]
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$\([A-Za-z_][A-Za-z0-9_]*\)|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, text)


@dataclass
class Container:
    spec: dict
    podman_name: str = ""
    instance: int = 0
    restarts: int = 0
    started_at: float = 0.0
    started: bool = False  # startup probe passed (or none)
    ready: bool = False
    running: bool = False
    next_start: float = 0.0
    probe_due: dict = field(default_factory=dict)
    probe_fails: dict = field(default_factory=dict)
    probe_passes: dict = field(default_factory=dict)
    last_probe_error: str = ""

    @property
    def name(self) -> str:
        return self.spec["name"]


@dataclass
class Pod:
    name: str
    namespace: str
    labels: dict
    spec: dict
    owner: dict
    ip: str
    index: int
    instance: int = 0
    containers: list = field(default_factory=list)
    deleted: bool = False
    error: str = ""
    volumes: dict = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return bool(self.containers) and all(c.ready for c in self.containers)

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}{self.index}"

    @property
    def veth(self) -> str:
        return f"{VETH_PREFIX}{self.index}"

    def port_named(self, name) -> int | None:
        if isinstance(name, int) or (isinstance(name, str) and name.isdigit()):
            return int(name)
        for c in self.spec["containers"]:
            for p in c.get("ports") or []:
                if p.get("name") == name:
                    return int(p["containerPort"])
        return None


class Cluster:
    """The pods of one rendered overlay, run until `stop()`."""

    def __init__(self, rendered: str, workdir: str, log=print):
        self.log = log
        self.workdir = os.path.abspath(workdir)
        self.objects = [d for d in yaml.safe_load_all(rendered) if d]
        self.pods: dict[str, Pod] = {}
        self.services: dict[tuple, dict] = {}
        self.cluster_ips: dict[tuple, str] = {}
        self.lock = threading.RLock()
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.endpoint_state = None
        self._lockfile = None
        self.events: list[str] = []
        self.run_id = f"{os.getpid()}-{int(time.time())}"

    # -- objects ----------------------------------------------------------

    def find(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        for o in self.objects:
            m = o.get("metadata", {})
            if o.get("kind") == kind and m.get("name") == name:
                if namespace is None or m.get("namespace", NAMESPACED_DEFAULT) == namespace:
                    return o
        return None

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o.get("kind") == kind]

    def namespace_labels(self, ns: str) -> dict:
        labels = {"kubernetes.io/metadata.name": ns}
        o = self.find("Namespace", ns)
        if o:
            labels.update(o["metadata"].get("labels") or {})
        return labels

    def workload(self, name: str) -> dict:
        for kind in ("StatefulSet", "Deployment"):
            o = self.find(kind, name)
            if o:
                return o
        raise RunnerError(f"no StatefulSet or Deployment named {name}")

    # -- lifecycle --------------------------------------------------------

    def start(self):
        if os.geteuid() != 0:
            raise RunnerError("the pod runner needs root (network namespaces and iptables)")
        os.makedirs(os.path.dirname(LOCK_FILE), exist_ok=True)
        self._lockfile = open(LOCK_FILE, "w")
        fcntl.flock(self._lockfile, fcntl.LOCK_EX)
        self._clean_leftovers()
        os.makedirs(self.workdir, exist_ok=True)
        self._network_up()
        self.free_ips = iter(list(POD_NET.hosts())[9:])
        ips = self.free_ips
        index = 0
        for o in self.objects:
            kind = o.get("kind")
            if kind in ("DaemonSet", "Job", "CronJob", "ReplicaSet", "Pod", "ReplicationController"):
                raise RunnerError(f"{kind} {o['metadata']['name']}: not supported by the pod runner")
            if kind not in ("StatefulSet", "Deployment"):
                continue
            ns = o["metadata"].get("namespace", NAMESPACED_DEFAULT)
            for ordinal in range(int(o["spec"].get("replicas", 1))):
                if kind == "StatefulSet":
                    name = f"{o['metadata']['name']}-{ordinal}"
                else:
                    name = f"{o['metadata']['name']}-{ordinal:x}runner"
                labels = dict(o["spec"]["template"]["metadata"].get("labels") or {})
                if kind == "StatefulSet":
                    labels["statefulset.kubernetes.io/pod-name"] = name
                    labels["apps.kubernetes.io/pod-index"] = str(ordinal)
                if not selector_matches(o["spec"]["selector"], labels):
                    raise RunnerError(f"{kind} {o['metadata']['name']}: its selector does not select its own pod template")
                pod = Pod(name, ns, labels, o["spec"]["template"]["spec"], o, str(next(ips)), index)
                index += 1
                self.pods[name] = pod
        for svc in self.of_kind("Service"):
            key = (svc["metadata"].get("namespace", NAMESPACED_DEFAULT), svc["metadata"]["name"])
            self.services[key] = svc
            if svc["spec"].get("clusterIP") != "None":
                self.cluster_ips[key] = str(list(SERVICE_NET.hosts())[9 + len(self.cluster_ips)])
        self._policies_up()
        for pod in self.pods.values():
            self._create_pod(pod)
        self._sync_endpoints(force=True)
        self.thread = threading.Thread(target=self._loop, name="kubelet", daemon=True)
        self.thread.start()

    def stop(self):
        """Stop every pod and remove the network; idempotent."""
        self.stop_event.set()
        if self.thread:
            self.thread.join(timeout=30)
            self.thread = None
        if self._lockfile is None:
            return
        try:
            self._clean_leftovers()
        finally:
            fcntl.flock(self._lockfile, fcntl.LOCK_UN)
            self._lockfile.close()
            self._lockfile = None

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def _clean_leftovers(self):
        ids = sh("podman", "ps", "-aq", "--filter", f"label={LABEL}", check=False).split()
        if ids:
            sh("podman", "rm", "-f", "-t", "0", *ids, check=False)
        for ns in sh("ip", "netns", "list", check=False).split("\n"):
            name = ns.split(" ")[0]
            if name.startswith(NETNS_PREFIX):
                sh("ip", "netns", "del", name, check=False)
        sh("ip", "link", "del", BRIDGE, check=False)
        for table, chain, parent in (("nat", NAT_CHAIN, "PREROUTING"), ("nat", NAT_CHAIN, "OUTPUT"), ("filter", FILTER_CHAIN, "FORWARD")):
            for _ in range(10):
                if subprocess.run(["iptables", "-t", table, "-D", parent, "-j", chain], capture_output=True).returncode != 0:
                    break
        for table, chain in (("nat", NAT_CHAIN), ("filter", FILTER_CHAIN)):
            sh("iptables", "-t", table, "-F", chain, check=False)
            sh("iptables", "-t", table, "-X", chain, check=False)
        sh("ip", "route", "del", "unreachable", str(SERVICE_NET), check=False)

    # -- network ----------------------------------------------------------

    def _network_up(self):
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{GATEWAY}/{POD_NET.prefixlen}", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1")
        bridge_nf = "/proc/sys/net/bridge/bridge-nf-call-iptables"
        if not os.path.exists(bridge_nf):
            raise RunnerError("br_netfilter is not loaded: traffic between pods on the bridge cannot be "
                              "filtered, so NetworkPolicies cannot be applied (modprobe br_netfilter)")
        if open(bridge_nf).read().strip() != "1":
            sh("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
        # Service IPs without a ready endpoint are unreachable, as kube-proxy
        # makes them (the sandbox would otherwise pretend to connect).
        sh("ip", "route", "add", "unreachable", str(SERVICE_NET))
        sh("iptables", "-t", "nat", "-N", NAT_CHAIN)
        sh("iptables", "-t", "nat", "-I", "PREROUTING", "1", "-j", NAT_CHAIN)
        sh("iptables", "-t", "nat", "-I", "OUTPUT", "1", "-j", NAT_CHAIN)
        sh("iptables", "-N", FILTER_CHAIN)
        sh("iptables", "-I", "FORWARD", "1", "-j", FILTER_CHAIN)

    def _pod_network(self, pod: Pod):
        sh("ip", "netns", "del", pod.netns, check=False)
        sh("ip", "link", "del", pod.veth, check=False)
        sh("ip", "netns", "add", pod.netns)
        sh("ip", "link", "add", pod.veth, "type", "veth", "peer", "name", "eth0", "netns", pod.netns)
        sh("ip", "link", "set", pod.veth, "master", BRIDGE, "up")
        sh("ip", "-n", pod.netns, "addr", "add", f"{pod.ip}/{POD_NET.prefixlen}", "dev", "eth0")
        sh("ip", "-n", pod.netns, "link", "set", "eth0", "up")
        sh("ip", "-n", pod.netns, "link", "set", "lo", "up")
        sh("ip", "-n", pod.netns, "route", "add", "default", "via", GATEWAY)

    def _policies_up(self):
        """NetworkPolicies as filter rules between pod IPs, rebuilt when a
        re-created pod gets a new IP (pod set and labels are fixed)."""
        sh("iptables", "-F", FILTER_CHAIN)
        rules = [["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]]
        pods = list(self.pods.values())
        for src in pods:
            for dst in pods:
                if src is dst:
                    continue
                allowed = intersect(self._egress(src, dst), self._ingress(src, dst))
                for proto, port in sorted(allowed, key=str):
                    rule = ["-s", src.ip, "-d", dst.ip]
                    if proto != "*":
                        rule += ["-p", proto.lower()]
                        if port is not None:
                            rule += ["--dport", str(port)]
                    rules.append(rule + ["-j", "ACCEPT"])
        rules.append(["-i", BRIDGE, "-o", BRIDGE, "-j", "DROP"])
        # Nothing leaves the pod network (no egress to the outside here).
        rules.append(["-i", BRIDGE, "!", "-o", BRIDGE, "-j", "REJECT"])
        for r in rules:
            sh("iptables", "-A", FILTER_CHAIN, *r)

    def _policies_for(self, pod: Pod, direction: str) -> list[dict]:
        out = []
        for p in self.of_kind("NetworkPolicy"):
            if p["metadata"].get("namespace", NAMESPACED_DEFAULT) != pod.namespace:
                continue
            spec = p["spec"]
            # Kubernetes' default: Ingress, and Egress when there are egress rules.
            types = spec.get("policyTypes") or (["Ingress"] + (["Egress"] if spec.get("egress") else []))
            if direction in types and selector_matches(spec.get("podSelector") or {}, pod.labels):
                out.append(p)
        return out

    def _peer_matches(self, peer: dict, policy_ns: str, other: Pod) -> bool:
        if "ipBlock" in peer:
            block = peer["ipBlock"]
            ip = ipaddress.ip_address(other.ip)
            if ip not in ipaddress.ip_network(block["cidr"]):
                return False
            return not any(ip in ipaddress.ip_network(e) for e in block.get("except") or [])
        if "namespaceSelector" in peer:
            if not selector_matches(peer["namespaceSelector"], self.namespace_labels(other.namespace)):
                return False
        elif other.namespace != policy_ns:
            return False
        if "podSelector" in peer:
            return selector_matches(peer["podSelector"], other.labels)
        return True

    def _allowed(self, pod: Pod, other: Pod, direction: str, ports_of: Pod) -> set | None:
        """None: not isolated (all allowed); else the set of (proto, port)."""
        policies = self._policies_for(pod, direction)
        if not policies:
            return None
        allowed = set()
        key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        for p in policies:
            ns = p["metadata"].get("namespace", NAMESPACED_DEFAULT)
            for rule in p["spec"].get(key) or []:
                peers = rule.get(peers_key)
                if peers and not any(self._peer_matches(peer, ns, other) for peer in peers):
                    continue
                ports = rule.get("ports")
                if not ports:
                    allowed.add(("*", None))
                    continue
                for port in ports:
                    proto = port.get("protocol", "TCP")
                    if "port" not in port:
                        allowed.add((proto, None))
                        continue
                    number = ports_of.port_named(port["port"])
                    if number is None:
                        continue  # a named port the destination does not have
                    if "endPort" in port:
                        for n in range(number, int(port["endPort"]) + 1):
                            allowed.add((proto, n))
                    else:
                        allowed.add((proto, number))
        return allowed

    def _egress(self, src: Pod, dst: Pod):
        return self._allowed(src, dst, "Egress", dst)

    def _ingress(self, src: Pod, dst: Pod):
        return self._allowed(dst, src, "Ingress", dst)

    # -- services ---------------------------------------------------------

    def _endpoints(self, svc: dict) -> list[Pod]:
        selector = svc["spec"].get("selector")
        if not selector:
            return []
        ns = svc["metadata"].get("namespace", NAMESPACED_DEFAULT)
        publish = svc["spec"].get("publishNotReadyAddresses", False)
        return [
            p for p in self.pods.values()
            if p.namespace == ns and not p.deleted and all(p.labels.get(k) == v for k, v in selector.items())
            and (p.ready or (publish and any(c.running for c in p.containers)))
        ]

    def _sync_endpoints(self, force: bool = False):
        state = {key: tuple((p.name, p.ip) for p in self._endpoints(svc)) for key, svc in self.services.items()}
        if not force and state == self.endpoint_state:
            return
        self.endpoint_state = state
        sh("iptables", "-t", "nat", "-F", NAT_CHAIN)
        for key, cluster_ip in self.cluster_ips.items():
            svc = self.services[key]
            endpoints = self._endpoints(svc)
            for port in svc["spec"].get("ports") or []:
                proto = port.get("protocol", "TCP").lower()
                target = port.get("targetPort", port["port"])
                for i, ep in enumerate(endpoints):
                    number = ep.port_named(target)
                    if number is None:
                        raise RunnerError(f"Service {key[1]}: targetPort {target} is not a port of pod {ep.name}")
                    rule = ["-d", f"{cluster_ip}/32", "-p", proto, "--dport", str(port["port"])]
                    remaining = len(endpoints) - i
                    if remaining > 1:
                        rule += ["-m", "statistic", "--mode", "random", "--probability", f"{1 / remaining:.5f}"]
                    sh("iptables", "-t", "nat", "-A", NAT_CHAIN, *rule, "-j", "DNAT", "--to-destination", f"{ep.ip}:{number}")
        for pod in self.pods.values():
            if not pod.deleted:
                self._write_hosts(pod)
        self.event(f"endpoints: {json.dumps({k[1]: [name for name, _ in v] for k, v in state.items()})}")

    def _hosts_text(self, pod: Pod) -> str:
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        own = [pod.name]
        service_name = pod.owner["spec"].get("serviceName") if pod.owner["kind"] == "StatefulSet" else None
        if service_name:
            own.insert(0, f"{pod.name}.{service_name}.{pod.namespace}.svc.cluster.local")
        lines.append(f"{pod.ip}\t{' '.join(own)}")

        def names(name: str, ns: str) -> str:
            n = [f"{name}.{ns}.svc.cluster.local", f"{name}.{ns}.svc", f"{name}.{ns}"]
            return " ".join(n + ([name] if ns == pod.namespace else []))

        for key, svc in self.services.items():
            ns, name = key
            if key in self.cluster_ips:
                lines.append(f"{self.cluster_ips[key]}\t{names(name, ns)}")
            else:
                for ep in self._endpoints(svc):
                    lines.append(f"{ep.ip}\t{names(name, ns)}")
            for ep in self._endpoints(svc) if key not in self.cluster_ips else []:
                if ep.owner["spec"].get("serviceName") == name:
                    lines.append(f"{ep.ip}\t{ep.name}.{name}.{ns}.svc.cluster.local {ep.name}.{name}")
        return "\n".join(lines) + "\n"

    def _write_hosts(self, pod: Pod):
        path = os.path.join(self.workdir, "pods", pod.name, "hosts")
        text = self._hosts_text(pod).encode()
        # In place: the file is bind-mounted into the running containers.
        with open(path, "r+b" if os.path.exists(path) else "wb") as f:
            f.seek(0)
            f.write(text)
            f.truncate()

    # -- pods -------------------------------------------------------------

    def _create_pod(self, pod: Pod):
        if pod.instance > 0:
            # A re-created pod is a new pod: a new IP, as on a real cluster.
            pod.ip = str(next(self.free_ips))
            self._policies_up()
        pod.instance += 1
        pod.deleted = False
        pod.error = ""
        base = os.path.join(self.workdir, "pods", pod.name)
        instance_dir = os.path.join(base, f"instance-{pod.instance}")
        os.makedirs(instance_dir, exist_ok=True)
        self._pod_network(pod)
        self._write_hosts(pod)
        try:
            pod.volumes = self._volumes(pod, instance_dir)
        except RunnerError as e:
            pod.error = str(e)
            pod.containers = []
            self.event(f"{pod.name}: cannot start: {e}")
            return
        if pod.spec.get("initContainers"):
            raise RunnerError(f"pod {pod.name}: initContainers are not supported by the pod runner")
        pod.containers = [Container(copy.deepcopy(c)) for c in pod.spec["containers"]]
        for c in pod.containers:
            self._start_container(pod, c)
        self.event(f"{pod.name}: created (instance {pod.instance}, IP {pod.ip})")

    def delete_pod(self, name: str, grace: float | None = None):
        """`kubectl delete pod`: SIGTERM, the grace period, SIGKILL; the
        StatefulSet controller then re-creates it (same name and volumes)."""
        with self.lock:
            pod = self.pods[name]
            pod.deleted = True
            for c in pod.containers:
                c.ready = False
            self._sync_endpoints()
        grace = grace if grace is not None else pod.spec.get("terminationGracePeriodSeconds", 30)
        for c in pod.containers:
            if c.podman_name:
                sh("podman", "stop", "-t", str(int(grace)), c.podman_name, check=False, timeout=grace + 30)
                self._save_logs(pod, c)
                sh("podman", "rm", "-f", c.podman_name, check=False)
        self.event(f"{name}: deleted")
        with self.lock:
            self._create_pod(pod)

    def _volumes(self, pod: Pod, instance_dir: str) -> dict:
        """name -> (host path, read-only by nature)."""
        sc = pod.spec.get("securityContext") or {}
        fs_group = sc.get("fsGroup")
        out = {}
        claims = {t["metadata"]["name"] for t in (pod.owner["spec"].get("volumeClaimTemplates") or [])}
        for claim in claims:
            path = os.path.join(self.workdir, "pvc", pod.namespace, f"{claim}-{pod.name}")
            os.makedirs(path, exist_ok=True)
            own_tree(path, fs_group, rw=True)
            out[claim] = (path, False)
        for v in pod.spec.get("volumes") or []:
            name = v["name"]
            path = os.path.join(instance_dir, "volumes", name)
            if "emptyDir" in v:
                os.makedirs(path, exist_ok=True)
                os.chmod(path, 0o777)
                own_tree(path, fs_group, rw=True)
                out[name] = (path, False)
            elif "configMap" in v or "secret" in v:
                kind = "ConfigMap" if "configMap" in v else "Secret"
                ref = v["configMap"] if kind == "ConfigMap" else v["secret"]
                obj_name = ref["name"] if kind == "ConfigMap" else ref["secretName"]
                obj = self.find(kind, obj_name, pod.namespace)
                if obj is None:
                    if ref.get("optional"):
                        os.makedirs(path, exist_ok=True)
                        out[name] = (path, True)
                        continue
                    raise RunnerError(f"volume {name}: {kind} {obj_name} not found")
                data = decoded(obj)
                os.makedirs(path, exist_ok=True)
                mode = ref.get("defaultMode", 0o644)
                items = ref.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    if item["key"] not in data:
                        raise RunnerError(f"volume {name}: {kind} {obj_name} has no key {item['key']}")
                    file = os.path.join(path, item["path"])
                    os.makedirs(os.path.dirname(file), exist_ok=True)
                    with open(file, "wb") as f:
                        f.write(data[item["key"]])
                    os.chmod(file, item.get("mode", mode))
                own_tree(path, fs_group, rw=False)
                out[name] = (path, True)
            elif "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                if self.find("PersistentVolumeClaim", claim, pod.namespace) is None:
                    raise RunnerError(f"volume {name}: PersistentVolumeClaim {claim} not found (the pod would stay Pending)")
                path = os.path.join(self.workdir, "pvc", pod.namespace, claim)
                os.makedirs(path, exist_ok=True)
                own_tree(path, fs_group, rw=True)
                out[name] = (path, v["persistentVolumeClaim"].get("readOnly", False))
            else:
                raise RunnerError(f"volume {name}: only configMap, secret, emptyDir and persistentVolumeClaim are supported")
        return out

    def _env(self, pod: Pod, spec: dict) -> dict:
        env: dict[str, str] = {}
        for src in spec.get("envFrom") or []:
            if "configMapRef" in src or "secretRef" in src:
                kind = "ConfigMap" if "configMapRef" in src else "Secret"
                ref = src.get("configMapRef") or src.get("secretRef")
                obj = self.find(kind, ref["name"], pod.namespace)
                if obj is None:
                    raise RunnerError(f"envFrom: {kind} {ref['name']} not found")
                for k, v in decoded(obj).items():
                    env[src.get("prefix", "") + k] = v.decode()
        for e in spec.get("env") or []:
            if "valueFrom" not in e:
                env[e["name"]] = expand(str(e.get("value", "")), env)
                continue
            vf = e["valueFrom"]
            if "fieldRef" in vf:
                env[e["name"]] = self._field(pod, vf["fieldRef"]["fieldPath"])
            elif "configMapKeyRef" in vf or "secretKeyRef" in vf:
                kind = "ConfigMap" if "configMapKeyRef" in vf else "Secret"
                ref = vf.get("configMapKeyRef") or vf.get("secretKeyRef")
                obj = self.find(kind, ref["name"], pod.namespace)
                if obj is None or ref["key"] not in decoded(obj):
                    raise RunnerError(f"env {e['name']}: {kind} {ref['name']} key {ref['key']} not found")
                env[e["name"]] = decoded(obj)[ref["key"]].decode()
            else:
                raise RunnerError(f"env {e['name']}: only fieldRef, configMapKeyRef and secretKeyRef are supported")
        return env

    def _field(self, pod: Pod, path: str) -> str:
        m = re.fullmatch(r"metadata\.labels\['(.+)'\]", path)
        if m:
            return pod.labels.get(m.group(1), "")
        fields = {
            "metadata.name": pod.name,
            "metadata.namespace": pod.namespace,
            "status.podIP": pod.ip,
            "status.hostIP": GATEWAY,
            "spec.nodeName": "podrunner",
        }
        if path not in fields:
            raise RunnerError(f"fieldRef {path}: not supported by the pod runner")
        return fields[path]

    def _start_container(self, pod: Pod, c: Container):
        spec = c.spec
        image = spec["image"]
        if subprocess.run(["podman", "image", "exists", image]).returncode != 0:
            pod.error = f"ErrImagePull: image {image} is not available locally"
            self.event(f"{pod.name}/{c.name}: {pod.error}")
            return
        psc = pod.spec.get("securityContext") or {}
        csc = spec.get("securityContext") or {}

        def pick(key):
            return csc.get(key, psc.get(key))

        uid, gid = pick("runAsUser"), pick("runAsGroup")
        if pick("runAsNonRoot"):
            effective = uid
            if effective is None:
                user = sh("podman", "image", "inspect", "--format", "{{.Config.User}}", image).strip()
                effective = user.split(":")[0] if user else "0"
                if not str(effective).isdigit():
                    pod.error = f"CreateContainerConfigError: image {image} has a non-numeric user {user!r}: cannot verify runAsNonRoot"
                    self.event(f"{pod.name}/{c.name}: {pod.error}")
                    return
            if int(effective) == 0:
                pod.error = "CreateContainerConfigError: container would run as root (runAsNonRoot)"
                self.event(f"{pod.name}/{c.name}: {pod.error}")
                return
        env = self._env(pod, spec)
        c.instance += 1
        c.podman_name = f"{pod.name}_{c.name}_{pod.instance}_{c.instance}"
        args = ["podman", "run", "-d", "--pull=never", "--name", c.podman_name,
                "--label", f"{LABEL}={self.run_id}",
                "--network", f"ns:/run/netns/{pod.netns}", "--no-hosts", "--hostname", pod.name,
                "-v", f"{os.path.join(self.workdir, 'pods', pod.name, 'hosts')}:/etc/hosts:ro",
                "--stop-timeout", str(int(pod.spec.get("terminationGracePeriodSeconds", 30)))]
        if uid is not None:
            args += ["--user", f"{uid}:{gid}" if gid is not None else str(uid)]
        for g in ([psc["fsGroup"]] if "fsGroup" in psc else []) + list(psc.get("supplementalGroups") or []):
            args += ["--group-add", str(g)]
        if csc.get("readOnlyRootFilesystem"):
            args += ["--read-only", "--read-only-tmpfs=false"]
        caps = csc.get("capabilities") or {}
        for cap in caps.get("drop") or []:
            args += ["--cap-drop", cap.lower()]
        for cap in caps.get("add") or []:
            args += ["--cap-add", cap.lower()]
        if csc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        if csc.get("privileged"):
            raise RunnerError(f"{pod.name}/{c.name}: privileged containers are not run")
        seccomp = (pick("seccompProfile") or {}).get("type", "RuntimeDefault")
        if seccomp == "Unconfined":
            args += ["--security-opt", "seccomp=unconfined"]
        elif seccomp != "RuntimeDefault":
            raise RunnerError(f"{pod.name}/{c.name}: seccompProfile {seccomp} is not supported")
        for k, v in env.items():
            args += ["-e", f"{k}={v}"]
        for m in spec.get("volumeMounts") or []:
            if m["name"] not in pod.volumes:
                raise RunnerError(f"{pod.name}/{c.name}: volumeMount {m['name']} has no volume")
            path, ro = pod.volumes[m["name"]]
            if m.get("subPath"):
                path = os.path.join(path, m["subPath"])
            read_only = m.get("readOnly", False) or ro
            args += ["-v", f"{path}:{m['mountPath']}:{'ro' if read_only else 'rw'}"]
        command = [expand(x, env) for x in spec.get("command") or []]
        cargs = [expand(x, env) for x in spec.get("args") or []]
        if command:
            args += ["--entrypoint", json.dumps(command)]
        args.append(spec["image"])
        args += cargs
        sh(*args)
        c.started_at = time.time()
        c.running = True
        c.started = "startupProbe" not in spec
        c.ready = False
        c.probe_due = {}
        c.probe_fails = {}
        c.probe_passes = {}
        self.event(f"{pod.name}/{c.name}: started ({c.podman_name})")

    def _save_logs(self, pod: Pod, c: Container):
        out = subprocess.run(["podman", "logs", c.podman_name], capture_output=True)
        if out.returncode != 0:
            return
        os.makedirs(os.path.join(self.workdir, "logs"), exist_ok=True)
        with open(os.path.join(self.workdir, "logs", f"{c.podman_name}.log"), "wb") as f:
            f.write(out.stdout + out.stderr)

    def logs(self, pod_name: str, container: str | None = None, previous: bool = True) -> str:
        """The pod's logs: earlier instances' (deleted or restarted) first."""
        pod = self.pods[pod_name]
        text = ""
        logdir = os.path.join(self.workdir, "logs")
        if previous and os.path.isdir(logdir):
            for f in sorted(os.listdir(logdir), key=lambda f: os.path.getmtime(os.path.join(logdir, f))):
                if f.startswith(f"{pod.name}_") and (container is None or f.startswith(f"{pod.name}_{container}_")):
                    text += open(os.path.join(logdir, f), errors="replace").read()
        for c in pod.containers:
            if c.podman_name and (container is None or c.name == container):
                out = subprocess.run(["podman", "logs", c.podman_name], capture_output=True)
                if out.returncode == 0:
                    text += (out.stdout + out.stderr).decode(errors="replace")
        return text

    # -- the kubelet loop -------------------------------------------------

    def _loop(self):
        while not self.stop_event.is_set():
            try:
                with self.lock:
                    self._tick()
            except Exception as e:  # noqa: BLE001 - keep the kubelet alive, say why
                self.event(f"kubelet loop error: {e}")
            self.stop_event.wait(0.25)

    def _states(self) -> dict:
        out = sh("podman", "ps", "-a", "--filter", f"label={LABEL}={self.run_id}", "--format", "json", check=False)
        try:
            return {c["Names"][0]: c for c in json.loads(out or "[]")}
        except json.JSONDecodeError:
            return {}

    def _tick(self):
        states = self._states()
        now = time.time()
        for pod in self.pods.values():
            if pod.deleted:
                continue
            for c in pod.containers:
                if not c.podman_name:
                    continue
                st = states.get(c.podman_name)
                running = bool(st) and st.get("State") == "running"
                if c.running and not running:
                    c.running, c.ready = False, False
                    code = st.get("ExitCode") if st else "?"
                    self._save_logs(pod, c)
                    sh("podman", "rm", "-f", c.podman_name, check=False)
                    c.restarts += 1
                    backoff = min(10.0, 0.5 * 2 ** min(c.restarts, 5))
                    c.next_start = now + backoff
                    self.event(f"{pod.name}/{c.name}: exited ({code}); restart {c.restarts} in {backoff:.1f} s")
                    continue
                if not c.running:
                    if now >= c.next_start:
                        self._start_container(pod, c)
                    continue
                self._probe(pod, c, now)
        self._sync_endpoints()

    def _probe(self, pod: Pod, c: Container, now: float):
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = c.spec.get(kind)
            if kind != "startupProbe" and not c.started:
                continue
            if kind == "startupProbe" and (probe is None or c.started):
                continue
            if probe is None:
                if kind == "readinessProbe":
                    c.ready = True
                continue
            due = c.probe_due.get(kind, c.started_at + probe.get("initialDelaySeconds", 0))
            if now < due:
                continue
            c.probe_due[kind] = now + probe.get("periodSeconds", 10)
            ok, detail = self.probe_once(pod, c, probe)
            if ok:
                c.probe_fails[kind] = 0
                c.probe_passes[kind] = c.probe_passes.get(kind, 0) + 1
                if kind == "startupProbe":
                    c.started = True
                if kind == "readinessProbe" and c.probe_passes[kind] >= probe.get("successThreshold", 1):
                    if not c.ready:
                        self.event(f"{pod.name}/{c.name}: Ready")
                    c.ready = True
                continue
            c.last_probe_error = f"{kind}: {detail}"
            c.probe_passes[kind] = 0
            c.probe_fails[kind] = c.probe_fails.get(kind, 0) + 1
            if kind == "readinessProbe" and c.probe_fails[kind] >= probe.get("failureThreshold", 3):
                if c.ready:
                    self.event(f"{pod.name}/{c.name}: not Ready ({detail})")
                c.ready = False
            if c.probe_fails[kind] >= probe.get("failureThreshold", 3) and kind != "readinessProbe":
                self.event(f"{pod.name}/{c.name}: {kind} failed {c.probe_fails[kind]} times ({detail}): restarting")
                sh("podman", "stop", "-t", str(int(pod.spec.get("terminationGracePeriodSeconds", 30))), c.podman_name, check=False)

    def probe_once(self, pod: Pod, c: Container, probe: dict) -> tuple[bool, str]:
        timeout = probe.get("timeoutSeconds", 1)
        container_pod = Pod(pod.name, pod.namespace, pod.labels, {"containers": [c.spec]}, pod.owner, pod.ip, pod.index)
        try:
            if "httpGet" in probe:
                h = probe["httpGet"]
                port = container_pod.port_named(h["port"])
                if port is None:
                    return False, f"no port named {h['port']}"
                scheme = h.get("scheme", "HTTP").lower()
                url = f"{scheme}://{h.get('host', pod.ip)}:{port}{h.get('path', '/')}"
                req = urllib.request.Request(url, headers={x["name"]: x["value"] for x in h.get("httpHeaders") or []})
                ctx = ssl._create_unverified_context() if scheme == "https" else None
                try:
                    with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
                        return 200 <= r.status < 400, f"HTTP {r.status}"
                except urllib.error.HTTPError as e:
                    return 200 <= e.code < 400, f"HTTP {e.code}"
            if "tcpSocket" in probe:
                port = container_pod.port_named(probe["tcpSocket"]["port"])
                with socket.create_connection((pod.ip, port), timeout=timeout):
                    return True, "connected"
            if "exec" in probe:
                r = subprocess.run(["podman", "exec", c.podman_name, *probe["exec"]["command"]], capture_output=True, timeout=timeout + 5)
                return r.returncode == 0, f"exit {r.returncode}"
            if "grpc" in probe:
                raise RunnerError("grpc probes are not supported by the pod runner")
            return False, "probe without a handler"
        except (OSError, urllib.error.URLError, subprocess.TimeoutExpired) as e:
            return False, str(getattr(e, "reason", e))

    # -- for the scenarios ------------------------------------------------

    def event(self, text: str):
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        self.events.append(line)
        self.log(line)

    def wait(self, what: str, predicate, timeout: float, every: float = 0.25):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                value = predicate()
            if value:
                return value
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.status()}")

    def wait_ready(self, names=None, timeout: float = 120):
        names = names or list(self.pods)
        self.wait(f"pods Ready: {', '.join(names)}", lambda: all(self.pods[n].ready for n in names), timeout)

    def status(self) -> str:
        lines = []
        for p in self.pods.values():
            cs = ", ".join(
                f"{c.name}: {'running' if c.running else 'down'}{' ready' if c.ready else ''} restarts={c.restarts}"
                + (f" last probe error: {c.last_probe_error}" if c.last_probe_error and not c.ready else "")
                for c in p.containers
            )
            lines.append(f"  {p.name} ({p.ip}) {'Ready' if p.ready else 'not ready'} {p.error} [{cs}]")
        return "pods:\n" + "\n".join(lines)

    def service_ip(self, name: str, namespace: str) -> str:
        return self.cluster_ips[(namespace, name)]

    def in_pod(self, pod: str, *command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a host program inside the pod's network namespace (its
        network identity: the NetworkPolicies apply to it)."""
        return subprocess.run(["ip", "netns", "exec", self.pods[pod].netns, *command], capture_output=True, timeout=timeout)

    def secret_named(self, name: str, key: str, namespace: str) -> str:
        """A Secret's value by its name before kustomize's hash suffix."""
        obj = self.find("Secret", name, namespace)
        if obj is None:
            for o in self.of_kind("Secret"):
                if re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}", o["metadata"]["name"]):
                    obj = o
        if obj is None:
            raise RunnerError(f"no Secret {name}")
        return decoded(obj)[key].decode().strip()


def intersect(a: set | None, b: set | None) -> set:
    """Traffic both ends allow, as (protocol, port) pairs; None means
    'everything' (that end is not isolated), ("*", None) any traffic."""
    if a is None:
        return b if b is not None else {("*", None)}
    if b is None:
        return a
    out = set()
    for p1, n1 in a:
        for p2, n2 in b:
            if p1 != "*" and p2 != "*" and p1 != p2:
                continue
            if n1 is not None and n2 is not None and n1 != n2:
                continue
            out.add((p2 if p1 == "*" else p1, n1 if n1 is not None else n2))
    return out


def decoded(obj: dict) -> dict[str, bytes]:
    data = {}
    for k, v in (obj.get("data") or {}).items():
        data[k] = base64.b64decode(v) if obj["kind"] == "Secret" else str(v).encode()
    for k, v in (obj.get("stringData") or {}).items():
        data[k] = str(v).encode()
    for k, v in (obj.get("binaryData") or {}).items():
        data[k] = base64.b64decode(v)
    return data


def own_tree(path: str, fs_group, rw: bool):
    """The kubelet's fsGroup ownership: group fsGroup, group-readable (and
    writable for writable volumes), setgid directories."""
    if fs_group is None:
        return
    for root, dirs, files in os.walk(path):
        for d in [root] + [os.path.join(root, x) for x in dirs]:
            os.chown(d, -1, fs_group)
            os.chmod(d, os.stat(d).st_mode | 0o2000 | (0o070 if rw else 0o050))
        for f in files:
            p = os.path.join(root, f)
            os.chown(p, -1, fs_group)
            os.chmod(p, os.stat(p).st_mode | (0o060 if rw else 0o040))


def render(overlay: str) -> str:
    return sh("kubectl", "kustomize", overlay)


def containers_conf(path: str) -> str:
    """podman here needs runc and explicit ulimits (../shared/TOOLING.md)."""
    with open(path, "w") as f:
        f.write('[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n[engine]\nruntime = "runc"\n')
    return path
