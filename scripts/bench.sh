#!/usr/bin/env bash
# Where pipeline-telemetry stands against its peers, in one command (issue 7).
#
#   scripts/bench.sh            # build, run everything, print the markdown table
#   scripts/bench.sh --write    # the same, and replace the marked block in BENCHMARKS.md
#   BENCH_QUICK=1 scripts/bench.sh   # short criterion times, fewer callgrind events (a smoke run)
#
# Environment: CARGO_TARGET_DIR (default ./target), BENCH_JOBS (cargo -j, default 2),
# BENCH_QUICK=1, BENCH_SKIP_CRITERION=1 (reuse the last criterion results, e.g. to redo the
# table), BENCH_NO_CALLGRIND=1.
#
# Steps: one build of the `peers` and `memory` bench binaries (bench profile); the criterion
# groups of benches/peers.rs (ns per event on 1 thread with String and &'static str labels,
# 2-thread throughput, retention scaling, scrapes, floors); the driver mode of benches/peers.rs
# under callgrind (instructions per event: the recording thread inside the measured events,
# and all threads by difference of two event counts) and alone for the peak RSS after
# 1,000,000 events; benches/memory.rs for the bytes
# per retained record. Then one table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

write=0
for arg in "$@"; do
  case "$arg" in
    --write) write=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "scripts/bench.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

started=$(date +%s)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
export CRITERION_HOME=$CARGO_TARGET_DIR/criterion
jobs=${BENCH_JOBS:-2}
quick=${BENCH_QUICK:-0}
work=$CARGO_TARGET_DIR/peers-bench
mkdir -p "$work"
log() { echo "scripts/bench.sh: $*" >&2; }

# ---- the exact command, for the table ----------------------------------------------------
command_line="scripts/bench.sh $*"
for v in BENCH_QUICK BENCH_JOBS BENCH_SKIP_CRITERION BENCH_NO_CALLGRIND; do
  if [ -n "${!v:-}" ]; then command_line="$v=${!v} $command_line"; fi
done
command_line="CARGO_TARGET_DIR=$CARGO_TARGET_DIR $command_line"

# ---- load sampling during the whole run --------------------------------------------------
: > "$work/loadavg"
( while :; do cut -d' ' -f1 /proc/loadavg >> "$work/loadavg"; sleep 5; done ) &
sampler=$!
trap 'kill "$sampler" 2>/dev/null || true' EXIT

# ---- build once ----------------------------------------------------------------------------
log "building the peers and memory benches (cargo bench --no-run, -j $jobs)"
cargo bench -j "$jobs" --bench peers --bench memory --no-run --message-format=json \
  > "$work/build.json"
exes=$(python3 - "$work/build.json" <<'EOF'
import json, sys
found = {}
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        name = m["target"]["name"]
        if name in ("peers", "memory"):
            found[name] = m["executable"]
print(found["peers"], found["memory"])
EOF
)
read -r peers memory <<< "$exes"
log "peers bench: $peers"

# ---- criterion -----------------------------------------------------------------------------
if [ "${BENCH_SKIP_CRITERION:-0}" != 1 ]; then
  crit_args=(--bench)
  if [ "$quick" = 1 ]; then
    crit_args+=(--warm-up-time 0.3 --measurement-time 1 --sample-size 10)
  fi
  log "criterion groups (peers_1t, peers_2t, peers_retain, peers_scrape, floor_parts)"
  rm -rf "$CRITERION_HOME/peers_1t" "$CRITERION_HOME/peers_2t" "$CRITERION_HOME/peers_retain" \
    "$CRITERION_HOME/peers_scrape" "$CRITERION_HOME/floor_parts"
  "$peers" "${crit_args[@]}" > "$work/criterion.log" 2>&1 \
    || { tail -30 "$work/criterion.log" >&2; exit 1; }
  grep -i warning "$work/criterion.log" >&2 || true
fi

contenders=(floor ours ours-records metrics prometheus-client prometheus otel)
prefill_for() {
  case "$1" in
    ours|ours-records) echo 100000 ;;  # the default retention: every measured event evicts
    *) echo 2000 ;;
  esac
}

# ---- instructions per event (callgrind) ------------------------------------------------------
: > "$work/callgrind.txt"
: > "$work/callgrind-thread.txt"
if [ "${BENCH_NO_CALLGRIND:-0}" != 1 ]; then
  if ! command -v valgrind > /dev/null; then
    log "valgrind missing: apt-get install -y valgrind (instruction counts skipped)"
  else
    if [ "$quick" = 1 ]; then small=2000; large=12000; else small=5000; large=55000; fi
    # Instructions callgrind collected in the driver for contender $1, labels $2, $3 events
    # after the prefill; further arguments go to valgrind.
    collected() {
      local c=$1 mode=$2 n=$3
      shift 3
      PEERS_BENCH_DRIVE="$c,$mode,$(prefill_for "$c"),$n" \
        valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" "$peers" 2>&1 \
        | sed -n 's/.*Collected : \([0-9]*\).*/\1/p' | tail -1
    }
    for c in harness "${contenders[@]}"; do
      for mode in string static; do
        for n in $small $large; do
          log "callgrind $c $mode $n events"
          ir=$(collected "$c" "$mode" "$n")
          echo "$c $mode $n ${ir:-0}" >> "$work/callgrind.txt"
        done
        # The recording thread alone, inside the measured events only: the same count every run.
        log "callgrind $c $mode $large events, recording thread"
        ir=$(collected "$c" "$mode" "$large" --collect-atstart=no --toggle-collect='*measured_events*')
        echo "$c $mode $large ${ir:-0}" >> "$work/callgrind-thread.txt"
      done
    done
  fi
fi

# ---- peak RSS after 1,000,000 events, and the plain driver's wall time ---------------------------
# Three rounds with the contenders interleaved, so that a slow phase of the shared host falls on
# all of them: the table takes each one's median wall time per event (RSS is the same each round).
: > "$work/rss.txt"
for round in 1 2 3; do
  for c in "${contenders[@]}"; do
    for n in 0 1000000; do
      if [ "$n" = 0 ] && [ "$round" != 1 ]; then continue; fi
      log "peak RSS and wall time $c $n events (round $round)"
      line=$(PEERS_BENCH_DRIVE="$c,string,0,$n" "$peers" | grep '^drive ')
      echo "$c $n $line" >> "$work/rss.txt"
    done
  done
done

# ---- bytes per retained record -----------------------------------------------------------------
log "bytes per retained record (benches/memory.rs)"
"$memory" --bench > "$work/memory.txt" 2>&1 || log "the memory bench failed (see $work/memory.txt)"

# ---- the table --------------------------------------------------------------------------------------
elapsed=$(( $(date +%s) - started ))
table=$(python3 - "$root" "$work" "$CRITERION_HOME" "$command_line" "$elapsed" "$quick" <<'EOF'
import datetime, json, os, re, statistics, subprocess, sys, tomllib

root, work, crit, command, elapsed, quick = sys.argv[1:7]
elapsed, quick = int(elapsed), quick == "1"

def median(group, bench):
    path = os.path.join(crit, group, bench, "new", "estimates.json")
    try:
        with open(path) as f:
            return json.load(f)["median"]["point_estimate"]
    except (OSError, KeyError, ValueError):
        return None

def ns(v):
    if v is None:
        return "—"
    if v >= 1e6:
        return f"{v / 1e6:.2f} ms"
    if v >= 1e4:
        return f"{v / 1e3:.1f} µs"
    if v >= 1e3:
        return f"{v / 1e3:.2f} µs"
    return f"{v:.1f} ns" if v < 100 else f"{v:.0f} ns"

def ratio(v, base):
    if v is None or not base:
        return "—"
    return f"×{v / base:.2f}"

def num(v, digits=0):
    return "—" if v is None else f"{v:,.{digits}f}"

# Machine, versions.
# Virtual machines often name the CPU only "AMD EPYC": family and model tell its generation.
cpu, cpu_ids = "unknown", {}
with open("/proc/cpuinfo") as f:
    for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and cpu == "unknown":
            cpu = value.strip()
        elif key in ("cpu family", "model") and key not in cpu_ids:
            cpu_ids[key] = value.strip()
        elif not line.strip():
            break
cpu_generation = (
    f" (family {cpu_ids.get('cpu family', '?')}, model {cpu_ids.get('model', '?')})" if cpu_ids else ""
)
nproc = os.cpu_count()
def run(*args):
    try:
        return subprocess.run(args, cwd=root, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"
rustc = run("rustc", "--version")
commit = run("git", "rev-parse", "--short", "HEAD")
dirty = " (uncommitted changes)" if run("git", "status", "--porcelain", "--untracked-files=no") else ""
kernel = run("uname", "-r")
with open(os.path.join(root, "Cargo.lock"), "rb") as f:
    lock = tomllib.load(f)
versions = {}
for p in lock["package"]:
    versions.setdefault(p["name"], []).append(p["version"])
crates = ["pipeline-telemetry", "metrics", "metrics-exporter-prometheus", "prometheus-client",
          "prometheus", "opentelemetry", "opentelemetry_sdk", "opentelemetry-prometheus",
          "criterion", "quanta"]
version_line = ", ".join(f"`{c}` {'/'.join(versions.get(c, ['?']))}" for c in crates)
loads = []
with open(os.path.join(work, "loadavg")) as f:
    loads = [float(x) for x in f.read().split()]
load_line = (f"{min(loads):.1f}–{max(loads):.1f} (median {statistics.median(loads):.1f}, "
             f"{len(loads)} samples every 5 s)" if loads else "not sampled")

# Callgrind.
ir = {}
with open(os.path.join(work, "callgrind.txt")) as f:
    rows = [l.split() for l in f if l.strip()]
counts = {}
for c, mode, n, collected in rows:
    counts.setdefault((c, mode), []).append((int(n), int(collected)))
for key, pts in counts.items():
    pts.sort()
    if len(pts) >= 2 and pts[0][1] and pts[-1][1]:
        (n1, i1), (n2, i2) = pts[0], pts[-1]
        ir[key] = (i2 - i1) / (n2 - n1)
def net_of_harness(per_event):
    """Takes out the `harness` rows and subtracts them from the others: what the driver itself
    costs per event (ids formatted, labels cloned and dropped). Returns the harness's own."""
    own = {mode: per_event.pop(("harness", mode), None) for mode in ("string", "static")}
    for (c, mode) in list(per_event):
        if own[mode] is not None:
            per_event[(c, mode)] -= own[mode]
    return own
harness = net_of_harness(ir)
# The recording thread alone (one run each, inside `measured_events`).
ir_thread = {}
thread_events = 0
with open(os.path.join(work, "callgrind-thread.txt")) as f:
    for c, mode, n, collected in (l.split() for l in f if l.strip()):
        if int(collected):
            ir_thread[(c, mode)] = int(collected) / int(n)
            thread_events = int(n)
harness_thread = net_of_harness(ir_thread)

# Peak RSS.
rss = {}
wall = {}
with open(os.path.join(work, "rss.txt")) as f:
    for line in f:
        parts = line.split()
        c, n = parts[0], int(parts[1])
        fields = dict(p.split("=", 1) for p in parts[3:] if "=" in p)
        rss.setdefault(c, {})[n] = int(fields.get("peak_rss_kib", 0))
        if n:
            wall.setdefault(c, []).append(float(fields.get("wall_ns_per_event", 0)))
wall = {c: statistics.median(runs) for c, runs in wall.items()}
def rss_growth(c):
    r = rss.get(c, {})
    if 0 in r and 1000000 in r:
        return (r[1000000] - r[0]) / 1024
    return None

# Bytes per retained record (benches/memory.rs, retention 100,000, steady state).
retained = None
try:
    text = open(os.path.join(work, "memory.txt")).read()
    block = text.split("retention 100000", 1)[1].split("retention 1000000", 1)[0]
    strings = float(re.search(r"([\d.]+) string bytes per event", block).group(1))
    filled, steady = map(float, re.search(
        r"requested from the allocator\s+([\d.]+)\s+([\d.]+)", block).groups())
    retained = (filled - strings, steady - strings, strings)
except (OSError, IndexError, AttributeError):
    pass

names = {
    "floor": "floor: 4 TSC clock reads + 4 atomic adds",
    "ours": "**this library** (records kept + Prometheus publisher)",
    "ours-records": "this library, records only (no publisher)",
    "metrics": "`metrics` + `metrics-exporter-prometheus`",
    "prometheus-client": "`prometheus-client`",
    "prometheus": "`prometheus` (tikv)",
    "otel": "OpenTelemetry SDK",
}
contenders = list(names)
peers = ["metrics", "prometheus-client", "prometheus", "otel"]
one = {(c, m): median("peers_1t", f"{m}-{c}") for c in contenders for m in ("string", "static")}
two = {c: median("peers_2t", c) for c in contenders}
# One peers_2t iteration = 1,024 events on each of the two threads (BLOCK_2T).
eps2 = {c: (2 * 1024 * 1e9 / two[c] if two[c] else None) for c in contenders}
floor_s, floor_st = one[("floor", "string")], one[("floor", "static")]
ours_s, ours_st = one[("ours", "string")], one[("ours", "static")]

out = []
p = out.append
now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
p(f"Run {now}{' (BENCH_QUICK: short measurement, indicative only)' if quick else ''}, "
  f"{elapsed // 60} min {elapsed % 60} s.")
p("")
p("| | |")
p("| --- | --- |")
p(f"| command | `{command}` |")
p(f"| machine | `nproc` = {nproc}, CPU \"{cpu}\"{cpu_generation}, Linux {kernel} |")
p(f"| load average (1 min) during the run | {load_line}: the machine is shared, other builds may run |")
p(f"| code | commit {commit}{dirty}, {rustc}, `[profile.bench]` |")
p(f"| crates | {version_line} |")
p("")
p("Recording, per event (one pipeline event + its network operation; criterion median). "
  "Ratios: to this library (`× ours`) and to the floor (`× floor`).")
p("")
p("| contender | 1 thread, `String` labels | × ours | × floor | 1 thread, `&'static str` | × ours | × floor "
  "| 2 threads, events/s | × ours | instructions / event (`String`), recording thread | × ours "
  "| instructions / event (`String`), all threads | peak RSS growth after 1M events |")
p("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for c in contenders:
    s, st = one[(c, "string")], one[(c, "static")]
    i, t = ir.get((c, "string")), ir_thread.get((c, "string"))
    g = rss_growth(c)
    p(f"| {names[c]} | {ns(s)} | {ratio(s, ours_s)} | {ratio(s, floor_s)} | {ns(st)} | "
      f"{ratio(st, ours_st)} | {ratio(st, floor_st)} | {num(eps2[c])} | "
      f"{ratio(eps2[c], eps2['ours'])} | {num(t)} | {ratio(t, ir_thread.get(('ours', 'string')))} | "
      f"{num(i)} | {'—' if g is None else f'{g:.1f} MB'} |")
p("")
if harness["string"] is not None:
    p("Instructions (`valgrind --tool=callgrind`), net of the driver's own per event (task ids "
      "formatted, labels cloned and dropped). Recording thread: the calling thread inside the "
      "measured events only (`--toggle-collect='*measured_events*'`, one run of "
      f"{thread_events:,} events after the prefill), the same count in every run; the driver's own: "
      f"{num(harness_thread['string'])} (`String`), {num(harness_thread['static'])} (`&'static str`). "
      "All threads: the difference of two whole runs of different lengths, which also counts "
      "work a contender moves to other threads (delivery, exporters' upkeep) and moves by a few "
      f"hundred between runs; the driver's own: {num(harness['string'])} and {num(harness['static'])}.")
    p("")
st_ir = ", ".join(f"{c} {num(ir_thread[(c, 'static')])}" for c in contenders if (c, "static") in ir_thread)
if st_ir:
    p(f"Instructions per event with `&'static str` labels, recording thread: {st_ir}.")
    p("")

sizes = {}
try:
    sizes = json.load(open(os.path.join(crit, "peers-sizes.json")))
except (OSError, ValueError):
    pass
scrape_peers = ["ours", "metrics", "prometheus-client", "prometheus", "otel"]
p("One full classic-text exposition (criterion median; size in bytes). Standard: the recording "
  "workload's series (100 names × 2 statuses, 10 operations); then 100 and 10,000 duration label sets.")
p("")
p("| contender | standard | × ours | size | 100 label sets | × ours | 10,000 label sets | × ours | size (10,000) |")
p("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
base = {case: median("peers_scrape", f"{case}-ours") for case in ("standard", "100", "10000")}
for c in scrape_peers:
    label = names.get(c, c) if c != "ours" else "**this library** (`render`)"
    v = {case: median("peers_scrape", f"{case}-{c}") for case in ("standard", "100", "10000")}
    p(f"| {label} | {ns(v['standard'])} | {ratio(v['standard'], base['standard'])} | "
      f"{num(sizes.get(f'standard-{c}'))} | {ns(v['100'])} | {ratio(v['100'], base['100'])} | "
      f"{ns(v['10000'])} | {ratio(v['10000'], base['10000'])} | {num(sizes.get(f'10000-{c}'))} |")
p("")

parts = {k: median("floor_parts", k) for k in ("clock-quanta", "clock-std", "atomic-add", "string-clone")}
r1k, r1m = median("peers_retain", "ours-1k"), median("peers_retain", "ours-1m")
p("Floors and scaling:")
p("")
p("| figure | value |")
p("| --- | ---: |")
p(f"| one clock read, TSC (`quanta::Instant::now`) | {ns(parts['clock-quanta'])} |")
p(f"| one clock read, `std::time::Instant::now` | {ns(parts['clock-std'])} |")
p(f"| one relaxed atomic add (uncontended) | {ns(parts['atomic-add'])} |")
p(f"| one `String` clone + drop (9 bytes; paid by every contender in `String` mode) | {ns(parts['string-clone'])} |")
p(f"| this library, per event, 1,000 records retained | {ns(r1k)} |")
p(f"| this library, per event, 100,000 records retained (the default; row above) | {ns(ours_s)} |")
p(f"| this library, per event, 1,000,000 records retained | {ns(r1m)} ({ratio(r1m, r1k)} of 1,000) |")
if retained:
    p(f"| bytes per retained record beyond its strings, 100,000 retained: filled / steady "
      f"(`benches/memory.rs`, requested from the allocator; strings {retained[2]:.0f} B) "
      f"| {retained[0]:.1f} / {retained[1]:.1f} B |")
wall_line = ", ".join(f"{c} {wall[c]:.0f}" for c in contenders if c in wall)
if wall_line:
    p(f"| driver wall ns per event over 1M events, median of 3 interleaved rounds (cross-check) | {wall_line} |")
p("")

# The goals.
def fastest(mode):
    vals = [(one[(c, mode)], c) for c in peers if one[(c, mode)]]
    return min(vals) if vals else (None, None)
goals = []
for mode, label in (("string", "`String`"), ("static", "`&'static str`")):
    best, who = fastest(mode)
    o = one[("ours", mode)]
    if best and o:
        verdict = "**met**" if o <= best else "**not met**"
        goals.append(f"- at or below the fastest peer per event, {label} labels: ours {ns(o)}, "
                     f"fastest peer {names[who]} {ns(best)} ({ratio(o, best)}): {verdict}")
wall_peers = [(wall[c], c) for c in peers if c in wall]
if wall_peers and "ours" in wall:
    best, who = min(wall_peers)
    goals.append(f"- the same, `String` labels, in the plain driver (median of 3 interleaved "
                 f"rounds, the cross-check above): ours {wall['ours']:.0f} ns, fastest peer "
                 f"{names[who]} {best:.0f} ns ({ratio(wall['ours'], best)})")
for mode, label in (("string", "`String`"), ("static", "`&'static str`")):
    o, f = one[("ours", mode)], one[("floor", mode)]
    if o and f:
        verdict = "**met**" if o <= 3 * f else "**not met**"
        goals.append(f"- within 3× of the floor, {label} labels: {ratio(o, f)}: {verdict}")
best2 = max(((eps2[c], c) for c in peers if eps2[c]), default=(None, None))
if best2[0] and eps2["ours"]:
    goals.append(f"- 2 threads (no goal set): ours {num(eps2['ours'])} events/s, best peer "
                 f"{names[best2[1]]} {num(best2[0])} ({ratio(eps2['ours'], best2[0])})")
if retained:
    verdict = "**met**" if retained[1] <= 160 else "**not met**"
    goals.append(f"- at most 160 bytes per retained record beyond its strings: "
                 f"{retained[1]:.1f} B in steady state: {verdict}")
p("Goals:")
p("")
out.extend(goals)
print("\n".join(out))
EOF
)

echo "$table"
if [ "$write" = 1 ]; then
  printf '%s\n' "$table" > "$work/table.md"
  python3 - "$root/BENCHMARKS.md" "$work/table.md" <<'EOF'
import sys
path, table_path = sys.argv[1:3]
text = open(path).read()
start, end = "<!-- peers-table:start -->", "<!-- peers-table:end -->"
if start not in text or end not in text:
    sys.exit("BENCHMARKS.md has no peers-table markers")
head, rest = text.split(start, 1)
_, tail = rest.split(end, 1)
table = open(table_path).read().strip()
open(path, "w").write(head + start + "\n" + table + "\n" + end + tail)
EOF
  log "BENCHMARKS.md updated"
fi
log "done in $(( ($(date +%s) - started) / 60 )) min $(( ($(date +%s) - started) % 60 )) s"
