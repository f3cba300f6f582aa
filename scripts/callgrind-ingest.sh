#!/usr/bin/env bash
# Instructions per single-event request, by thread role, with `herald serve` under callgrind
# and `wrk` sending one ~760-byte event per request over loopback. Instruction counts repeat
# from run to run where wall-clock figures on a shared 2-core VM move by 10% or more, so this
# is how a change to the request path is measured (see the closing notes of issue #2).
#
# Usage: scripts/callgrind-ingest.sh [HERALD_BINARY] [SECONDS] [CONNECTIONS]
# Needs valgrind, wrk and python3. Keeps callgrind's files in $OUT (default: a temp dir), one
# per thread, for callgrind_annotate.
set -euo pipefail
BIN=${1:-target/release/herald}
SECS=${2:-25}
CONNS=${3:-16}
PORT=${PORT:-18473}
OUT=${OUT:-$(mktemp -d)}
for tool in valgrind wrk python3 curl; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
[ -x "$BIN" ] || { echo "no herald binary at $BIN (cargo build --release -p herald)" >&2; exit 2; }

# 200 event templates (the JSON cut where the id goes), made from a fixed seed.
python3 - "$OUT/templates.txt" <<'PY'
import json, random, sys
r = random.Random(7)
words = "sync replica approve translation beta export channel review variant update quota tenant draft locale bundle limit alpha follower region index".split()
with open(sys.argv[1], "w") as f:
    for i in range(200):
        org = f"org-{r.randrange(500):04d}"
        ev = {
            "specversion": "1.0", "id": "@@ID@@", "source": "/" + r.choice(["web", "worker", "mobile-ios", "api"]),
            "type": r.choice(["product.viewed", "order.placed", "user.login", "job.failed"]),
            "time": f"2026-11-{r.randrange(1, 29):02d}T{r.randrange(24):02d}:{r.randrange(60):02d}:{r.randrange(60):02d}.{r.randrange(1000):03d}Z",
            "severity": r.choice(["info", "info", "notice", "warning", "error"]),
            "actor": f"user:user-{r.randrange(100000):06d}", "tenant": org,
            "data": {
                "request_id": "%016x" % r.getrandbits(64), "session_id": "%012x" % r.getrandbits(48),
                "ip": ".".join(str(r.randrange(256)) for _ in range(4)),
                "user_agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
                "app_version": f"4.{r.randrange(20)}.{r.randrange(10)}", "duration_ms": r.randrange(2000),
                "org": org, "country": r.choice(["US", "DE", "FR", "JP", "BR"]),
                "product": {"code": f"P{r.randrange(10**7):07d}", "price": round(r.random() * 100, 2), "currency": "EUR"},
                "changes": [{"field": "title", "old": round(r.random() * 100, 2), "new": round(r.random() * 100, 2)}],
                "metrics": {"latency_ms": round(r.random() * 30, 3), "bytes": r.randrange(2 * 10**6)},
                "tags": r.sample(words, 3), "note": " ".join(r.choice(words) for _ in range(24)),
            },
        }
        head, tail = json.dumps(ev, separators=(",", ":")).split("@@ID@@")
        f.write(head + "\t" + tail + "\n")
PY
cat > "$OUT/post.lua" <<LUA
local templates = {}
local counter = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  for line in io.lines("$OUT/templates.txt") do
    local head, tail = line:match("^(.-)\t(.*)$")
    templates[#templates + 1] = { head, tail }
  end
end
request = function()
  counter = counter + 1
  local t = templates[(counter % #templates) + 1]
  local body = t[1] .. "cg-" .. tid .. "-" .. counter .. t[2]
  return wrk.format("POST", "/v1/events", { ["Content-Type"] = "application/json" }, body)
end
LUA

valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$OUT/callgrind.out" \
    "$BIN" serve --data "$OUT/data" --listen "127.0.0.1:$PORT" >"$OUT/serve.log" 2>&1 &
VG=$!
trap 'kill $VG 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -sf "127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.5; done
echo "loading for ${SECS}s over $CONNS connections (callgrind runs the server about 50 times slower)"
REQUESTS=$(wrk -t2 -c"$CONNS" -d"${SECS}s" -s "$OUT/post.lua" "http://127.0.0.1:$PORT" | awk '/requests in/ {print $1}')
kill -INT $VG
wait $VG || true
trap - EXIT
python3 - "$OUT" "$REQUESTS" <<'PY'
import glob, re, sys
out, n = sys.argv[1], int(sys.argv[2])
roles = [("multi_thread::worker::run", "HTTP"), ("FtsIndexer::run", "full-text"),
         ("sqlite::Indexer::run", "indexer"), ("Writer::run", "writer"), ("blocking::pool", "blocking pool")]
total = {}
for f in glob.glob(f"{out}/callgrind.out-*"):
    text = open(f, errors="replace").read()
    m = re.search(r"^summary: (\d+)", text, re.M)
    if not m:
        continue
    role = next((r for key, r in roles if key in text), "other")
    total[role] = total.get(role, 0) + int(m.group(1))
print(f"{n} requests; instructions per request: " +
      ", ".join(f"{r} {v / n:,.0f}" for r, v in sorted(total.items(), key=lambda kv: -kv[1])))
print(f"callgrind files: {out}/callgrind.out-*")
PY
