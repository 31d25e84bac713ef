#!/usr/bin/env bash
# Per-push cost of the replay guard and the nats sink, with pushes signed afresh as
# WeChat signs them (benches/signed_load.rs). wxhook (and nats-server) run on CPU 0, the
# load on CPU 1; each line gives throughput, latency, and CPU microseconds per push of
# wxhook, nats-server and nginx, read from /proc.
#   bench/guard.sh [seconds=10] [connections=64]
# Needs nats-server (NATS_SERVER=, default target/ci-venv/bin/nats-server as .ci/run
# installs it) and, for the nginx line, nginx (NGINX=, default /usr/sbin/nginx).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-64}
nats_bin=${NATS_SERVER:-target/ci-venv/bin/nats-server}
nginx_bin=${NGINX:-/usr/sbin/nginx}
[ -x "$nats_bin" ] || { echo "no nats-server at $nats_bin (set NATS_SERVER, or run .ci/run once)" >&2; exit 2; }
[ -x "$nginx_bin" ] || { echo "no nginx at $nginx_bin (set NGINX, or apt-get install nginx-light)" >&2; exit 2; }
cargo build --release --locked --quiet
cargo bench --bench signed_load --no-run --quiet 2>/dev/null
load=$(ls -t target/release/deps/signed_load-* | grep -v '\.d$' | head -1)
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

taskset -c 0 "$nats_bin" -js -a 127.0.0.1 -p 14322 -sd "$dir/js" >"$dir/nats.log" 2>&1 &
nats=$!; pids+=("$nats")

config() { # NAME SINK GUARD
  local sink guard=""
  case $2 in
    file) sink=$'[[sinks]]\ntype = "file"\npath = "'"$dir/$1.jsonl"'"' ;;
    nats) sink=$'[[sinks]]\ntype = "nats"\nname = "bus"\nurl = "nats://127.0.0.1:14322"' ;;
  esac
  case $3 in
    off) guard="reject_replayed_signatures = false" ;;
    shared) guard=$'replay_guard = "nats"\n[replay_guard_nats]\nsink = "bus"' ;;
  esac
  printf 'listen = "127.0.0.1:18391"\ndata_dir = "%s"\n%s\n[[accounts]]\nname = "bench"\npath = "/wechat"\ntoken = "benchtoken"\n%s\n' \
    "$dir/$1" "$guard" "$sink" > "$dir/$1.toml"
}

run() { # NAME [via-nginx]
  local name=$1 url=http://127.0.0.1:18391/wechat proxy="" before after
  WXHOOK_LOG=warn taskset -c 0 target/release/wxhook serve --config "$dir/$name.toml" 2>"$dir/$name.log" &
  local pid=$!; pids+=("$pid")
  until target/release/wxhook health --url http://127.0.0.1:18391/readyz >/dev/null 2>&1; do sleep 0.01; done
  if [ -n "${2:-}" ]; then
    mkdir -p "$dir/nginx/logs"
    sed -e 's/server wxhook-a:8080/server 127.0.0.1:18391/' -e '/server wxhook-b:8080/d' \
        -e 's/listen 80;/listen 127.0.0.1:18395;/' deploy/nginx-scale.conf > "$dir/nginx/site.conf"
    printf 'worker_processes 1;\nuser root;\npid %s/nginx.pid;\nerror_log %s/logs/error.log;\nevents { worker_connections 1024; }\nhttp { access_log off; client_body_temp_path %s/body; proxy_temp_path %s/proxy; include %s/site.conf; }\n' \
      "$dir/nginx" "$dir/nginx" "$dir/nginx" "$dir/nginx" "$dir/nginx" > "$dir/nginx/nginx.conf"
    taskset -c 0 "$nginx_bin" -p "$dir/nginx" -c "$dir/nginx/nginx.conf" -g 'daemon off;' &
    local npid=$!; pids+=("$npid"); sleep 0.5
    proxy=$(pgrep -P "$npid" | head -1)
    url=http://127.0.0.1:18395/hooks/wechat
  fi
  taskset -c 1 "$load" "$url" benchtoken 2 "$conns" >/dev/null
  local w0 n0 p0=0 w1 n1 p1=0 out ok
  w0=$(ticks "$pid"); n0=$(ticks "$nats"); [ -n "$proxy" ] && p0=$(ticks "$proxy")
  out=$(taskset -c 1 "$load" "$url" benchtoken "$secs" "$conns")
  w1=$(ticks "$pid"); n1=$(ticks "$nats"); [ -n "$proxy" ] && p1=$(ticks "$proxy")
  ok=$(sed 's/.*ok=\([0-9]*\).*/\1/' <<<"$out")
  printf '%-24s %s wxhook_us=%d nats_us=%d nginx_us=%d peak_rss_mib=%d\n' "$name${2:+ via nginx}" "$out" \
    $(( (w1-w0)*10000/ok )) $(( (n1-n0)*10000/ok )) $(( (p1-p0)*10000/ok )) \
    $(( $(awk '/VmHWM/{print $2}' "/proc/$pid/status") / 1024 ))
  [ -n "$proxy" ] && kill "$npid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

config file-guard-off file off;    run file-guard-off
config file-guard-local file local; run file-guard-local
config nats-guard-local nats local; run nats-guard-local
config nats-guard-shared nats shared; run nats-guard-shared
config nginx-file-local file local; run nginx-file-local via-nginx
