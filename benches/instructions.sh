#!/usr/bin/env bash
# Instructions per request: what the time-based figures of load.sh cannot tell apart on a
# shared VM (runs there spread by 10%), counted by callgrind, which is repeatable within
# about 0.5% for the same binary and inputs whatever else the machine does.
#
#   benches/instructions.sh BINARY [LABEL]      # e.g. target/release/drover, and a baseline's
#   N=2000 benches/instructions.sh ...          # requests counted (default 1000)
#
# drover with one thread in front of nginx answering a canned /api/chat, loopback only; 200
# requests to warm up, then N /api/chat requests over 4 keep-alive connections, counted.
# Needs valgrind (callgrind_control), nginx and curl.
set -uo pipefail
BIN=$1; TAG=${2:-$1}; N=${N:-1000}
W=$(mktemp -d /tmp/cg.XXXX)
OLLAMA_JSON='{"model":"bench:1b","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":"Hello there, how can I help?"},"done":true,"done_reason":"stop","total_duration":1000000,"load_duration":1000,"prompt_eval_count":12,"eval_count":8,"eval_duration":500000}'
cat > $W/nginx.conf <<NG
worker_processes 1;
pid $W/nginx.pid;
error_log $W/nginx-error.log warn;
events { worker_connections 1024; }
http { access_log off;
  server { listen 127.0.0.1:18581 reuseport; keepalive_requests 1000000; default_type application/json;
    location = /api/chat { return 200 '$OLLAMA_JSON'; }
    location = /api/version { return 200 '{"version":"0.6.5"}'; }
    location = /api/tags { return 200 '{"models":[{"name":"bench:1b","model":"bench:1b","size":1}]}'; }
    location = /api/ps { return 200 '{"models":[]}'; } } }
NG
nginx -c $W/nginx.conf
cat > $W/d.yaml <<Y
server: { listen: "127.0.0.1:18501", metrics_listen: "127.0.0.1:18511", threads: 1 }
database: { url: "sqlite://$W/d.db" }
logging: { access_log: "$W/access.log" }
pingora: { upgrade_sock: "$W/d.sock", pid_file: "$W/d.pid" }
load_balancer: { max_concurrency: 100000, queue_timeout: 60s, health_check_interval: 3600s }
servers: [ "http://127.0.0.1:18581" ]
routes:
  - { virtual_model_name: bench, server_url: "http://127.0.0.1:18581", actual_model_name: "bench:1b" }
Y
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file=$W/cg.out --instr-atstart=no $BIN serve -c $W/d.yaml 2>$W/vg.log &
VP=$!
for i in $(seq 1 120); do curl -s -o /dev/null -H 'Host: localhost' http://127.0.0.1:18501/status && break; sleep 1; done
echo '{"model":"bench","stream":false,"messages":[{"role":"user","content":"Say hello in one short sentence, please."}]}' > $W/chat.json
# Warm: 200 requests.
for i in $(seq 1 200); do curl -s -o /dev/null -H 'Host: localhost' -d @$W/chat.json http://127.0.0.1:18501/api/chat; done
callgrind_control -i on $VP >/dev/null
# Exactly N requests: 4 curls, each sending N/4 on one keep-alive connection.
urls=$(for i in $(seq 1 $((N / 4))); do printf 'http://127.0.0.1:18501/api/chat '; done)
CURLS=()
for c in 1 2 3 4; do curl -s -o /dev/null -H 'Host: localhost' -d @$W/chat.json $urls & CURLS+=($!); done
wait "${CURLS[@]}"
callgrind_control -i off $VP >/dev/null
callgrind_control -d $VP >/dev/null
sleep 1
kill $VP; wait $VP 2>/dev/null
kill $(cat $W/nginx.pid)
total=$(grep -h "^summary:\|^totals:" $W/cg.out* | awk '{s+=$2} END {print s}')
echo "$TAG: $total instructions over $N requests: $(awk -v t=$total -v n=$N 'BEGIN{printf "%.0f", t/n}') per request"
rm -rf $W
