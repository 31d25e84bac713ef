#!/usr/bin/env bash
# Whole-path load test of the release binary: signature check, parse, durable commit in
# the spool, delivery to a file sink. Prints wrk's figures, peak RSS, and checks that every
# acknowledged push reached the file.
#   bench/load.sh [seconds=10] [connections=64]      (needs wrk: apt-get install wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-64}
port=${PORT:-18190}
cargo build --release --locked --quiet
dir=$(mktemp -d)
cat > "$dir/wxhook.toml" <<TOML
listen = "127.0.0.1:$port"
data_dir = "$dir/data"
# wrk reuses one signed query for every body, which the replay guard would refuse.
reject_replayed_signatures = false
[[accounts]]
name = "bench"
path = "/wechat"
token = "benchtoken"
[[sinks]]
type = "file"
path = "$dir/events.jsonl"
TOML
start=$(date +%s%N)
WXHOOK_LOG=warn target/release/wxhook serve --config "$dir/wxhook.toml" 2>"$dir/stderr" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
until target/release/wxhook health --url "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do sleep 0.005; done
echo "cold start to ready: $(( ($(date +%s%N) - start) / 1000000 )) ms (process start to /readyz 200)"
ts=$(date +%s)
nonce=424242
sig=$(printf '%s\n' benchtoken "$ts" "$nonce" | LC_ALL=C sort | tr -d '\n' | sha1sum | cut -d' ' -f1)
WXHOOK_BENCH_QUERY="signature=$sig&timestamp=$ts&nonce=$nonce" \
  wrk -t2 -c"$conns" -d"${secs}s" --latency -s bench/push.lua "http://127.0.0.1:$port/wechat" | tee "$dir/wrk.txt"
echo "peak RSS: $(awk '/VmHWM/ {print $2 / 1024 " MiB"}' /proc/$pid/status)"
kill -TERM $pid
wait $pid
trap - EXIT
answered=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' "$dir/wrk.txt")
stored=$(wc -l < "$dir/events.jsonl")
echo "answered success: $answered, in the file sink: $stored"
[ "$stored" -ge "$answered" ] || { echo "FAIL: fewer events stored than acknowledged"; exit 1; }
