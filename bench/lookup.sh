#!/usr/bin/env bash
# Times `wxhook events show ID` in a spool of N events (a week of a busy account).
#
#   bench/lookup.sh [BINARY] [N]        BINARY default target/release/wxhook, N default 1000000
#
# The spool is made by the server itself (BINARY, or FROM_BINARY to start from a spool
# written by another build, e.g. the previous release, which also times the upgrade),
# then filled with N PUBLISHJOBFINISH events of ~600 bytes through SQLite directly.
# Prints the first command's time (it migrates an older spool) and the median of RUNS
# (default 9) lookups of an id in the middle of the spool and of one that is absent.
set -euo pipefail
bin=$(realpath "${1:-target/release/wxhook}")
n=${2:-1000000}
runs=${RUNS:-9}
maker=$(realpath "${FROM_BINARY:-$bin}")
dir=$(mktemp -d /tmp/wxhook-lookup.XXXXXX)
trap 'rm -rf "$dir"' EXIT

WXHOOK_TOKEN=t WXHOOK_LISTEN=127.0.0.1:0 WXHOOK_DATA_DIR="$dir/data" "$maker" serve >/dev/null 2>"$dir/serve.log" &
pid=$!
for _ in $(seq 1 100); do grep -q "listening on" "$dir/serve.log" 2>/dev/null && break; sleep 0.05; done
kill -TERM "$pid"; wait "$pid"

python3 - "$dir/data/wxhook.db" "$n" <<'PY'
import sqlite3, sys, time
db, n = sys.argv[1], int(sys.argv[2])
conn = sqlite3.connect(db)
started = time.time()
body = ('{"id":"publish-%d-0","account":"main","received_at":"2026-11-22T04:00:00.000Z",'
        '"to_user_name":"gh_4d00ed8d6399","from_user_name":"oV5CrjpxgaGXNHIQigzNlgLTnwic",'
        '"create_time":1732171300,"msg_type":"event","event":"PUBLISHJOBFINISH",'
        '"publish_event_info":{"publish_id":"%d","publish_status":0,"article_id":"'
        'Hj4Gk2n9-Lq8Ws3XzPr7Ty5Ub1Vc6Nm0","article_detail":{"count":1,"item":[{"idx":1,'
        '"article_url":"https://mp.weixin.qq.com/s/Hj4Gk2n9Lq8Ws3XzPr7Ty5Ub1Vc6Nm0"}]},'
        '"fail_idx":[]},"fields":{}}')
conn.execute("BEGIN")
conn.executemany(
    "INSERT INTO events (account, app_id, id, received_at, body, sinks) VALUES ('main', '', ?, ?, ?, ?)",
    ((f"publish-{i}-0", "2026-11-22T04:00:00.000Z", body % (i, i), "\nstdout\n") for i in range(1, n + 1)),
)
conn.execute("UPDATE cursors SET seq = (SELECT MAX(seq) FROM events)")
conn.commit()
conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
print(f"{n} events written in {time.time() - started:.1f} s")
PY
ls -l "$dir/data/wxhook.db" | awk '{printf "spool: %.0f MiB\n", $5 / 1048576}'

ms() { local a b; a=$(date +%s%N); "$@" >/dev/null 2>&1 || true; b=$(date +%s%N); echo $(((b - a) / 1000000)); }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
middle="publish-$((n / 2))-0"
echo "first command (migrates a spool of an older schema): $(ms "$bin" events show "$middle" --data-dir "$dir/data") ms"
for id in "$middle" "publish-absent-0"; do
  t=$(for _ in $(seq 1 "$runs"); do ms "$bin" events show "$id" --data-dir "$dir/data"; done | median)
  echo "events show $id: median ${t} ms over $runs runs"
done
