#!/usr/bin/env bash
# Instructions per request of a Weft sidecar pair at a fixed rate, by where they run (issue 24:
# "find the cost by measuring it"). Both sidecars run under callgrind with instrumentation off;
# once the load is steady it is switched on for --seconds, then off, and the instructions are
# divided by the requests the outbound sidecar counted meanwhile (its /metrics). Callgrind counts
# user-space instructions only: the kernel's part is weft-bench-peers' syscalls / req and
# kernel % columns.
#
#   cargo build --release -p weft-proxy -p weft-samples -p weft-benches -p weft-bench-peers
#   tools/bench/callgrind.sh [--rate 100] [--seconds 20] [--proxy target/release/weft-proxy] OUTDIR
#
# The pair is weft-bench-peers' own HTTP/1.1 pair (its certificates and configs, made by a
# `--quick --only-weft --keep-temp` run; loopback only). Writes OUTDIR/{a,b}.out.1 (callgrind
# profiles: outbound A, inbound B), OUTDIR/summary.txt. Needs valgrind (Debian: valgrind) and
# curl. Every process it starts is ended by PID on exit. About two minutes.
set -euo pipefail
rate=100
seconds=20
root=$(cd "$(dirname "$0")/../.." && pwd)
rel=$root/target/release
proxy=$rel/weft-proxy
out=""
while (($#)); do
  case "$1" in
    --rate) rate=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --proxy) proxy=$2; shift 2 ;;
    -h|--help) sed -n 2,16p "$0"; exit 0 ;;
    -*) echo "callgrind.sh: unknown option $1" >&2; exit 2 ;;
    *) out=$1; shift ;;
  esac
done
[ -n "$out" ] || { echo "usage: tools/bench/callgrind.sh [--rate N] [--seconds S] [--proxy PATH] OUTDIR" >&2; exit 2; }
for tool in valgrind callgrind_control callgrind_annotate curl python3; do
  command -v "$tool" >/dev/null || { echo "callgrind.sh: $tool is required (Debian: valgrind, curl, python3)" >&2; exit 2; }
done
for bin in "$proxy" "$rel/weft-sample" "$rel/weft-bench" "$rel/weft-bench-peers"; do
  [ -x "$bin" ] || { echo "callgrind.sh: $bin is missing: build the release binaries first (see the top of this file)" >&2; exit 2; }
done
mkdir -p "$out"
rm -f "$out"/{a,b}.out* "$out"/summary.txt

# The pair's certificates and configs.
"$rel/weft-bench-peers" --quick --only-weft --keep-temp --rates 100 --out-dir "$out/peers" 2>"$out/peers.log" >/dev/null ||
  { echo "callgrind.sh: weft-bench-peers failed (see $out/peers.log)" >&2; exit 1; }
dir=$(sed -n 's/^weft-bench: kept \([^ ]*\) .*/\1/p' "$out/peers.log" | tail -1)
[ -f "$dir/peers-weft-http-a.yaml" ] || { echo "callgrind.sh: no kept pair configs (see $out/peers.log)" >&2; exit 1; }
field() { sed -n "s/^ *$2: *//p" "$dir/$1" | head -1; }
outbound=$(field peers-weft-http-a.yaml outbound)
admin=$(field peers-weft-http-a.yaml admin)
app=$(field peers-weft-http-b.yaml app)

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
cd "$dir"
"$rel/weft-sample" http --listen "$app" 2>"$out/app.err" &
pids+=($!)
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/b.out" \
  "$proxy" --config peers-weft-http-b.yaml 2>"$out/b.err" &
b=$!; pids+=($b)
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/a.out" \
  "$proxy" --config peers-weft-http-a.yaml 2>"$out/a.err" &
a=$!; pids+=($a)
ready=0
for _ in $(seq 1 120); do
  if curl -sf -m 5 -H 'Host: app' "http://$outbound/" >/dev/null; then ready=1; break; fi
  sleep 1
done
((ready)) || { echo "callgrind.sh: the pair never answered (see $out/a.err, $out/b.err)" >&2; exit 1; }
requests() { curl -s -m 5 "http://$admin/metrics" | awk '/^weft_requests_total/ {s += $NF} END {print s + 0}'; }
"$rel/weft-bench" --drive "$outbound" --drive-rate "$rate" --latency-connections 8 \
  --warmup 5s --duration "$((seconds + 20))s" >"$out/drive.txt" 2>&1 &
drive=$!; pids+=($drive)
sleep 12
r0=$(requests)
callgrind_control -i on "$a" >/dev/null
callgrind_control -i on "$b" >/dev/null
sleep "$seconds"
callgrind_control -i off "$a" >/dev/null
callgrind_control -i off "$b" >/dev/null
r1=$(requests)
wait "$drive" || true
callgrind_control -d "$a" >/dev/null
callgrind_control -d "$b" >/dev/null
sleep 2
n=$((r1 - r0))
((n > 0)) || { echo "callgrind.sh: no requests counted while instrumented" >&2; exit 1; }
{
  echo "weft-proxy: $("$proxy" --version)"
  echo "rate: $rate req/s; instrumented for ${seconds}s: $n requests (outbound sidecar's weft_requests_total)"
  echo "load: $(cat "$out/drive.txt")"
  for side in a b; do
    echo
    [ $side = a ] && echo "## outbound sidecar (A): instructions per request" || echo "## inbound sidecar (B): instructions per request"
    callgrind_annotate --threshold=100 "$out/$side.out.1" 2>/dev/null |
      python3 "$root/tools/bench/callgrind_categories.py" "$n"
  done
} | tee "$out/summary.txt"
