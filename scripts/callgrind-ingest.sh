#!/usr/bin/env bash
# Instructions per single-event request, by thread role, with `herald serve` under callgrind
# and `wrk` sending one ~760-byte event per request over loopback (the script and events of
# `herald bench ingest`'s wrk scenario, from `herald bench wrk-files`). Instruction counts repeat
# from run to run where wall-clock figures on a shared 2-core VM move by 10% or more, so this
# is how a change to the request path is measured (see the closing notes of issue #2).
#
# Usage: scripts/callgrind-ingest.sh [HERALD_BINARY] [SECONDS] [CONNECTIONS]
# To measure a binary older than `bench wrk-files`, set FILES_BIN to a newer one. To serve
# with a configuration file (say, one that indexes a `data.` path), set CONFIG to it.
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

# The ingest bench's own single-event script and events (about 760 bytes each).
mapfile -t WRK < <("${FILES_BIN:-$BIN}" bench wrk-files --dir "$OUT" --seed 1)
[ "${#WRK[@]}" -eq 3 ] || { echo "herald bench wrk-files failed" >&2; exit 1; }

valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$OUT/callgrind.out" \
    "$BIN" serve ${CONFIG:+--config "$CONFIG"} --data "$OUT/data" --listen "127.0.0.1:$PORT" >"$OUT/serve.log" 2>&1 &
VG=$!
trap 'kill $VG 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -sf "127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.5; done
echo "loading for ${SECS}s over $CONNS connections (callgrind runs the server about 50 times slower)"
REQUESTS=$(wrk -t2 -c"$CONNS" -d"${SECS}s" -s "${WRK[0]}" "http://127.0.0.1:$PORT" -- "${WRK[1]}" "${WRK[2]}" \
    | awk '/requests in/ {print $1}')
kill -INT $VG
wait $VG || true
trap - EXIT
python3 - "$OUT" "$REQUESTS" <<'PY'
import glob, re, sys
out, n = sys.argv[1], int(sys.argv[2])
# A thread's role, by a function only it runs (names that survive inlining under LTO).
roles = [("sqlite::FtsIndexer::", "full-text"), ("sqlite::Indexer::", "indexer"),
         ("sqlite::Writer::", "writer"), ("proto::h1::dispatch", "HTTP"),
         ("blocking::pool", "blocking pool")]
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
