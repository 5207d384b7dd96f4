#!/usr/bin/env python3
"""bench_torch: the Sessa layer as a PyTorch user writes it, timed side by side with sessa-bench.

Why this file exists
--------------------
docs/PERFORMANCE.md reports a "speed-up over PyTorch" column. BASELINES.md holds figures of the public
PyTorch modules measured once; this script produces the same kind of figure in the same run and on the same
machine state as sessa-bench, so the ratio is taken under equal conditions. It is a plain float32 torch
implementation of SPEC.md written for this project, in the vectorized style PyTorch code uses for this
model: (B, H, T, T) masked-softmax score matrices for the forward branch, a (B, T, T) routing matrix for
the feedback and torch.linalg.solve_triangular for the feedback solve (I - diag(gamma) A) s = f; decode
steps against a preallocated cache (k, v after RoPE; k_b; s). Its memory grows with T^2, like the public
modules' prefill.

It prints one JSON object per line with sessa-bench's field names (work, T / context, D, H, Hkv, batch,
backend = "torch", threads, precision, seconds, tokens_per_s, gflops, peak_rss_bytes, ...).
Before timing it checks its own prefill and decode forms against the golden files in tests/data (float64,
"validated_max_rel_diff"), so a wrong implementation is never timed.

  python3 tools/bench_torch.py prefill --T 4096 [--D 512 --H 8 --Hkv 8 --batch 1 --threads 2 --repeat 3]
  python3 tools/bench_torch.py decode --context 4096 --steps 64 [...]
  python3 tools/bench_torch.py check            # only the golden-file check
  python3 tools/bench_torch.py prefill --T 16384 --D 1024 --H 16 --device cuda   # on a GPU (torch >= 2.0)

Needs only torch (Debian python3-torch: run it with /usr/bin/python3). peak_rss_bytes (getrusage) includes the
interpreter and torch itself (~0.2 GiB).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import struct
import sys
import time
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_CASES = ("layer_d32_h4_kv2", "layer_d32_h8_kv1", "layer_d16_h1_norope", "layer_d24_h3_kv3")


# ============================================================================ the layer in torch
class Shape:
    def __init__(self, D: int, H: int, Hkv: int, use_rope: bool = True, gamma_max: float = 0.999,
                 ln_eps: float = 1e-5):
        if D % H or H % Hkv or (use_rope and (D // H) % 2):
            raise ValueError(f"invalid shape D={D} H={H} Hkv={Hkv}")
        self.D, self.H, self.Hkv, self.use_rope = D, H, Hkv, use_rope
        self.gamma_max, self.ln_eps = gamma_max, ln_eps
        self.d = D // H
        self.g = H // Hkv


def random_params(c: Shape, seed: int, dtype=torch.float32) -> Dict[str, torch.Tensor]:
    """Weights ~ N(0, 1/fan_in), LayerNorm near 1, small biases, gain bias near 1 (like model/init.hpp)."""
    gen = torch.Generator().manual_seed(seed)
    D, kv = c.D, c.Hkv * c.d

    def lin(o, i):
        return torch.randn(o, i, generator=gen, dtype=dtype) / math.sqrt(i)

    def vec(n, mean=0.0, sd=0.1):
        return mean + sd * torch.randn(n, generator=gen, dtype=dtype)

    p = {"ln.weight": vec(D, 1.0), "ln.bias": vec(D), "W_in.weight": lin(2 * D, D), "W_in.bias": vec(2 * D),
         "mixer.q_proj.weight": lin(D, D), "mixer.q_proj.bias": vec(D),
         "mixer.k_proj.weight": lin(kv, D), "mixer.k_proj.bias": vec(kv),
         "mixer.v_proj.weight": lin(kv, D), "mixer.v_proj.bias": vec(kv),
         "mixer.proj_fb.weight": lin(2 * D, D), "mixer.proj_fb.bias": vec(2 * D),
         "mixer.gamma_bias": vec(1, 1.0).reshape(()), "mixer.gamma_ctx.weight": lin(1, D),
         "W_out.weight": lin(D, D), "W_out.bias": vec(D)}
    if c.H > 1:
        p["mixer.out_proj.weight"] = lin(D, D)
    return p


def rope_tables(c: Shape, positions: torch.Tensor, dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of t * omega_i, (len(positions), d/2); omega_i = 10000^(-2i/d) rounded to float32."""
    omega = (10000.0 ** (-2.0 * torch.arange(c.d // 2, dtype=torch.float64) / c.d)).to(torch.float32).to(dtype)
    theta = positions.to(dtype)[:, None] * omega[None, :]
    return torch.cos(theta), torch.sin(theta)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on interleaved pairs (x_2i, x_2i+1) of the last axis; cos/sin broadcast over the leading axes."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


def front(p, c: Shape, x: torch.Tensor):
    """LayerNorm, W_in, GELU: x (..., D) -> a (..., D) after GELU, z (..., D)."""
    u = F.layer_norm(x, (c.D,), p["ln.weight"], p["ln.bias"], c.ln_eps)
    a, z = F.linear(u, p["W_in.weight"], p["W_in.bias"]).split(c.D, dim=-1)
    return F.gelu(a), z


def prefill(p, c: Shape, x: torch.Tensor) -> torch.Tensor:
    """x (B, T, D) -> y (B, T, D), all tokens at once."""
    B, T, D = x.shape
    H, Hkv, d, g = c.H, c.Hkv, c.d, c.g
    a, z = front(p, c, x)
    q = F.linear(a, p["mixer.q_proj.weight"], p["mixer.q_proj.bias"]).view(B, T, H, d).transpose(1, 2)  # (B,H,T,d)
    k = F.linear(a, p["mixer.k_proj.weight"], p["mixer.k_proj.bias"]).view(B, T, Hkv, d).transpose(1, 2)
    v = F.linear(a, p["mixer.v_proj.weight"], p["mixer.v_proj.bias"]).view(B, T, Hkv, d).transpose(1, 2)
    if c.use_rope:
        cos, sin = rope_tables(c, torch.arange(T), x.dtype)  # (T, d/2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    if g > 1:
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)  # (B,H,T,d)
    causal = torch.ones(T, T, dtype=torch.bool).tril_()  # s <= t
    scores = (q @ k.transpose(-1, -2)).mul_(1.0 / math.sqrt(d))  # (B,H,T,T)
    scores.masked_fill_(~causal, float("-inf"))
    f = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, T, D)  # (B,T,D)
    del scores
    if H > 1:
        f = F.linear(f, p["mixer.out_proj.weight"])
    qb, kb = F.linear(a, p["mixer.proj_fb.weight"], p["mixer.proj_fb.bias"]).split(D, dim=-1)
    strict = torch.ones(T, T, dtype=torch.bool).tril_(-1)  # s < t
    fb = (qb @ kb.transpose(-1, -2)).mul_(1.0 / math.sqrt(D))  # (B,T,T)
    fb.masked_fill_(~strict, float("-inf"))
    fb[:, 0, 0] = 0.0  # row 0 has no past: any finite entry keeps its softmax finite, the mask zeroes it below
    alpha = torch.softmax(fb, dim=-1).mul_(strict)
    del fb
    gamma = c.gamma_max * torch.tanh(p["mixer.gamma_bias"] + F.linear(a, p["mixer.gamma_ctx.weight"]))  # (B,T,1)
    system = torch.eye(T, dtype=x.dtype) - gamma * alpha  # (B,T,T) unit lower triangular
    del alpha
    s = torch.linalg.solve_triangular(system, f, upper=False, unitriangular=True)  # (B,T,D)
    return x + F.linear(s * z, p["W_out.weight"], p["W_out.bias"])


class Cache:
    """k, v (B, Hkv, cap, d) after RoPE; kb, s (B, cap, D); length t."""

    def __init__(self, c: Shape, B: int, cap: int, dtype):
        self.k = torch.empty(B, c.Hkv, cap, c.d, dtype=dtype)
        self.v = torch.empty(B, c.Hkv, cap, c.d, dtype=dtype)
        self.kb = torch.empty(B, cap, c.D, dtype=dtype)
        self.s = torch.empty(B, cap, c.D, dtype=dtype)
        self.t = 0

    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in (self.k, self.v, self.kb, self.s))


def decode_step(p, c: Shape, x: torch.Tensor, cache: Cache) -> torch.Tensor:
    """x (B, D), one token per batch row at position cache.t -> y (B, D); appends to the cache."""
    B, D = x.shape
    H, Hkv, d, g, t = c.H, c.Hkv, c.d, c.g, cache.t
    a, z = front(p, c, x)
    q = F.linear(a, p["mixer.q_proj.weight"], p["mixer.q_proj.bias"]).view(B, H, d)
    k = F.linear(a, p["mixer.k_proj.weight"], p["mixer.k_proj.bias"]).view(B, Hkv, d)
    v = F.linear(a, p["mixer.v_proj.weight"], p["mixer.v_proj.bias"]).view(B, Hkv, d)
    if c.use_rope:
        cos, sin = rope_tables(c, torch.tensor([t]), x.dtype)  # (1, d/2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    cache.k[:, :, t] = k
    cache.v[:, :, t] = v
    K, V = cache.k[:, :, : t + 1], cache.v[:, :, : t + 1]  # (B,Hkv,t+1,d)
    qg = q.view(B, Hkv, g, d)
    w = torch.softmax((qg @ K.transpose(-1, -2)) * (1.0 / math.sqrt(d)), dim=-1)  # (B,Hkv,g,t+1)
    f = (w @ V).reshape(B, D)
    if H > 1:
        f = F.linear(f, p["mixer.out_proj.weight"])
    qb, kb = F.linear(a, p["mixer.proj_fb.weight"], p["mixer.proj_fb.bias"]).split(D, dim=-1)
    gamma = c.gamma_max * torch.tanh(p["mixer.gamma_bias"] + F.linear(a, p["mixer.gamma_ctx.weight"]))  # (B,1)
    if t > 0:
        alpha = torch.softmax((cache.kb[:, :t] @ qb[:, :, None]).squeeze(-1) * (1.0 / math.sqrt(D)), dim=-1)  # (B,t)
        s = f + gamma * (alpha[:, None, :] @ cache.s[:, :t]).squeeze(1)
    else:
        s = f
    cache.kb[:, t] = kb
    cache.s[:, t] = s
    cache.t = t + 1
    return x + F.linear(s * z, p["W_out.weight"], p["W_out.bias"])


# ============================================================================ validation against tests/data
def read_safetensors(path: str):
    """Minimal reader: {name: tensor} (F32, F64, I64), metadata dict."""
    kinds = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64}
    with open(path, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(n))
        data = fh.read()
    meta = header.pop("__metadata__", {})
    out = {}
    for name, e in header.items():
        b0, b1 = e["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[b0:b1]), dtype=kinds[e["dtype"]]).reshape(e["shape"])
    return out, meta


def check_golden() -> float:
    """Largest relative difference (to max|y|) of this file's prefill and decode forms, run in float64, against
    the golden y / y_decode of tests/data; NaN when no golden file is there."""
    worst = float("nan")
    for case in GOLDEN_CASES:
        base = os.path.join(REPO, "tests", "data", case)
        if not os.path.exists(base + ".model.safetensors"):
            continue
        params, meta = read_safetensors(base + ".model.safetensors")
        io, _ = read_safetensors(base + ".io.safetensors")
        c = Shape(int(meta["sessa.d_model"]), int(meta["sessa.n_heads"]), int(meta["sessa.n_kv_heads"]),
                  meta.get("sessa.use_rope", "true") == "true", float(meta.get("sessa.gamma_max", 0.999)),
                  float(meta.get("sessa.ln_eps", 1e-5)))
        p = {k: v.to(torch.float64) for k, v in params.items() if not k.startswith("mixer.rope")}
        x = io["x"].to(torch.float64)
        y = prefill(p, c, x)
        cache = Cache(c, x.shape[0], x.shape[1], torch.float64)
        yd = torch.stack([decode_step(p, c, x[:, i], cache) for i in range(x.shape[1])], dim=1)
        scale = io["y"].abs().max().item()
        rel = max((y - io["y"]).abs().max().item(), (yd - io["y_decode"]).abs().max().item()) / scale
        worst = rel if math.isnan(worst) else max(worst, rel)
    if not math.isnan(worst) and not worst < 1e-9:
        raise SystemExit(f"bench_torch: validation failed: {worst:.3g} relative to max|y| against tests/data")
    return worst


# ============================================================================ timing
def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def prefill_flops(c: Shape, T: int, B: int) -> float:
    D, kv = c.D, c.Hkv * c.d
    proj = 12 * D * D + 4 * kv * D + (2 * D * D if c.H > 1 else 0)
    return B * (T * proj + 4.0 * T * T * D)


def common_fields(args, c: Shape) -> dict:
    return {"D": c.D, "H": c.H, "Hkv": c.Hkv, "batch": args.batch, "backend": "torch",
            "threads": torch.get_num_threads(), "precision": "f32"}


def emit(obj: dict) -> None:
    """One JSON object on one line; NaN (not JSON) becomes null."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in obj.items()}
    print(json.dumps(clean, separators=(",", ":")), flush=True)


DEVICE = "cpu"  # --device; tensors are made on the CPU and moved, the golden check always runs on the CPU


def sync() -> None:
    """Waits for queued GPU work before a host clock is read (a no-op on the CPU)."""
    if DEVICE != "cpu":
        torch.cuda.synchronize()


def best_of(fn, warmup: int, repeat: int) -> float:
    for _ in range(warmup):
        fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def available_bytes() -> int:
    """Memory the kernel says can be had now without swapping (MemAvailable), else physical memory; on a GPU,
    its free memory."""
    if DEVICE != "cpu":
        return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def cmd_prefill(args, c: Shape, rel: float) -> None:
    T, B = args.T, args.batch
    head = {"work": "prefill", "T": T, **common_fields(args, c)}
    # Peak: the (B, H, T, T) scores and their softmax side by side, plus the boolean masks; the feedback's
    # (B, T, T) matrices come after the scores are freed and are smaller.
    need = 4.0 * B * T * T * (2 * c.H) + 2.0 * T * T
    if need > 0.95 * available_bytes():
        emit({**head, "seconds": None, "error": f"does not fit: needs ~{need / 2**30:.1f} GiB of T x T matrices, "
                                                f"{available_bytes() / 2**30:.1f} GiB available"})
        return
    p = {k: v.to(DEVICE) for k, v in random_params(c, args.seed).items()}
    x = torch.randn(B, T, c.D, generator=torch.Generator().manual_seed(args.seed + 1)).to(DEVICE)
    with torch.inference_mode():
        best = best_of(lambda: prefill(p, c, x), args.warmup, args.repeat)
    gflops = prefill_flops(c, T, B) / best * 1e-9
    emit({**head, "repeat": args.repeat, "seconds": best, "tokens_per_s": B * T / best,
          "gflop": prefill_flops(c, T, B) * 1e-9, "gflops": gflops, "validated_max_rel_diff": rel,
          "peak_rss_bytes": peak_rss(), **device_fields(), "torch": torch.__version__})


def device_fields() -> dict:
    if DEVICE == "cpu":
        return {}
    return {"device": torch.cuda.get_device_name(), "peak_device_bytes": torch.cuda.max_memory_allocated()}


def cmd_decode(args, c: Shape, rel: float) -> None:
    B, ctx, steps = args.batch, args.context, args.steps
    p = {k: v.to(DEVICE) for k, v in random_params(c, args.seed).items()}
    gen = torch.Generator(device=DEVICE).manual_seed(args.seed + 2)
    cache = Cache(c, B, ctx + steps, torch.float32)
    with torch.inference_mode():
        if args.fill == "prefill" and ctx > 0:
            xs = torch.randn(B, ctx, c.D, generator=gen, device=DEVICE)
            for i in range(ctx):
                decode_step(p, c, xs[:, i], cache)
        else:  # what a prefill leaves behind, with random values
            for part in (cache.k[:, :, :ctx], cache.v[:, :, :ctx], cache.kb[:, :ctx], cache.s[:, :ctx]):
                part.uniform_(-1.0, 1.0, generator=gen)
            cache.t = ctx
        xt = torch.randn(B, c.D, generator=gen, device=DEVICE)

        def run(n):
            cache.t = ctx
            for _ in range(n):
                decode_step(p, c, xt, cache)

        for _ in range(args.warmup):
            run(min(steps, 4))
        sync()
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            run(steps)
            sync()
            best = min(best, time.perf_counter() - t0)
    per = best / steps
    emit({"work": "decode", "context": ctx, "steps": steps, **common_fields(args, c), "fill": args.fill,
          "repeat": args.repeat, "seconds": best, "seconds_per_token": per, "ms_per_token": per * 1e3,
          "tokens_per_s": B / per, "validated_max_rel_diff": rel, "peak_rss_bytes": peak_rss(),
          "cache_bytes": cache.nbytes(), **device_fields(), "torch": torch.__version__})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", choices=("prefill", "decode", "check"))
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--fill", choices=("random", "prefill"), default="random")
    ap.add_argument("--D", type=int, default=512)
    ap.add_argument("--H", type=int, default=8)
    ap.add_argument("--Hkv", type=int, default=None)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-rope", action="store_true")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = ap.parse_args()
    global DEVICE
    try:
        torch.set_num_threads(args.threads)
        c = Shape(args.D, args.H, args.Hkv or args.H, not args.no_rope)
        rel = check_golden()
        if args.device == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("--device cuda: torch sees no CUDA device")
            if not hasattr(torch, "set_default_device"):
                raise RuntimeError(f"--device cuda needs torch >= 2.0 (this is {torch.__version__})")
            torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32, as in the library
            torch.set_default_device("cuda")
            DEVICE = "cuda"
        if args.work == "check":
            emit({"work": "check", "validated_max_rel_diff": rel})
        elif args.work == "prefill":
            cmd_prefill(args, c, rel)
        else:
            cmd_decode(args, c, rel)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"bench_torch: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
