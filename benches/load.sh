#!/usr/bin/env bash
# The load benchmark: drover against direct access, nginx and LiteLLM, in one run, with the
# same load generators and the same request bodies. Loopback only.
#
#   benches/load.sh            # installs what it needs (as root), builds, measures, prints
#                              # the tables, and writes them to bench-results/load.md
#   BASELINE=966fad6 benches/load.sh
#                              # also builds drover at that git revision (a worktree under
#                              # target/, its own target dir) and measures it as one more
#                              # contestant, interleaved with this build: throughput, latency,
#                              # RSS with open streams, as ratios this build / baseline
#   SKIP_LITELLM=1             # leave LiteLLM out (no install, no run)
#
# Backends that are never the bottleneck: nginx answering canned Ollama /api/chat and OpenAI
# /v1/chat/completions JSON (two of them, for the round-robin proxies), and a streaming
# backend (the tests' mock Ollama, release build) that emits N chunks with a fixed gap.
# Contestants: (a) direct to the backend, (b) drover, (c) nginx as a plain round-robin
# proxy over the two backends, (d) LiteLLM's proxy (fewer requests: it is slow), (e) the
# floor: a stock Pingora pass-through ProxyHttp round-robining over the same two backends
# (examples/passthrough.rs, same lock file, same thread count as drover), built as a stock
# program is (cargo's default release settings, the system allocator: profile `floor`), and
# (f) the same floor built as drover is (drover's release profile and allocator:
# examples/passthrough_jemalloc.rs), to tell what the build gains from what drover's code costs.
# Figures: requests/s at fixed concurrency (wrk); p50/p99 latency at a fixed moderate rate
# (loadgen, open loop); for streams, time to first byte and the delay each line gains
# (loadgen); drover's RSS idle and with 2,000 open streams. Every figure also as a ratio
# to direct and to nginx.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/bench-results
WORK=$(mktemp -d /tmp/drover-load.XXXXXX)
DURATION=${DURATION:-5}           # seconds per wrk run
ROUNDS=${ROUNDS:-3}               # runs per throughput and latency figure (the median is reported)
CONNS=${CONNS:-32}                # wrk connections
RATE=${RATE:-500}                 # requests/s for the latency runs
RATE_SECONDS=${RATE_SECONDS:-10}
LITELLM_DURATION=${LITELLM_DURATION:-5}
STREAM_CHUNKS=20
STREAM_GAP_MS=20
HOLD_STREAMS=2000
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; for c in backends proxy; do nginx -c "$WORK/$c.conf" -s stop 2>/dev/null || true; done; }
trap cleanup EXIT
log() { echo "load: $*" >&2; }

# ---- what it needs ----------------------------------------------------------------------
scripts/setup --no-python
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
command -v redis-server >/dev/null || need+=(redis-server)   # limits shared through Redis
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
SKIP_LITELLM=${SKIP_LITELLM:-}
if [ -z "$SKIP_LITELLM" ] && ! .venv-bench/bin/python -c "import litellm" 2>/dev/null; then
  log "installing litellm[proxy] into .venv-bench"
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install -q 'litellm[proxy]'
fi
cargo build --release --bin drover --example mock_ollama --example loadgen --example passthrough_jemalloc
cargo build --profile floor --example passthrough
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release
FLOOR_BIN=$TARGET/floor/examples/passthrough
TUNED_FLOOR_BIN=$BIN/examples/passthrough_jemalloc
BASELINE=${BASELINE:-}
if [ -n "$BASELINE" ]; then
  # The baseline revision, built apart so this build's target/ stays as it is.
  BASE_SRC=$TARGET/baseline-src
  if [ ! -d "$BASE_SRC" ] || [ "$(git -C "$BASE_SRC" rev-parse HEAD 2>/dev/null)" != "$(git rev-parse "$BASELINE")" ]; then
    git worktree remove --force "$BASE_SRC" 2>/dev/null || rm -rf "$BASE_SRC"
    git worktree prune
    git worktree add --detach "$BASE_SRC" "$BASELINE" >&2
  fi
  (cd "$BASE_SRC" && CARGO_TARGET_DIR=$TARGET/baseline cargo build --release --bin drover)
  BASE_BIN=$TARGET/baseline/release/drover
fi
ulimit -n "$(ulimit -Hn)"   # 2,000 streams need about 4,000 descriptors in drover

# ---- backends and proxies ---------------------------------------------------------------
# A port already taken (a run still going, or one that was killed) would measure the wrong
# process: refuse to start instead.
for port in 18178 18179 18180 18181 18182 18183 18184 18185 18186 18187 18188 18189 18190 18193 18196 18197 18198 18199 \
    18200 18201 18202 18203 18204 18205 18210 18211 18212 18215; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    log "port $port is already in use (another run, or what a killed run left behind); stop it first"
    exit 1
  fi
done
OLLAMA_JSON='{"model":"bench:1b","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":"Hello there, how can I help?"},"done":true,"done_reason":"stop","total_duration":1000000,"load_duration":1000,"prompt_eval_count":12,"eval_count":8,"eval_duration":500000}'
OPENAI_JSON='{"id":"chatcmpl-1","object":"chat.completion","created":0,"model":"bench:1b","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there, how can I help?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20}}'
backend_block() {
  cat <<EOF
  server {
    listen 127.0.0.1:$1 reuseport; keepalive_requests 1000000;
    default_type application/json;
    location = /api/chat { return 200 '$OLLAMA_JSON'; }
    location = /v1/chat/completions { return 200 '$OPENAI_JSON'; }
    location = /api/version { return 200 '{"version":"0.6.5"}'; }
    location = /api/tags { return 200 '{"models":[{"name":"bench:1b","model":"bench:1b","size":1}]}'; }
    location = /api/ps { return 200 '{"models":[]}'; }
    location = /v1/models { return 200 '{"object":"list","data":[{"id":"bench:1b","object":"model"}]}'; }
  }
EOF
}
# Backends and the nginx proxy run as two nginx instances, so that the proxy, like drover,
# hands each request to another process (sharing worker processes with its backends would
# let nginx serve a proxied request without a context switch).
nginx_head() {
  cat <<EOF
worker_processes 2;
pid $WORK/$1.pid;
error_log $WORK/$1-error.log warn;
events { worker_connections 16384; }
EOF
}
cat > "$WORK/backends.conf" <<EOF
$(nginx_head backends)
http {
  access_log off;
  client_body_buffer_size 1m;
$(backend_block 18181)
$(backend_block 18182)
}
EOF
cat > "$WORK/proxy.conf" <<EOF
$(nginx_head proxy)
http {
  access_log off;
  client_body_buffer_size 1m;
  upstream backends { server 127.0.0.1:18181; server 127.0.0.1:18182; keepalive 256; }
  upstream stream_backend { server 127.0.0.1:18190; keepalive 256; }
  server {
    listen 127.0.0.1:18180; keepalive_requests 1000000;
    location / { proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
  server {
    listen 127.0.0.1:18185; keepalive_requests 1000000;
    location / { proxy_pass http://stream_backend; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_buffering off; }
  }
}
EOF
nginx -c "$WORK/backends.conf"
nginx -c "$WORK/proxy.conf"

"$BIN/examples/mock_ollama" 18190 bench:1b "$STREAM_GAP_MS" "$STREAM_CHUNKS" >/dev/null &
PIDS+=($!)

cat > "$WORK/drover.yaml" <<EOF
server: { listen: "127.0.0.1:18183", metrics_listen: "127.0.0.1:18193", threads: 2 }
database: { url: "sqlite://$WORK/drover.db" }
logging: { access_log: "$WORK/access.log" }
pingora: { upgrade_sock: "$WORK/upgrade.sock", pid_file: "$WORK/drover.pid" }
load_balancer: { max_concurrency: 100000, queue_timeout: 60s }
cache: { enabled: true }
servers: [ "http://127.0.0.1:18181", "http://127.0.0.1:18182", "http://127.0.0.1:18190" ]
routes:
  - { virtual_model_name: bench, server_url: "http://127.0.0.1:18181", actual_model_name: "bench:1b" }
  - { virtual_model_name: bench, server_url: "http://127.0.0.1:18182", actual_model_name: "bench:1b" }
  - { virtual_model_name: stream, server_url: "http://127.0.0.1:18190", actual_model_name: "bench:1b" }
EOF
RUST_LOG=warn "$BIN/drover" serve -c "$WORK/drover.yaml" 2>"$WORK/drover.log" &
DROVER_PID=$!
PIDS+=($DROVER_PID)
# The baseline drover: same fleet and routes, its own ports and files.
# The floor: Pingora's own pass-through ProxyHttp, as many threads as drover; built stock, and
# built as drover is. A third copy of the stock floor forwards to the streaming backend, for
# the memory held per open stream.
"$FLOOR_BIN" 127.0.0.1:18199 2 127.0.0.1:18181,127.0.0.1:18182 2>"$WORK/passthrough.log" &
FLOOR_PID=$!
PIDS+=($FLOOR_PID)
"$TUNED_FLOOR_BIN" 127.0.0.1:18179 2 127.0.0.1:18181,127.0.0.1:18182 2>"$WORK/passthrough-tuned.log" &
TUNED_FLOOR_PID=$!
PIDS+=($TUNED_FLOOR_PID)
"$FLOOR_BIN" 127.0.0.1:18178 2 127.0.0.1:18190 2>"$WORK/passthrough-stream.log" &
STREAM_FLOOR_PID=$!
PIDS+=($STREAM_FLOOR_PID)
TARGETS="D:18181 R:18183 N:18180 P:18199 PT:18179"
if [ -n "$BASELINE" ]; then
  sed -e 's/18183/18186/; s/18193/18196/' -e "s|$WORK/drover.db|$WORK/base.db|; s|$WORK/access.log|$WORK/base-access.log|" \
      -e "s|$WORK/upgrade.sock|$WORK/base-upgrade.sock|; s|$WORK/drover.pid|$WORK/base.pid|" "$WORK/drover.yaml" > "$WORK/base.yaml"
  RUST_LOG=warn "$BASE_BIN" serve -c "$WORK/base.yaml" 2>"$WORK/base.log" &
  BASE_PID=$!
  PIDS+=($BASE_PID)
  TARGETS="$TARGETS B:18186"
fi

# The same drover with API keys required and both rate limits on (limits high enough never
# to refuse): what checking a key and two token buckets costs per request.
sed -e 's/18183/18187/; s/18193/18197/' -e "s|$WORK/drover.db|$WORK/keys.db|; s|$WORK/access.log|$WORK/keys-access.log|" \
    -e "s|$WORK/upgrade.sock|$WORK/keys-upgrade.sock|; s|$WORK/drover.pid|$WORK/keys.pid|" "$WORK/drover.yaml" > "$WORK/keys.yaml"
cat >> "$WORK/keys.yaml" <<EOF
auth: { require_keys: true }
limits: { client_requests_per_minute: 1000000000 }
EOF
RUST_LOG=warn "$BIN/drover" serve -c "$WORK/keys.yaml" 2>"$WORK/keys.log" &
KEYS_PID=$!
PIDS+=($KEYS_PID)

# The same again with its limits judged in Redis (state.redis_url), sharing the keys' store:
# what fleet-wide limits cost per request (one script call to Redis for the key's and the
# client's buckets).
redis-server --port 18189 --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
sed -e 's/18187/18188/; s/18197/18198/' -e "s|$WORK/keys-access.log|$WORK/redis-access.log|" \
    -e "s|$WORK/keys-upgrade.sock|$WORK/redis-upgrade.sock|; s|$WORK/keys.pid|$WORK/redis-drover.pid|" "$WORK/keys.yaml" > "$WORK/redis.yaml"
cat >> "$WORK/redis.yaml" <<EOF
state: { redis_url: "redis://127.0.0.1:18189" }
EOF

cat > "$WORK/litellm.yaml" <<EOF
model_list:
  - model_name: bench
    litellm_params: { model: openai/bench:1b, api_base: "http://127.0.0.1:18181/v1", api_key: unused }
general_settings:
  # No auth, as for drover and nginx here (LiteLLM refuses to start without a key otherwise).
  dangerously_permit_weak_or_unset_master_key: true
EOF
if [ -z "$SKIP_LITELLM" ]; then
  (cd "$WORK" && exec "$ROOT/.venv-bench/bin/litellm" --config "$WORK/litellm.yaml" --host 127.0.0.1 --port 18184 --num_workers 1 \
    >"$WORK/litellm.log" 2>&1) &
  PIDS+=($!)
fi

wait_http() { for _ in $(seq 1 600); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; log "$1 did not answer"; return 1; }
wait_http http://127.0.0.1:18181/api/version
wait_http http://127.0.0.1:18183/status
wait_http http://127.0.0.1:18199/
wait_http http://127.0.0.1:18187/health
BENCH_KEY=$(curl -sf -X POST http://127.0.0.1:18187/admin/keys -H 'content-type: application/json' \
  -d '{"name": "bench", "requests_per_minute": 1000000000, "tokens_per_minute": 1000000000000}' \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')
# The Redis-backed drover starts after the key exists in the shared store, and must say its
# shared state is ok.
RUST_LOG=warn "$BIN/drover" serve -c "$WORK/redis.yaml" 2>"$WORK/redis-drover.log" &
REDIS_DROVER_PID=$!
PIDS+=($REDIS_DROVER_PID)
wait_http http://127.0.0.1:18188/health
curl -sf http://127.0.0.1:18188/health | grep -q '"shared_state":{"redis":"127.0.0.1:18189","state":"ok"}' \
  || { log "the Redis-backed drover does not use Redis: $(curl -s http://127.0.0.1:18188/health)"; exit 1; }
[ -z "$BASELINE" ] || wait_http http://127.0.0.1:18186/status
wait_http http://127.0.0.1:18190/api/version

# For CPU per request, each contestant again, started on core 0 alone (the load runs on core
# 1): drover without server.threads, so that it runs the one thread its default gives it on
# one core, and the floors with one thread. Same stores, ports of their own.
one_core() { # NAME SOURCE_YAML PORT METRICS_PORT BINARY
  sed -E -e "s/, threads: 2//" -e "s/listen: \"127.0.0.1:[0-9]+\"/listen: \"127.0.0.1:$3\"/" \
    -e "s/metrics_listen: \"127.0.0.1:[0-9]+\"/metrics_listen: \"127.0.0.1:$4\"/" \
    -e "s|access_log: \"[^\"]*\"|access_log: \"$WORK/$1-access.log\"|" \
    -e "s|upgrade_sock: \"[^\"]*\"|upgrade_sock: \"$WORK/$1-upgrade.sock\"|; s|pid_file: \"[^\"]*\"|pid_file: \"$WORK/$1.pid\"|" \
    "$2" > "$WORK/$1.yaml"
  RUST_LOG=warn taskset -c 0 "$5" serve -c "$WORK/$1.yaml" 2>"$WORK/$1.log" &
  PIDS+=($!)
  printf -v "$(tr '[:lower:]-' '[:upper:]_' <<<"$1")_PID" '%s' "$!"
}
one_core one-drover "$WORK/drover.yaml" 18200 18210 "$BIN/drover"
one_core one-keys "$WORK/keys.yaml" 18201 18211 "$BIN/drover"
one_core one-redis "$WORK/redis.yaml" 18202 18212 "$BIN/drover"
[ -z "$BASELINE" ] || one_core one-base "$WORK/base.yaml" 18205 18215 "$BASE_BIN"
taskset -c 0 "$FLOOR_BIN" 127.0.0.1:18203 1 127.0.0.1:18181,127.0.0.1:18182 2>"$WORK/one-floor.log" &
ONE_FLOOR_PID=$!
PIDS+=($ONE_FLOOR_PID)
taskset -c 0 "$TUNED_FLOOR_BIN" 127.0.0.1:18204 1 127.0.0.1:18181,127.0.0.1:18182 2>"$WORK/one-tuned.log" &
ONE_TUNED_PID=$!
PIDS+=($ONE_TUNED_PID)
for port in 18200 18201 18202 ${BASELINE:+18205}; do wait_http "http://127.0.0.1:$port/health"; done
wait_http http://127.0.0.1:18203/
wait_http http://127.0.0.1:18204/
# Each proxy's worker threads carry its name ("drover", "Pingora HTTP..."; drover's main
# thread is named after the binary too, hence the -1): one each on one core.
log "worker threads on one core: drover $(( $(grep -lx drover /proc/"$ONE_DROVER_PID"/task/*/comm | wc -l) - 1 )), floor $(grep -l '^Pingora HTTP' /proc/"$ONE_FLOOR_PID"/task/*/comm | wc -l)"
sleep 1

# ---- bodies -----------------------------------------------------------------------------
echo '{"model":"bench","stream":false,"messages":[{"role":"user","content":"Say hello in one short sentence, please."}]}' > "$WORK/chat.json"
echo '{"model":"bench","messages":[{"role":"user","content":"Say hello in one short sentence, please."}]}' > "$WORK/openai.json"
# A deterministic request (temperature 0): after the first, every one is a response-cache hit.
echo '{"model":"bench","stream":false,"options":{"temperature":0},"messages":[{"role":"user","content":"Say hello in one short sentence, please."}]}' > "$WORK/cached.json"
echo '{"model":"stream","messages":[{"role":"user","content":"Say hello."}]}' > "$WORK/stream.json"
sed 's/"stream"/"bench:1b"/' "$WORK/stream.json" > "$WORK/stream-direct.json"
cat > "$WORK/post.lua" <<'EOF'
local f = io.open(os.getenv("BODY"), "r"); local body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.body = body; wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("KEY"); if key and key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end
EOF

# wrk requests/s; non-2xx answers are reported and make the figure invalid.
rps() { # URL BODY SECONDS CONNS
  local out; out=$(BODY=$2 wrk -t2 -c"$4" -d"$3"s -s "$WORK/post.lua" "$1" 2>&1)
  if grep -q "Non-2xx" <<<"$out"; then log "non-2xx answers from $1: $(grep Non-2xx <<<"$out")"; fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
rss_kb() { local p; for p in "$@"; do awk '/VmRSS/ {print $2}' "/proc/$p/status"; done | awk '{ s += $1 } END { print s }'; }

RSS_IDLE=$(rss_kb "$DROVER_PID")
[ -z "$BASELINE" ] || B_RSS_IDLE=$(rss_kb "$BASE_PID")
P_RSS_IDLE=$(rss_kb "$FLOOR_PID")
PT_RSS_IDLE=$(rss_kb "$TUNED_FLOOR_PID")
PS_RSS_IDLE=$(rss_kb "$STREAM_FLOOR_PID")
# The nginx proxy instance: its master and workers.
NGINX_PIDS=("$(cat "$WORK/proxy.pid")" $(pgrep -P "$(cat "$WORK/proxy.pid")"))
N_RSS_IDLE=$(rss_kb "${NGINX_PIDS[@]}")

# ---- throughput at fixed concurrency ----------------------------------------------------
log "throughput: wrk -c$CONNS for ${DURATION}s each, $ROUNDS rounds"
# Warm each path (connection pools, JIT of nothing, page cache).
for url in 18181/api/chat 18183/api/chat 18180/api/chat 18199/api/chat 18179/api/chat ${BASELINE:+18186/api/chat}; do rps "http://127.0.0.1:$url" "$WORK/chat.json" 2 "$CONNS" >/dev/null; done
# Machine noise moves single runs by 10-20%: each figure is the median of $ROUNDS runs,
# interleaved (direct, drover, nginx, direct, ...) so that a slow spell hits every target.
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
declare -A RUNS
for _ in $(seq 1 "$ROUNDS"); do
  for t in $TARGETS; do
    RUNS[${t%%:*}_API]+=" $(rps "http://127.0.0.1:${t#*:}/api/chat" "$WORK/chat.json" "$DURATION" "$CONNS")"
    RUNS[${t%%:*}_V1]+=" $(rps "http://127.0.0.1:${t#*:}/v1/chat/completions" "$WORK/openai.json" "$DURATION" "$CONNS")"
  done
done
for k in D_API R_API N_API P_API PT_API D_V1 R_V1 N_V1 P_V1 PT_V1 ${BASELINE:+B_API B_V1}; do printf -v "$k" '%s' "$(median <<<"${RUNS[$k]}")"; log "$k runs:${RUNS[$k]}"; done
if [ -z "$SKIP_LITELLM" ] && wait_http http://127.0.0.1:18184/health/liveliness 2>/dev/null; then
  rps http://127.0.0.1:18184/v1/chat/completions "$WORK/openai.json" 2 8 >/dev/null
  L_V1=$(rps http://127.0.0.1:18184/v1/chat/completions "$WORK/openai.json" "$LITELLM_DURATION" 8)
else
  L_V1=0
fi

# ---- CPU per request: keys and limits on and off (and the baseline) ----------------------
# CPU time the process used during one wrk run (utime + stime from /proc), per request answered.
# The contestants here were started on core 0 (one_core above); wrk and the backends run on
# core 1, so that a contestant does not share its core with the load it measures. Single runs
# still move by 10-20% on a VM.
cpu_us() { # PID URL KEY [BODY] -> microseconds of CPU per request
  local before after out n body=${4:-$WORK/chat.json}
  before=$(awk '{print $14 + $15}' "/proc/$1/stat")
  out=$(BODY=$body KEY=$3 taskset -c 1 wrk -t1 -c16 -d"$DURATION"s -s "$WORK/post.lua" "$2" 2>&1)
  after=$(awk '{print $14 + $15}' "/proc/$1/stat")
  if grep -q "Non-2xx" <<<"$out"; then log "non-2xx answers from $2: $(grep Non-2xx <<<"$out")"; fi
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$n" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }'
}
CPU_ROUNDS=${CPU_ROUNDS:-5}
log "CPU per request: keys and limits off and on${BASELINE:+, and the baseline}, $CPU_ROUNDS rounds"
BACKEND_PIDS=("$(cat "$WORK/backends.pid")" $(pgrep -P "$(cat "$WORK/backends.pid")"))
for p in "${BACKEND_PIDS[@]}"; do taskset -apc 1 "$p" >/dev/null; done
for _ in $(seq 1 "$CPU_ROUNDS"); do
  RUNS[CPU_R]+=" $(cpu_us "$ONE_DROVER_PID" http://127.0.0.1:18200/api/chat "")"
  RUNS[CPU_K]+=" $(cpu_us "$ONE_KEYS_PID" http://127.0.0.1:18201/api/chat "$BENCH_KEY")"
  RUNS[CPU_KR]+=" $(cpu_us "$ONE_REDIS_PID" http://127.0.0.1:18202/api/chat "$BENCH_KEY")"
  RUNS[CPU_C]+=" $(cpu_us "$ONE_DROVER_PID" http://127.0.0.1:18200/api/chat "" "$WORK/cached.json")"
  RUNS[CPU_P]+=" $(cpu_us "$ONE_FLOOR_PID" http://127.0.0.1:18203/api/chat "")"
  RUNS[CPU_PT]+=" $(cpu_us "$ONE_TUNED_PID" http://127.0.0.1:18204/api/chat "")"
  RUNS[CPU_R1]+=" $(cpu_us "$ONE_DROVER_PID" http://127.0.0.1:18200/v1/chat/completions "" "$WORK/openai.json")"
  RUNS[CPU_P1]+=" $(cpu_us "$ONE_FLOOR_PID" http://127.0.0.1:18203/v1/chat/completions "" "$WORK/openai.json")"
  RUNS[CPU_PT1]+=" $(cpu_us "$ONE_TUNED_PID" http://127.0.0.1:18204/v1/chat/completions "" "$WORK/openai.json")"
  [ -z "$BASELINE" ] || RUNS[CPU_B]+=" $(cpu_us "$ONE_BASE_PID" http://127.0.0.1:18205/api/chat "")"
done
for p in "${BACKEND_PIDS[@]}"; do taskset -apc "0-$(( $(nproc) - 1 ))" "$p" >/dev/null; done
for k in CPU_R CPU_K CPU_KR CPU_C CPU_P CPU_PT CPU_R1 CPU_P1 CPU_PT1 ${BASELINE:+CPU_B}; do printf -v "$k" '%s' "$(median <<<"${RUNS[$k]}")"; log "$k runs:${RUNS[$k]}"; done

# ---- latency at a fixed moderate rate ---------------------------------------------------
log "latency: $RATE requests/s for ${RATE_SECONDS}s each, $ROUNDS rounds"
LG=$BIN/examples/loadgen
for _ in $(seq 1 "$ROUNDS"); do
  for t in $TARGETS; do
    read -r p50 p99 _ failed <<<"$("$LG" rate "http://127.0.0.1:${t#*:}/api/chat" "$WORK/chat.json" "$RATE" "$RATE_SECONDS")"
    RUNS[${t%%:*}_P50]+=" $p50"; RUNS[${t%%:*}_P99]+=" $p99"; RUNS[${t%%:*}_FAIL]=$(( ${RUNS[${t%%:*}_FAIL]:-0} + failed ))
  done
done
for k in D_P50 D_P99 R_P50 R_P99 N_P50 N_P99 P_P50 P_P99 PT_P50 PT_P99 ${BASELINE:+B_P50 B_P99}; do printf -v "$k" '%s' "$(median <<<"${RUNS[$k]}")"; log "$k runs:${RUNS[$k]}"; done
D_FAIL=${RUNS[D_FAIL]}; R_FAIL=${RUNS[R_FAIL]}; N_FAIL=${RUNS[N_FAIL]}; P_FAIL=${RUNS[P_FAIL]:-0}; B_FAIL=${RUNS[B_FAIL]:-0}
# Limits judged here and in Redis: the latency each adds at the same rate, interleaved.
for _ in $(seq 1 "$ROUNDS"); do
  for t in K:18187 KR:18188; do
    read -r p50 p99 _ failed <<<"$(KEY=$BENCH_KEY "$LG" rate "http://127.0.0.1:${t#*:}/api/chat" "$WORK/chat.json" "$RATE" "$RATE_SECONDS")"
    RUNS[${t%%:*}_P50]+=" $p50"; RUNS[${t%%:*}_P99]+=" $p99"; RUNS[${t%%:*}_FAIL]=$(( ${RUNS[${t%%:*}_FAIL]:-0} + failed ))
  done
done
for k in K_P50 K_P99 KR_P50 KR_P99; do printf -v "$k" '%s' "$(median <<<"${RUNS[$k]}")"; log "$k runs:${RUNS[$k]}"; done
K_FAIL=${RUNS[K_FAIL]}; KR_FAIL=${RUNS[KR_FAIL]}
LRATE=$((RATE / 10))
L_P50=nan; L_P99=nan; L_FAIL=0
if [ -z "$SKIP_LITELLM" ]; then
  read -r L_P50 L_P99 _ L_FAIL <<<"$("$LG" rate http://127.0.0.1:18184/v1/chat/completions "$WORK/openai.json" "$LRATE" "$RATE_SECONDS" 2>/dev/null || echo "nan nan 0 0")"
fi

# ---- streams: time to first byte and the delay each line gains in transit -------------------------
log "streams: $STREAM_CHUNKS chunks ${STREAM_GAP_MS} ms apart, 20 streams each, taken in turn"
{ read -r S_D; read -r S_R; read -r S_N; } < <("$LG" stream http://127.0.0.1:18190/api/chat "$WORK/stream-direct.json" 20 \
  http://127.0.0.1:18183/api/chat "$WORK/stream.json" http://127.0.0.1:18185/api/chat "$WORK/stream-direct.json")
# Mean over streamed lines of (transit through the proxy - transit direct), from median transit
# times; a line's transit is its arrival minus the created_at the backend stamped on it.
gain() { paste <(tr ' ' '\n' <<<"$1" | tail -n +2) <(tr ' ' '\n' <<<"$2" | tail -n +2) | awk '{ s += $1 - $2; n++ } END { printf "%.3f", s / n }'; }
ttfb() { cut -d' ' -f1 <<<"$1"; }
GAIN_R=$(gain "$S_R" "$S_D"); GAIN_N=$(gain "$S_N" "$S_D")

# ---- memory with 2,000 open streams: drover, and the nginx proxy for reference -----------
log "memory: $HOLD_STREAMS streams held open through drover, then through nginx"
pkill -f "mock_ollama 18190" || true
"$BIN/examples/mock_ollama" 18190 bench:1b 1000 30 >/dev/null &
PIDS+=($!)
wait_http http://127.0.0.1:18190/api/version
# hold URL BODY PIDS...: opens the streams, samples the summed RSS of PIDS; prints "opened peak_kb".
hold() {
  local url=$1 body=$2; shift 2
  "$LG" hold "$url" "$body" "$HOLD_STREAMS" 8 > "$WORK/hold.txt" &
  local h=$! peak=0 r
  for _ in $(seq 1 70); do r=$(rss_kb "$@"); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.1; done
  wait $h
  echo "$(awk '{print $2}' "$WORK/hold.txt") $peak"
}
read -r OPENED PEAK <<<"$(hold http://127.0.0.1:18183/api/chat "$WORK/stream.json" "$DROVER_PID")"
read -r N_OPENED N_PEAK <<<"$(hold http://127.0.0.1:18185/api/chat "$WORK/stream-direct.json" "${NGINX_PIDS[@]}")"
read -r P_OPENED P_PEAK <<<"$(hold http://127.0.0.1:18178/api/chat "$WORK/stream-direct.json" "$STREAM_FLOOR_PID")"
[ -z "$BASELINE" ] || read -r B_OPENED B_PEAK <<<"$(hold http://127.0.0.1:18186/api/chat "$WORK/stream.json" "$BASE_PID")"

# ---- report -----------------------------------------------------------------------------
mb() { awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}'; }
per_stream() { awk -v p="$1" -v i="$2" -v n="$3" 'BEGIN { if (n > 0) printf "%.1f", (p - i) / n; else print "-" }'; }
PER_STREAM=$(per_stream "$PEAK" "$RSS_IDLE" "$OPENED")
P_PER_STREAM=$(per_stream "$P_PEAK" "$PS_RSS_IDLE" "$P_OPENED")
{
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); drover threads 2, nginx workers 2; $(date -u +%Y-%m-%d)."
  echo
  echo "### Throughput (wrk -t2 -c$CONNS, median of $ROUNDS interleaved runs of ${DURATION}s; LiteLLM -c8, one run of ${LITELLM_DURATION}s)"
  echo
  echo "| path | target | requests/s | vs direct | vs nginx |"
  echo "|---|---|---|---|---|"
  echo "| /api/chat | direct | $D_API | 1.00 | $(ratio "$D_API" "$N_API") |"
  echo "| /api/chat | drover | $R_API | $(ratio "$R_API" "$D_API") | $(ratio "$R_API" "$N_API") |"
  echo "| /api/chat | nginx | $N_API | $(ratio "$N_API" "$D_API") | 1.00 |"
  echo "| /v1/chat/completions | direct | $D_V1 | 1.00 | $(ratio "$D_V1" "$N_V1") |"
  echo "| /v1/chat/completions | drover | $R_V1 | $(ratio "$R_V1" "$D_V1") | $(ratio "$R_V1" "$N_V1") |"
  echo "| /v1/chat/completions | nginx | $N_V1 | $(ratio "$N_V1" "$D_V1") | 1.00 |"
  echo "| /v1/chat/completions | LiteLLM | $L_V1 | $(ratio "$L_V1" "$D_V1") | $(ratio "$L_V1" "$N_V1") |"
  echo
  echo "drover / LiteLLM throughput: $(ratio "$R_V1" "$L_V1")x"
  echo
  echo "### Latency at $RATE requests/s (LiteLLM at $LRATE/s), open loop, ${RATE_SECONDS}s per run; median of $ROUNDS interleaved runs (LiteLLM: one)"
  echo
  echo "| target | p50 ms | p99 ms | failed | p99 added vs direct (ms) | p99 vs direct | p99 vs nginx |"
  echo "|---|---|---|---|---|---|---|"
  # lat NAME P50 P99 FAILED: one latency row, with the p99 against direct and nginx.
  lat() { echo "| $1 | $2 | $3 | $4 | $(awk -v a="$3" -v b="$D_P99" 'BEGIN{printf "%.3f", a-b}') | $(ratio "$3" "$D_P99") | $(ratio "$3" "$N_P99") |"; }
  lat direct "$D_P50" "$D_P99" "$D_FAIL"
  lat drover "$R_P50" "$R_P99" "$R_FAIL"
  lat nginx "$N_P50" "$N_P99" "$N_FAIL"
  lat LiteLLM "$L_P50" "$L_P99" "$L_FAIL"
  echo
  echo "### Streams ($STREAM_CHUNKS NDJSON lines, ${STREAM_GAP_MS} ms apart; medians of 20 streams per target, targets taken in turn)"
  echo
  echo "| target | time to first byte ms | TTFB vs direct | TTFB vs nginx | delay each line gains ms (transit vs direct) |"
  echo "|---|---|---|---|---|"
  for row in "direct:$S_D:0" "drover:$S_R:$GAIN_R" "nginx (proxy_buffering off):$S_N:$GAIN_N"; do
    IFS=: read -r name timings gain <<<"$row"
    echo "| $name | $(ttfb "$timings") | $(ratio "$(ttfb "$timings")" "$(ttfb "$S_D")") | $(ratio "$(ttfb "$timings")" "$(ttfb "$S_N")") | $gain |"
  done
  echo
  echo "### CPU per request, /api/chat (utime + stime over a wrk -c16 run / requests; each contestant started on core 0, one proxy thread, the load on core 1; median of $CPU_ROUNDS interleaved runs)"
  echo
  echo "| drover | CPU us per request | vs keys and limits off |"
  echo "|---|---|---|"
  echo "| keys and limits off | $CPU_R | 1.00 |"
  echo "| auth.require_keys, a key with both limits, limits.client_requests_per_minute | $CPU_K | $(ratio "$CPU_K" "$CPU_R") |"
  echo "| the same, limits judged in Redis (state.redis_url: fleet-wide) | $CPU_KR | $(ratio "$CPU_KR" "$CPU_R") |"
  echo "| a response-cache hit (temperature 0, answered by drover: no queue place, slot or server) | $CPU_C | $(ratio "$CPU_C" "$CPU_R") |"
  [ -z "$BASELINE" ] || echo "| baseline $BASELINE | $CPU_B | $(ratio "$CPU_B" "$CPU_R") |"
  echo
  echo "### Against Pingora's floor (examples/passthrough.rs: a pass-through ProxyHttp, round robin, no body work; same threads, same lock file)"
  echo
  echo "The floor built stock (cargo's default release settings, the system allocator), and built as drover is (its release profile, jemalloc)."
  echo
  echo "| figure | drover | floor, stock | drover / stock floor | floor, built as drover | drover / that floor |"
  echo "|---|---|---|---|---|---|"
  echo "| CPU us per forwarded /api/chat (one core, one thread, median of $CPU_ROUNDS) | $CPU_R | $CPU_P | $(ratio "$CPU_R" "$CPU_P") | $CPU_PT | $(ratio "$CPU_R" "$CPU_PT") |"
  echo "| CPU us per forwarded /v1/chat/completions (the same) | $CPU_R1 | $CPU_P1 | $(ratio "$CPU_R1" "$CPU_P1") | $CPU_PT1 | $(ratio "$CPU_R1" "$CPU_PT1") |"
  echo "| /api/chat requests/s (2 threads) | $R_API | $P_API | $(ratio "$R_API" "$P_API") | $PT_API | $(ratio "$R_API" "$PT_API") |"
  echo "| /v1/chat/completions requests/s | $R_V1 | $P_V1 | $(ratio "$R_V1" "$P_V1") | $PT_V1 | $(ratio "$R_V1" "$PT_V1") |"
  echo "| p99 ms at $RATE/s | $R_P99 | $P_P99 | $(ratio "$R_P99" "$P_P99") | $PT_P99 | $(ratio "$R_P99" "$PT_P99") |"
  echo "| RSS idle MB | $(mb "$RSS_IDLE") | $(mb "$P_RSS_IDLE") | $(ratio "$RSS_IDLE" "$P_RSS_IDLE") | $(mb "$PT_RSS_IDLE") | $(ratio "$RSS_IDLE" "$PT_RSS_IDLE") |"
  echo "| RSS MB, $HOLD_STREAMS open streams (opened: drover $OPENED, floor $P_OPENED) | $(mb "$PEAK") | $(mb "$P_PEAK") | $(ratio "$PEAK" "$P_PEAK") | - | - |"
  echo "| RSS KB per open stream ((peak - idle) / streams) | $PER_STREAM | $P_PER_STREAM | $(ratio "$PER_STREAM" "$P_PER_STREAM") | - | - |"
  echo
  echo "### Limits in Redis: latency at $RATE requests/s (median of $ROUNDS interleaved runs)"
  echo
  echo "| drover | p50 ms | p99 ms | p99 added vs limits off, ms | failed |"
  echo "|---|---|---|---|---|"
  added() { awk -v a="$1" -v b="$R_P99" 'BEGIN{printf "%.3f", a-b}'; }
  echo "| keys and limits off | $R_P50 | $R_P99 | 0 | $R_FAIL |"
  echo "| keys and limits, in this process | $K_P50 | $K_P99 | $(added "$K_P99") | $K_FAIL |"
  echo "| keys and limits, in Redis | $KR_P50 | $KR_P99 | $(added "$KR_P99") | $KR_FAIL |"
  echo
  echo "### Memory (RSS; nginx: the proxy instance's master and workers)"
  echo
  echo "| state | drover MB | nginx MB | drover vs nginx |"
  echo "|---|---|---|---|"
  echo "| idle | $(mb "$RSS_IDLE") | $(mb "$N_RSS_IDLE") | $(ratio "$RSS_IDLE" "$N_RSS_IDLE") |"
  echo "| $HOLD_STREAMS streams open at once, peak (opened: drover $OPENED, nginx $N_OPENED) | $(mb "$PEAK") | $(mb "$N_PEAK") | $(ratio "$PEAK" "$N_PEAK") |"
  echo
  echo "### Against the targets"
  echo
  # check NAME VALUE OP LIMIT: one table row, "yes" when VALUE OP LIMIT holds.
  check() { awk -v n="$1" -v v="$2" -v op="$3" -v l="$4" 'BEGIN {
    ok = (op == ">=") ? (v + 0 >= l + 0) : (v + 0 <= l + 0); printf "| %s | %s | %s %s | %s |\n", n, v, op, l, ok ? "yes" : "no" }'; }
  echo "| target | measured | wanted | met |"
  echo "|---|---|---|---|"
  check "throughput vs nginx, /api/chat" "$(ratio "$R_API" "$N_API")" ">=" 1
  check "throughput vs nginx, /v1/chat/completions" "$(ratio "$R_V1" "$N_V1")" ">=" 1
  check "throughput vs LiteLLM" "$(ratio "$R_V1" "$L_V1")" ">=" 50
  check "added p99 ms at $RATE/s" "$(awk -v a="$R_P99" -v b="$D_P99" 'BEGIN{printf "%.3f", a-b}')" "<=" 1
  check "delay each streamed line gains, ms" "$GAIN_R" "<=" 1
  check "peak RSS MB, $HOLD_STREAMS open streams" "$(awk -v k="$PEAK" 'BEGIN{printf "%.1f", k/1024}')" "<=" 150
  check "CPU per request with keys and limits on / off" "$(ratio "$CPU_K" "$CPU_R")" "<=" 1.05
  check "CPU per request with limits in Redis / off" "$(ratio "$CPU_KR" "$CPU_R")" "<=" 1.10
  check "p99 added by limits in Redis, ms at $RATE/s" "$(awk -v a="$KR_P99" -v b="$R_P99" 'BEGIN{printf "%.3f", a-b}')" "<=" 1
  check "CPU per forwarded request / the stock floor's, keys and limits off" "$(ratio "$CPU_R" "$CPU_P")" "<=" 1.15
  check "CPU per forwarded request / the stock floor's, keys, limits and Redis on" "$(ratio "$CPU_KR" "$CPU_P")" "<=" 1.2
  check "RSS per open stream / the floor's" "$(ratio "$PER_STREAM" "$P_PER_STREAM")" "<=" 1.2
  if [ -n "$BASELINE" ]; then
    echo
    echo "### This build against the baseline ($BASELINE, $(git log -1 --format=%s "$BASELINE" | cut -c1-60)...), same run, interleaved"
    echo
    echo "| figure | this build | baseline | this / baseline |"
    echo "|---|---|---|---|"
    echo "| /api/chat requests/s | $R_API | $B_API | $(ratio "$R_API" "$B_API") |"
    echo "| /v1/chat/completions requests/s | $R_V1 | $B_V1 | $(ratio "$R_V1" "$B_V1") |"
    echo "| p50 ms at $RATE/s | $R_P50 | $B_P50 | $(ratio "$R_P50" "$B_P50") |"
    echo "| p99 ms at $RATE/s (failed: $R_FAIL vs $B_FAIL) | $R_P99 | $B_P99 | $(ratio "$R_P99" "$B_P99") |"
    echo "| RSS idle MB | $(mb "$RSS_IDLE") | $(mb "$B_RSS_IDLE") | $(ratio "$RSS_IDLE" "$B_RSS_IDLE") |"
    echo "| RSS MB, $HOLD_STREAMS open streams (opened: $OPENED vs $B_OPENED) | $(mb "$PEAK") | $(mb "$B_PEAK") | $(ratio "$PEAK" "$B_PEAK") |"
  fi
} | tee "$OUT/load.md"
