#!/usr/bin/env bash
# Writes this overlay's Secrets (git-ignored): a THROWAWAY cluster CA with a
# certificate per node (`medfed cluster gen-certs`; the coordinator's names
# are the Service names hospitals dial), a fresh cookie, API token and scrape
# token. Run it once before `kubectl apply -k k8s/overlays/tls`.
# MEDFED: the medfed binary (default: medfed on PATH).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
medfed="${MEDFED:-medfed}"
rm -rf "$here/certs" "$here/secrets"
"$medfed" cluster gen-certs --out "$here/certs" \
    --hospitals hospital-1,hospital-2,hospital-3 \
    --coordinator-names coordinator,coordinator.medfed,coordinator.medfed.svc,coordinator.medfed.svc.cluster.local \
    --ca-key "$here/ca-key.pem" "$@"
mkdir -p "$here/secrets"
umask 077
for name in cookie api-token scrape-token; do
    head -c 32 /dev/urandom | base64 | tr -d '/+=\n' > "$here/secrets/$name"
done
echo "wrote $here/certs and $here/secrets (the CA key is $here/ca-key.pem: keep it out of the cluster)"
