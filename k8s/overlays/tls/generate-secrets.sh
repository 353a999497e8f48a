#!/usr/bin/env bash
# Writes this overlay's Secrets to secrets.yaml (git-ignored; apply it once
# with `kubectl apply -f k8s/overlays/tls/secrets.yaml`, before the overlay):
# a THROWAWAY cluster CA with a certificate per node (`medfed cluster
# gen-certs`; the coordinator's names are the Service names hospitals dial),
# a fresh cookie, API token and scrape token. The CA key stays in
# ca-key.pem here, never in the cluster. Bring your own CA or tokens by
# writing the same Secrets yourself.
# MEDFED: the medfed binary (default: medfed on PATH); COORDINATOR_NAMES:
# the names in the coordinator's certificate (default: its Service names).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
medfed="${MEDFED:-medfed}"
namespace=medfed
rm -rf "$here/certs" "$here/secrets" "$here/secrets.yaml"
"$medfed" cluster gen-certs --out "$here/certs" \
    --hospitals hospital-1,hospital-2,hospital-3 \
    --coordinator-names "${COORDINATOR_NAMES:-coordinator,coordinator.medfed,coordinator.medfed.svc,coordinator.medfed.svc.cluster.local}" \
    --ca-key "$here/ca-key.pem" "$@"
umask 077
mkdir -p "$here/secrets"
for name in cookie api-token scrape-token; do
    head -c 32 /dev/urandom | base64 | tr -d '/+=\n' > "$here/secrets/$name"
done
# secret NAME TYPE KEY=FILE...
secret() {
    local name=$1 type=$2
    shift 2
    printf -- '---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n  namespace: %s\ntype: %s\ndata:\n' "$name" "$namespace" "$type"
    for pair in "$@"; do
        printf '  %s: %s\n' "${pair%%=*}" "$(base64 -w0 < "${pair#*=}")"
    done
}
{
    echo "# Written by generate-secrets.sh: kubectl apply -f secrets.yaml (never commit it)."
    secret medfed-cookie Opaque "cookie=$here/secrets/cookie"
    secret medfed-api-token Opaque "token=$here/secrets/api-token"
    secret medfed-scrape-token Opaque "token=$here/secrets/scrape-token"
    for node in coordinator hospital-1 hospital-2 hospital-3; do
        secret "$node-tls" kubernetes.io/tls "tls.crt=$here/certs/$node.pem" "tls.key=$here/certs/$node-key.pem" \
            "ca.crt=$here/certs/ca.pem"
    done
} > "$here/secrets.yaml"
echo "wrote $here/secrets.yaml: kubectl apply -f $here/secrets.yaml (the CA key is $here/ca-key.pem: keep it out of the cluster)"
