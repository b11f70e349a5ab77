#!/usr/bin/env bash
# Soak: drover under mixed load for SOAK_MINUTES (default 30; CI runs 2), with one of its two
# servers flapping and its routes edited, while its RSS, open file descriptors and OS tasks are
# sampled every 10 s. Fails when one grows without bound (a slope test, see benches/soak.py) or
# too many requests fail. Writes soak.md (table), soak.svg (plot) and samples.csv to
# SOAK_OUT (default bench-results/soak). SOAK_PROFILE=debug uses the debug build (CI).
# Loopback only; ports SOAK_PORT_BASE (default 18280) to +3.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MINUTES=${SOAK_MINUTES:-30}
PROFILE=${SOAK_PROFILE:-release}
OUT=${SOAK_OUT:-$ROOT/bench-results/soak}
P=${SOAK_PORT_BASE:-18280}
P_MOCK=$((P + 1)); P_FLAP=$((P + 2)); P_METRICS=$((P + 3))
WORK=$(mktemp -d /tmp/drover-soak.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
log() { echo "soak: $*" >&2; }

scripts/setup --no-python
if [ "$PROFILE" = release ]; then
  cargo build --release --bin drover --examples
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
else
  cargo build --bin drover --examples
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug
fi
for port in "$P" "$P_MOCK" "$P_FLAP" "$P_METRICS"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then log "port $port is in use; stop what holds it"; exit 1; fi
done

"$BIN/examples/mock_ollama" "$P_MOCK" llama3:latest 5 6 >/dev/null &
PIDS+=($!)
cat > "$WORK/drover.yaml" <<YAML
server: { listen: "127.0.0.1:$P", metrics_listen: "127.0.0.1:$P_METRICS", threads: 2 }
database: { url: "sqlite://$WORK/drover.db" }
logging: { access_log: "$WORK/access.log" }
pingora: { upgrade_sock: "$WORK/upgrade.sock", pid_file: "$WORK/drover.pid" }
load_balancer: { health_check_interval: 1s, rise: 1, fall: 1, cooldown: 2s, max_fails: 1 }
YAML
RUST_LOG=warn "$BIN/drover" serve -c "$WORK/drover.yaml" 2>"$WORK/drover.log" &
DROVER_PID=$!
PIDS+=($DROVER_PID)
for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$P/status" && break; sleep 0.1; done
# Two stored routes (ids 1 and 2): the steady server, and the one that flaps.
for port in "$P_MOCK" "$P_FLAP"; do
  curl -sf -o /dev/null "http://127.0.0.1:$P/admin/servers" -H 'content-type: application/json' \
    -d "{\"virtual_model_name\": \"chat\", \"server_url\": \"http://127.0.0.1:$port\", \"actual_model_name\": \"llama3:latest\"}"
done
log "$MINUTES minutes of mixed load on drover (pid $DROVER_PID, $PROFILE build)"
python3 benches/soak.py "http://127.0.0.1:$P" "$DROVER_PID" \
  "[\"$BIN/examples/mock_ollama\", \"$P_FLAP\", \"llama3:latest\", \"5\", \"6\"]" "$MINUTES" "$OUT"
kill -0 "$DROVER_PID" || { log "drover died: $(tail -5 "$WORK/drover.log")"; exit 1; }
log "wrote $OUT/soak.md and $OUT/soak.svg"
