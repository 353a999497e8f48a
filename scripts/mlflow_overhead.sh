#!/usr/bin/env bash
# What MLflow tracking costs a run: the same run (breast cancer, ROUNDS
# rounds) without MLflow, with a real MLflow 3.17.2 server, and with MLflow
# down (a closed port), REPEAT times each; prints the wall time of each and
# the overhead per round. Usage: scripts/mlflow_overhead.sh [ROUNDS] [REPEAT]
# (after `cargo build --release`; MLflow from the venv scripts/test makes).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-50}"; REPEAT="${2:-3}"
MLFLOW="${MEDFED_MLFLOW:-$HOME/.cache/medfed/venvs/mlflow-3.17.2/bin/mlflow}"
BIN=target/release/medfed
DIR=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DOWN=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$MLFLOW" server --host 127.0.0.1 --port "$PORT" \
    --backend-store-uri "sqlite:///$DIR/mlflow.db" --artifacts-destination "$DIR/artifacts" --workers 1 >"$DIR/log" 2>&1 &
SERVER=$!
trap 'kill -TERM -- -$SERVER 2>/dev/null || true; rm -rf "$DIR"' EXIT
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do sleep 0.5; done
run() { # label, extra args...
    local label=$1; shift
    for i in $(seq "$REPEAT"); do
        local start end
        start=$(date +%s.%N)
        MEDFED_RUN__DATA_DIR="$DIR/data" "$BIN" run --task breast_cancer --rounds "$ROUNDS" -q "$@" >/dev/null 2>&1
        end=$(date +%s.%N)
        echo "$label $(echo "$end - $start" | bc)"
    done
}
{
    run none
    run mlflow --mlflow-uri "http://127.0.0.1:$PORT"
    run down --mlflow-uri "http://127.0.0.1:$DOWN"
} | tee "$DIR/times"
python3 - "$DIR/times" "$ROUNDS" <<'PY'
import sys, statistics
times = {}
for line in open(sys.argv[1]):
    label, t = line.split()
    times.setdefault(label, []).append(float(t))
rounds = int(sys.argv[2])
med = {k: statistics.median(v) for k, v in times.items()}
print(f"median wall time: without MLflow {med['none']:.3f} s, with MLflow {med['mlflow']:.3f} s, MLflow down {med['down']:.3f} s")
print(f"overhead per round with MLflow: {(med['mlflow'] - med['none']) / rounds * 1000:.2f} ms")
print(f"MLflow down / without MLflow: {med['down'] / med['none']:.3f}")
PY
