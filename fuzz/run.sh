#!/usr/bin/env bash
# Runs every fuzz target for a fixed time and prints one line of figures per target.
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, all targets)
# Needs cargo-fuzz (`cargo install cargo-fuzz`). Uses a nightly toolchain with AddressSanitizer
# when one is installed, else the stable toolchain with RUSTC_BOOTSTRAP=1 and no sanitizer.
# New interesting inputs go to fuzz/work/TARGET (ignored by git); crashes to
# fuzz/artifacts/TARGET. A crash that is fixed gets its input copied to
# fuzz/regressions/TARGET/, which tests/fuzz_corpus.rs replays in CI.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(safetensors config rules graph_text manifest run_input)
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
  san=address
else
  fuzz=(env RUSTC_BOOTSTRAP=1 cargo fuzz)
  san=none
fi
"${fuzz[@]}" build -s "$san" -O >/dev/null
printf '%-12s %10s %10s %8s %8s  %s\n' target seconds execs exec/s corpus crashes
for t in "${targets[@]}"; do
  mkdir -p "work/$t" "artifacts/$t"
  log=$(mktemp)
  set +e
  "${fuzz[@]}" run -s "$san" -O "$t" "work/$t" "corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=4096 -timeout=20 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  corpus=$(find "work/$t" "corpus/$t" -type f | wc -l)
  crashes=$(find "artifacts/$t" -type f | wc -l)
  printf '%-12s %10s %10s %8s %8s  %s\n' "$t" "$secs" "$execs" "$rate" "$corpus" "$crashes (exit $rc)"
  if [ $rc -ne 0 ]; then
    echo "--- $t: last lines of the log ($log)"
    tail -20 "$log"
  fi
done
