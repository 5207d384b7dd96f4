#!/usr/bin/env bash
# bench/run_all.sh: every figure of docs/PERFORMANCE.md, by one command.
#
# Why this exists: the performance document must be reproducible; this script runs every row (sessa-bench
# for the library, tools/bench_torch.py for the PyTorch side-by-side), appends the JSON lines to one file and
# renders that file into the document's tables (markdown), so the numbers in the doc are exactly what one
# run printed. Run it on a quiet machine: two threads on two cores that something else is using measure
# the other load, not the code.
#
#   bench/run_all.sh [OUT.jsonl]            run everything (default bench-results.jsonl), then print the tables
#   bench/run_all.sh --tables OUT.jsonl     only render the tables of an existing results file
#
# Environment:
#   BENCH=path/to/sessa-bench   default: $BUILD/bench/sessa-bench, BUILD defaulting to /tmp/build_bench
#   PYTHON=/usr/bin/python3     the interpreter with torch (Debian python3-torch)
#   MAX_T=65536                 largest prefill T for the library (rows above it are skipped)
#   MAX_CONTEXT=65536           largest decode context (library and torch)
#   REF_MAX_T=2048              largest prefill T for backend::reference (O(T^2) scalar loops)
#   TORCH_MAX_T=16384           largest prefill T for the torch side-by-side (T=16384 needs ~17 GiB)
#   SKIP_TORCH=1                skip the torch rows
#   SKIP_NARROW=1               skip the narrow-storage rows (f32, bf16, f16, q8_0 weights: a 6-layer D = 4096
#                               stack, 3.4 GiB of f32 weights; f32, bf16, f16 caches at 4k and 32k tokens)
# The library build it expects: cmake -S . -B /tmp/build_bench -DCMAKE_BUILD_TYPE=Release -DSESSA_BUILD_TESTS=OFF
#                               cmake --build /tmp/build_bench --target sessa_bench -j2
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PYTHON=${PYTHON:-/usr/bin/python3}

render_tables() {
  "$PYTHON" - "$1" <<'PY'
import json, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
# BASELINES.md: the public PyTorch modules (SessaLayer), same machine kind, D=512 H=Hkv=8, batch 1, f32, 2 threads.
public_prefill = {512: 0.155, 1024: 0.64, 2048: 1.96, 4096: 7.04, 8192: 27.8, 16384: 119.0}
public_decode_ms = {1024: 6.1, 4096: 11.9}

# Fields older result lines lack, at the value they had then.
defaults = {"weights": "f32", "cache": "f32", "layers": 1}

def get(r, k):
    return r.get(k, defaults.get(k))

def pick(**kv):
    for r in reversed(rows):  # the latest line for a key wins, so a file can be appended to
        if all(get(r, k) == v for k, v in kv.items()):
            return r
    return None

def f(x, fmt="{:.3g}"):
    return "" if x is None else fmt.format(x)

def gib(b):
    if b is None:
        return ""
    return f"{b / 2**20:.0f} MiB" if b < 2**30 else f"{b / 2**30:.2f} GiB"

base = dict(D=512, H=8, Hkv=8, batch=1, precision="f32", weights="f32", cache="f32", layers=1)

def speedup(r, one, equal_bandwidth=False):
    """r's tokens/s over one's; with equal_bandwidth, the tokens/s each would reach at the same bandwidth: its
    paired fraction of the streaming floor over its bytes per token (two processes run minutes apart on a shared
    machine see different bandwidths)."""
    if not one:
        return ""
    a, b = r["tokens_per_s"], one["tokens_per_s"]
    if equal_bandwidth:
        if not r.get("fraction_of_bandwidth_bound") or not one.get("fraction_of_bandwidth_bound"):
            return ""
        a = r["fraction_of_bandwidth_bound"] / r["bytes_per_token"]
        b = one["fraction_of_bandwidth_bound"] / one["bytes_per_token"]
    return f"{a / b:.2f}x"

def fraction(r):
    """The median paired fraction and, where the line has them, its smallest and largest pair."""
    s = f(r.get("fraction_of_bandwidth_bound"), "{:.3f}")
    if r.get("fraction_min") is not None and r.get("fraction_max") is not None:
        s += f" ({r['fraction_min']:.2f}-{r['fraction_max']:.2f})"
    return s
y = pick(work="yardstick", threads=2)
if y:
    print(f"Yardstick (2 threads): OpenBLAS sgemm {f(y['sgemm_gflops'], '{:.0f}')} GFLOP/s "
          f"(n=2048: {f(y['sgemm_gflops_n2048'], '{:.0f}')}, n=4096: {f(y['sgemm_gflops_n4096'], '{:.0f}')}), "
          f"streaming read {f(y['stream_gbps'], '{:.1f}')} GB/s; OpenBLAS core {y.get('openblas_corename')}\n")

print("### Prefill (D=512, H=Hkv=8, batch 1, f32, 2 threads)\n")
print("| T | seconds | tok/s | GFLOP/s | in-run sgemm | fraction of sgemm | peak RSS | model bytes | "
      "vs reference | vs torch (this run) | vs public modules (BASELINES) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for T in (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536):
    r = pick(work="prefill", T=T, backend="cpu", threads=2, chunk=0, **base)
    if not r:
        continue
    ref = pick(work="prefill", T=T, backend="reference", threads=2, chunk=0, **base)
    tor = pick(work="prefill", T=T, backend="torch", threads=2, **base)
    s = r["seconds"]
    vs_ref = f"{ref['seconds'] / s:.0f}x" if ref else "n/a"
    if tor and tor.get("seconds"):
        vs_torch = f"{tor['seconds'] / s:.1f}x"
    elif tor and tor.get("error"):
        vs_torch = "does not fit"
    else:
        vs_torch = "n/a"
    vs_pub = f"{public_prefill[T] / s:.1f}x" if T in public_prefill else ("does not fit" if T >= 32768 else "n/a")
    print(f"| {T} | {f(s, '{:.4g}')} | {f(r['tokens_per_s'], '{:,.0f}')} | {f(r['gflops'], '{:.1f}')} | "
          f"{f(r['sgemm_gflops'], '{:.0f}')} | {f(r['fraction_of_sgemm'], '{:.2f}')} | {gib(r['peak_rss_bytes'])} | "
          f"{gib(r['model_bytes'])} | {vs_ref} | {vs_torch} | {vs_pub} |")

print("\n### Decode (64 steps from a cache of `context` tokens, D=512, H=Hkv=8, batch 1, f32, 2 threads)\n")
print("| context | ms/token | tok/s | bytes/step | GB/s | in-run stream | fraction of bandwidth bound | "
      "vs torch (this run) | vs public modules (BASELINES) |")
print("|---|---|---|---|---|---|---|---|---|")
for C in (1024, 4096, 16384, 65536):
    r = pick(work="decode", context=C, backend="cpu", threads=2, steps=64, **base)
    if not r:
        continue
    tor = pick(work="decode", context=C, backend="torch", threads=2, **base)
    ms = r["ms_per_token"]
    vs_torch = f"{tor['ms_per_token'] / ms:.1f}x" if tor else "n/a"
    vs_pub = f"{public_decode_ms[C] / ms:.1f}x" if C in public_decode_ms else "n/a"
    print(f"| {C} | {f(ms, '{:.3g}')} | {f(r['tokens_per_s'], '{:,.0f}')} | {r['bytes_per_step'] / 1e6:.1f} MB | "
          f"{f(r['gbps'], '{:.1f}')} | {f(r['stream_gbps'], '{:.1f}')} | "
          f"{f(r['fraction_of_bandwidth_bound'], '{:.2f}')} | {vs_torch} | {vs_pub} |")

print("\n### Memory against T (prefill, library, 2 threads)\n")
print("| T | chunk | peak RSS | RSS before activations | model bytes (x, y, cache, workspace) | cache bytes | "
      "torch peak RSS (this run) |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    if r.get("work") != "prefill" or r.get("backend") != "cpu" or r.get("threads") != 2 or \
            get(r, "weights") != "f32" or get(r, "cache") != "f32" or get(r, "layers") != 1 or r.get("D") != 512:
        continue
    tor = pick(work="prefill", T=r["T"], backend="torch", threads=2, **base) if r["chunk"] == 0 else None
    tor_rss = gib(tor["peak_rss_bytes"]) if tor and tor.get("peak_rss_bytes") else ""
    print(f"| {r['T']} | {r['chunk'] or 'none'} | {gib(r['peak_rss_bytes'])} | {gib(r['rss_baseline_bytes'])} | "
          f"{gib(r['model_bytes'])} | {gib(r['cache_bytes'])} | {tor_rss} |")

print("\n### Thread scaling\n")
print("| work | 1 thread | 2 threads | speed-up |")
print("|---|---|---|---|")
for work, key, n, field, unit in (("prefill", "T", 4096, "seconds", "s"), ("decode", "context", 4096, "ms_per_token", "ms/token")):
    steps = {"steps": 64} if work == "decode" else {}
    one = pick(work=work, backend="cpu", threads=1, **{key: n}, **steps, **base)
    two = pick(work=work, backend="cpu", threads=2, **{key: n}, **steps, **base)
    if one and two and (work == "decode" or two.get("chunk") == 0):
        print(f"| {work} {key}={n} | {one[field]:.4g} {unit} | {two[field]:.4g} {unit} | {one[field] / two[field]:.2f}x |")

big = dict(work="decode", backend="cpu", threads=2, D=4096, H=32, Hkv=32, layers=6, context=128, precision="f32")
f32_big = pick(weights="f32", batch=1, **big)
if f32_big:
    print("\n### Narrow weights: decode of a 6-layer stack, D = 4096 (f32 weights 3.4 GiB), context 128, 2 threads\n")
    print("| weights | batch | weight bytes | bytes read per token | ms per step | tokens/s | x f32 tokens/s | "
          "x f32 at equal bandwidth | paired stream GB/s | fraction of the streaming floor (range) | "
          "fraction of the roofline (batch > 1: the stream or the in-run sgemm, whichever bounds) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for w in ("f32", "bf16", "f16", "q8_0"):
        for b in (1, 4, 16):
            r = pick(weights=w, batch=b, **big)
            if not r:
                continue
            one = pick(weights="f32", batch=b, **big)
            print(f"| {w} | {b} | {gib(r['weight_bytes'])} | {r['bytes_per_token'] / 2**20:.0f} MiB | "
                  f"{r['ms_per_token']:.4g} | {r['tokens_per_s']:.4g} | {speedup(r, one)} | {speedup(r, one, True)} | "
                  f"{f(r['stream_gbps'], '{:.1f}')} | {fraction(r)} | {f(r.get('fraction_of_roofline'), '{:.2f}')} |")
pf = [pick(work="prefill", backend="cpu", threads=2, T=4096, chunk=0, D=512, H=8, Hkv=8, batch=1, precision="f32",
           layers=1, weights=w, cache="f32") for w in ("f32", "bf16", "f16", "q8_0")]
if pf[0]:
    print("\n### Narrow weights: prefill T = 4096 (D = 512, H = Hkv = 8, batch 1, 2 threads)\n")
    print("| weights | seconds | GFLOP/s | in-run sgemm | fraction of sgemm | x f32 speed |")
    print("|---|---|---|---|---|---|")
    for w, r in zip(("f32", "bf16", "f16", "q8_0"), pf):
        if r:
            print(f"| {w} | {r['seconds']:.4g} | {r['gflops']:.4g} | {f(r['sgemm_gflops'], '{:.0f}')} | "
                  f"{f(r['fraction_of_sgemm'], '{:.3f}')} | {pf[0]['seconds'] / r['seconds']:.2f}x |")
cache_rows = [(C, c, pick(work="decode", backend="cpu", threads=2, context=C, steps=16, D=512, H=8, Hkv=8, batch=1,
                          precision="f32", layers=1, weights="f32", cache=c))
              for C in (4096, 32768) for c in ("f32", "bf16", "f16")]
if any(r for _, _, r in cache_rows):
    print("\n### Narrow caches: decode (D = 512, H = Hkv = 8, one layer, batch 1, f32 weights, 2 threads)\n")
    print("| context | cache | cache bytes | bytes read per token | tokens/s | x f32 cache | x f32 at equal bandwidth | "
          "paired stream GB/s | fraction of the streaming floor (range) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for C, c, r in cache_rows:
        if not r:
            continue
        one = pick(work="decode", backend="cpu", threads=2, context=C, steps=16, D=512, H=8, Hkv=8, batch=1,
                   precision="f32", layers=1, weights="f32", cache="f32")
        print(f"| {C} | {c} | {gib(r['cache_bytes'])} | {r['bytes_per_token'] / 2**20:.0f} MiB | {r['tokens_per_s']:.4g} | "
              f"{speedup(r, one)} | {speedup(r, one, True)} | {f(r['stream_gbps'], '{:.1f}')} | {fraction(r)} |")
pc = [pick(work="prefill", backend="cpu", threads=2, T=4096, chunk=0, D=512, H=8, Hkv=8, batch=1, precision="f32",
           layers=1, weights="f32", cache=c) for c in ("f32", "bf16")]
if pc[0] and pc[1]:
    print("\n### Narrow caches: prefill T = 4096 (D = 512, H = Hkv = 8, batch 1, f32 weights, 2 threads)\n")
    print("| cache | seconds | GFLOP/s | in-run sgemm | fraction of sgemm | x f32 cache speed |")
    print("|---|---|---|---|---|---|")
    for c, r in zip(("f32", "bf16"), pc):
        print(f"| {c} | {r['seconds']:.4g} | {r['gflops']:.4g} | {f(r['sgemm_gflops'], '{:.0f}')} | "
              f"{f(r['fraction_of_sgemm'], '{:.3f}')} | {pc[0]['seconds'] / r['seconds']:.2f}x |")
PY
}

if [[ "${1:-}" == "--tables" ]]; then
  render_tables "${2:?usage: bench/run_all.sh --tables OUT.jsonl}"
  exit 0
fi

OUT=${1:-bench-results.jsonl}
BUILD=${BUILD:-/tmp/build_bench}
BENCH=${BENCH:-$BUILD/bench/sessa-bench}
MAX_T=${MAX_T:-65536}
MAX_CONTEXT=${MAX_CONTEXT:-65536}
REF_MAX_T=${REF_MAX_T:-2048}
TORCH_MAX_T=${TORCH_MAX_T:-16384}
[[ -x "$BENCH" ]] || { echo "run_all.sh: no sessa-bench at $BENCH (build the sessa_bench target, or set BENCH)" >&2; exit 1; }

run() {  # prints the command on stderr, appends its JSON line(s) to OUT; a failed row is reported, not fatal
  echo "+ $*" >&2
  "$@" | tee -a "$OUT" || echo "run_all.sh: FAILED: $*" >&2
}

{
  echo "# run_all.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -n) $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"
} >>"$OUT"

common=(--D 512 --H 8 --Hkv 8 --batch 1 --precision f32)
run "$BENCH" yardstick --threads 2
run "$BENCH" yardstick --threads 1

# Prefill, library: best of 3 after a warm-up up to T=16384, a single run above (a run is ~15 s at T=32768).
for T in 512 1024 2048 4096 8192 16384 32768 65536; do
  ((T <= MAX_T)) || continue
  if ((T <= 16384)); then reps=(--repeat 3 --warmup 1); else reps=(--repeat 1 --warmup 0); fi
  run "$BENCH" prefill --T "$T" "${common[@]}" --backend cpu --threads 2 "${reps[@]}"
done
# Chunked prefill at the largest T: same work, workspace bounded by the chunk (memory table).
if ((MAX_T >= 65536)); then
  run "$BENCH" prefill --T 65536 --chunk 4096 "${common[@]}" --backend cpu --threads 2 --repeat 1 --warmup 0
fi
# Prefill, reference backend: the oracle, scalar loops.
for T in 512 1024 2048; do
  ((T <= REF_MAX_T)) || continue
  run "$BENCH" prefill --T "$T" "${common[@]}" --backend reference --threads 2 --repeat 1 --warmup 0 --yardstick off
done
# Decode, library.
for C in 1024 4096 16384 65536; do
  ((C <= MAX_CONTEXT)) || continue
  run "$BENCH" decode --context "$C" --steps 64 "${common[@]}" --backend cpu --threads 2
done
# Thread scaling: the 1-thread rows (the 2-thread ones are above).
((MAX_T >= 4096)) && run "$BENCH" prefill --T 4096 "${common[@]}" --backend cpu --threads 1
((MAX_CONTEXT >= 4096)) && run "$BENCH" decode --context 4096 --steps 64 "${common[@]}" --backend cpu --threads 1

# Narrow weights: decode of a 6-layer D = 4096 stack (3.4 GiB of f32 weights, several times any last-level cache)
# for each storage of the weights and batches 1, 4, 16; prefill T = 4096 with each.
if [[ -z "${SKIP_NARROW:-}" ]]; then
  big=(--D 4096 --H 32 --Hkv 32 --layers 6 --context 128 --steps 16 --precision f32 --backend cpu --threads 2)
  for w in f32 bf16 f16 q8_0; do
    for b in 1 4 16; do run "$BENCH" decode "${big[@]}" --weights "$w" --batch "$b"; done
  done
  for w in f32 bf16 f16 q8_0; do
    ((MAX_T >= 4096)) && run "$BENCH" prefill --T 4096 "${common[@]}" --backend cpu --threads 2 --weights "$w"
  done
  # Narrow caches: decode from long contexts (one layer D = 512: the cache is 8 KiB per token in f32), and prefill.
  for C in 4096 32768; do
    ((C <= MAX_CONTEXT)) || continue
    for c in f32 bf16 f16; do
      run "$BENCH" decode --context "$C" --steps 16 --repeat 5 "${common[@]}" --backend cpu --threads 2 --cache "$c"
    done
  done
  ((MAX_T >= 4096)) && run "$BENCH" prefill --T 4096 "${common[@]}" --backend cpu --threads 2 --cache bf16
fi

# The PyTorch side-by-side.
if [[ -z "${SKIP_TORCH:-}" ]]; then
  for T in 512 1024 2048 4096 8192 16384; do
    ((T <= TORCH_MAX_T)) || continue
    if ((T <= 4096)); then reps=(--repeat 3 --warmup 1); else reps=(--repeat 1 --warmup 0); fi
    run "$PYTHON" "$ROOT/tools/bench_torch.py" prefill --T "$T" --D 512 --H 8 --Hkv 8 --batch 1 --threads 2 "${reps[@]}"
  done
  for C in 1024 4096 16384 65536; do
    ((C <= MAX_CONTEXT)) || continue
    run "$PYTHON" "$ROOT/tools/bench_torch.py" decode --context "$C" --steps 64 --D 512 --H 8 --Hkv 8 --batch 1 --threads 2
  done
fi

echo >&2
render_tables "$OUT"
