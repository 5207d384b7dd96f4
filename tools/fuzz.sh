#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang (ASan + UBSan), replays the committed regression inputs,
# then fuzzes each target for a time budget. docs/FUZZING.md describes the targets and what to do with a finding.
#
#   bash tools/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]    default: 30 seconds, every target
#
# Everything goes under build/fuzz: bin/ (the targets), corpus/<target>/ (tools/fuzz_seeds.py's seeds plus what
# fuzzing found; kept between runs), findings/<target>/ (crash-*, leak-*, timeout-*, oom-* inputs), log/.
# Exit status 1 when any target crashes, leaks, times out (-timeout=10 s per input) or runs out of memory
# (-rss_limit_mb=2048, one allocation above -malloc_limit_mb=256); the reproducer's path is printed.
#
# Environment: SESSA_FUZZ_JOBS (parallel compilations, default: the number of cores), SESSA_FUZZ_CXXFLAGS (extra
# compiler flags), SESSA_FUZZ_FLAGS (extra libFuzzer flags for the fuzzing runs, e.g. "-jobs=4 -workers=4").
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
if [ $# -gt 0 ]; then shift; fi
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
  echo "usage: bash tools/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
  exit 2
fi
all_targets=(fuzz_safetensors fuzz_model_file fuzz_config_json fuzz_run_input fuzz_state)
targets=("${all_targets[@]}")
if [ $# -gt 0 ]; then targets=("$@"); fi

# Per target: the largest input (the seeds fit; larger inputs only slow the search down) and the dictionary.
declare -A max_len=([fuzz_safetensors]=65536 [fuzz_model_file]=40000 [fuzz_config_json]=4096 [fuzz_run_input]=4096
                   [fuzz_state]=16384)
declare -A dict=([fuzz_safetensors]=safetensors [fuzz_model_file]=model_file [fuzz_config_json]=config_json
                 [fuzz_run_input]=run_input [fuzz_state]=state)
for t in "${targets[@]}"; do
  if [ -z "${max_len[$t]:-}" ]; then
    echo "fuzz.sh: unknown target '$t' (targets: ${all_targets[*]})" >&2
    exit 2
  fi
done

# ---------------------------------------------------------------- what the build needs
CXX=${CXX:-clang++}
missing() {
  echo "fuzz.sh: $1" >&2
  echo "  on Debian 12: sudo apt-get install clang libclang-rt-14-dev libxsimd-dev python3" >&2
  exit 2
}
command -v "$CXX" >/dev/null 2>&1 || missing "$CXX not found (libFuzzer needs clang; set CXX to another clang++)"
command -v python3 >/dev/null 2>&1 || missing "python3 not found (tools/fuzz_seeds.py writes the seed corpora)"
[ -f /usr/include/xsimd/xsimd.hpp ] || echo '#include <xsimd/xsimd.hpp>' | "$CXX" -x c++ -std=c++20 -fsyntax-only - \
  2>/dev/null || missing "xsimd headers not found (<xsimd/xsimd.hpp>)"
out=build/fuzz
mkdir -p "$out/bin" "$out/log" "$out/corpus" "$out/findings"
probe="$out/bin/.libfuzzer_probe"
printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' |
  "$CXX" -x c++ -fsanitize=fuzzer,address,undefined - -o "$probe" 2>"$out/log/probe.log" ||
  missing "$CXX cannot link -fsanitize=fuzzer,address,undefined (libFuzzer's runtime: libclang-rt-14-dev):
  $(head -c 300 "$out/log/probe.log")"
rm -f "$probe"

# ---------------------------------------------------------------- build
# -O1 -g: fast enough to fuzz, readable stacks. OpenMP off: one thread per input, deterministic reproductions.
# A target is rebuilt when its flags changed or a header or fuzz source is newer than it.
flags=(-std=c++20 -O1 -g -fno-omit-frame-pointer -march=native -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=undefined -Wall -Wextra -Iinclude ${SESSA_FUZZ_CXXFLAGS:-})
jobs=${SESSA_FUZZ_JOBS:-$(nproc)}
built=()
for t in "${targets[@]}"; do
  bin="$out/bin/$t"
  stamp="$bin.flags"
  if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$CXX ${flags[*]}" ] &&
     [ -z "$(find include tests/fuzz -newer "$bin" \( -name '*.hpp' -o -name '*.cpp' \) -print -quit)" ]; then
    continue
  fi
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  echo "== building $t"
  rm -f "$stamp"
  ( "$CXX" "${flags[@]}" "tests/fuzz/$t.cpp" -o "$bin" >"$out/log/$t.build.log" 2>&1 &&
    echo "$CXX ${flags[*]}" >"$stamp" ) &
  built+=("$t")
done
wait
build_failed=0
for t in "${built[@]}"; do
  if [ ! -f "$out/bin/$t.flags" ]; then  # written only when the compilation succeeded
    echo "fuzz.sh: building $t failed:" >&2
    cat "$out/log/$t.build.log" >&2
    build_failed=1
  fi
done
[ "$build_failed" = 0 ] || exit 1

echo "== seed corpora: python3 tools/fuzz_seeds.py $out/corpus"
python3 tools/fuzz_seeds.py "$out/corpus" >"$out/log/seeds.log"

# ---------------------------------------------------------------- run
# libFuzzer's own limits; a single allocation above 256 MB from an input of at most 64 KB is a finding.
limits=(-rss_limit_mb=2048 -malloc_limit_mb=256 -timeout=10)
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=()

# Prints the inputs libFuzzer saved into $2 since the listing $1 was taken, with the command that replays each.
report_findings() {
  local before=$1 dir=$2 t=$3 f
  for f in $(comm -13 <(echo "$before") <(ls "$dir" 2>/dev/null | sort)); do
    echo "  reproducer: $dir/$f"
    echo "  replay:     $out/bin/$t $dir/$f"
  done
}

for t in "${targets[@]}"; do
  bin="$out/bin/$t"
  findings="$out/findings/$t"
  log="$out/log/$t.log"
  mkdir -p "$findings" "$out/corpus/$t"

  # Regressions first: each committed input runs once (libFuzzer runs the files it is given and exits).
  regressions=()
  [ -d "tests/fuzz/regressions/$t" ] && mapfile -t regressions < <(find "tests/fuzz/regressions/$t" -type f | sort)
  if [ ${#regressions[@]} -gt 0 ]; then
    if ! "$bin" "${limits[@]}" "${regressions[@]}" >"$out/log/$t.regressions.log" 2>&1; then
      echo "== $t: a regression input fails again:"
      grep -E "^Running: |ERROR|SUMMARY|violated|terminate" "$out/log/$t.regressions.log" | tail -5 || true
      echo "  log: $out/log/$t.regressions.log (the input is the last 'Running:' line)"
      failed+=("$t")
      continue
    fi
  fi

  echo "== $t: ${#regressions[@]} regression inputs pass; fuzzing for ${seconds} s"
  before=$(ls "$findings" | sort)
  # shellcheck disable=SC2086  # SESSA_FUZZ_FLAGS is a list of flags
  if "$bin" "${limits[@]}" -max_total_time="$seconds" -max_len="${max_len[$t]}" \
       -dict="tests/fuzz/dict/${dict[$t]}.dict" -artifact_prefix="$findings/" -print_final_stats=1 \
       ${SESSA_FUZZ_FLAGS:-} "$out/corpus/$t" >"$log" 2>&1; then
    { grep -E "^#[0-9]+[[:space:]]+DONE" "$log" | tail -1
      grep -E "^stat::(number_of_executed_units|peak_rss_mb)" "$log"; } | sed 's/^/  /' || true
  else
    echo "== $t FAILED (log: $log)"
    grep -E "ERROR: |SUMMARY: |violated|terminate called|out-of-memory|Test unit written" "$log" | head -8 |
      sed 's/^/  /' || true
    report_findings "$before" "$findings" "$t"
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: failures in: ${failed[*]}"
  echo "  once fixed, copy each reproducer into tests/fuzz/regressions/<target>/ (docs/FUZZING.md)"
  exit 1
fi
echo "fuzz.sh: every target passed (${seconds} s each)"
