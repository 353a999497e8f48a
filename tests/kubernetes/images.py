"""The images the pod runner runs, built offline (no registry is reachable):

- medfed: the Containerfile's `runtime` stage, from the binary the test
  suite just built (`--build-context build=DIR` stands in for the `build`
  stage), on a Debian bookworm base made locally with mmdebstrap under the
  name the Containerfile uses (docker.io/library/debian:bookworm-slim);
- Prometheus: Debian's prometheus binary on the same base, under the
  image name the manifests use (same version, 2.42; it links only libc).

Grafana and MLflow images cannot be made here; the overlays the runner
runs do not contain them (README "Deploy on Kubernetes").
"""

from __future__ import annotations

import os
import shutil
import subprocess

from podrunner import RunnerError, sh

BASE = "docker.io/library/debian:bookworm-slim"
PROMETHEUS = "quay.io/prometheus/prometheus:v2.42.0"


def base_image(cache_dir: str):
    if subprocess.run(["podman", "image", "exists", BASE]).returncode == 0:
        return
    os.makedirs(cache_dir, exist_ok=True)
    tar = os.path.join(cache_dir, "debian-bookworm-base.tar")
    if not os.path.exists(tar):
        # Named *.tar and --format given: mmdebstrap picks its output format
        # from the name otherwise. A failed attempt's leftovers go first.
        partial = os.path.join(cache_dir, "partial-base.tar")
        if os.path.isdir(partial):
            shutil.rmtree(partial)
        elif os.path.exists(partial):
            os.remove(partial)
        sh("mmdebstrap", "--quiet", "--variant=extract", "--format=tar",
           "--include=libc6,libgcc-s1,netbase,tzdata,ca-certificates", "bookworm", partial, timeout=600)
        extra = os.path.join(cache_dir, "extra", "etc")
        os.makedirs(extra, exist_ok=True)
        with open(os.path.join(extra, "nsswitch.conf"), "w") as f:
            f.write("passwd: files\ngroup: files\nhosts: files dns\n")
        sh("tar", "--append", "-f", partial, "-C", os.path.dirname(extra), "./etc/nsswitch.conf")
        os.rename(partial, tar)
    sh("podman", "import", "-q", tar, BASE, timeout=300)


def medfed_image(binary: str, repo: str, workdir: str, tags: list[str]) -> dict:
    """Build the runtime stage; returns its id and size in bytes."""
    ctx = os.path.join(workdir, "image-context", "out")
    os.makedirs(ctx, exist_ok=True)
    sh("strip", "-o", os.path.join(ctx, "medfed"), binary)
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", os.path.join(ctx, "ca-certificates.crt"))
    args = ["podman", "build", "-q", "--target", "runtime",
            "--build-context", f"build={os.path.dirname(ctx)}", "-f", os.path.join(repo, "Containerfile")]
    for t in tags:
        args += ["-t", t]
    image_id = sh(*args, repo, timeout=600).strip().split("\n")[-1]
    # The previous build's image lost its tags: remove it (and any other
    # untagged one), so that repeated test runs do not fill the disk.
    sh("podman", "image", "prune", "-f", check=False)
    size = int(sh("podman", "image", "inspect", "--format", "{{.Size}}", image_id).strip())
    return {"id": image_id, "size": size}


def prometheus_image(workdir: str):
    if subprocess.run(["podman", "image", "exists", PROMETHEUS]).returncode == 0:
        return
    binary = shutil.which("prometheus")
    if binary is None:
        raise RunnerError("prometheus is not installed (scripts/test installs it from Debian)")
    ctx = os.path.join(workdir, "prometheus-context")
    os.makedirs(ctx, exist_ok=True)
    shutil.copy(binary, os.path.join(ctx, "prometheus"))
    with open(os.path.join(ctx, "Containerfile"), "w") as f:
        f.write(
            f"FROM {BASE}\nCOPY prometheus /bin/prometheus\nUSER 65534:65534\n"
            'ENTRYPOINT ["/bin/prometheus"]\n'
        )
    sh("podman", "build", "-q", "-t", PROMETHEUS, ctx, timeout=300)
