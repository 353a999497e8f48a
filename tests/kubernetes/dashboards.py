"""The Grafana dashboards' queries (k8s/grafana/dashboards), made concrete
for Prometheus: Grafana's variables replaced ($__rate_interval by 1m, the
$job and $instance selectors by "any")."""

from __future__ import annotations

import json
import os
import re

DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "k8s", "grafana", "dashboards")


def queries() -> list[tuple[str, str]]:
    """(a name for the query, its PromQL) of every panel target."""
    out = []
    for f in sorted(os.listdir(DIR)):
        with open(os.path.join(DIR, f)) as fh:
            panels = json.load(fh)["panels"]
        for i, panel in enumerate(panels):
            for j, t in enumerate(panel["targets"]):
                expr = t["expr"].replace("$__rate_interval", "1m").replace("$job", ".+").replace("$instance", ".+")
                out.append((f"{f.removesuffix('.json')}:{i}_{j}", expr))
    return out


def metric_names() -> set[str]:
    """Every medfed_* series name the panels query."""
    return {m.group(1) for _, expr in queries() for m in re.finditer(r"\b(medfed_[a-z0-9_]+)", expr)}
