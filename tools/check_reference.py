#!/usr/bin/python3
"""Checks tools/reference/sessa_ref.py, the project's float64 reference.

    /usr/bin/python3 tools/check_reference.py [--golden DIR]

1. Against shared/golden (made by shared/reference/sessa_torch.py, which matches the public modules):
   every case there, prefill and decode forms, max|diff| / max|out| < 1e-12; and, where
   shared/reference/sessa_torch.py is present, agreement with it on the random models below.
2. Internal consistency, on the golden models and on fresh random ones (GQA, MQA, H = 1, no RoPE,
   sliding window, decoders tied and untied): prefill = decode = chunked for several chunk sizes,
   to 1e-12 relative.
3. Causality: perturbing input token j leaves every output before j bit-identical, in all three forms.
   Also the demo model examples/models/tiny_decoder.safetensors when present.
4. safetensors round trip of every dtype the reader/writer handles, metadata and header layout.

One line per check; exit status 1 if any failed.
"""
import argparse
import json
import os
import struct
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
import sessa_ref as ref  # noqa: E402

TOL = 1e-12
failures = []


def report(ok: bool, what: str, detail: str = ""):
    print(f"{'PASS' if ok else 'FAIL'}  {what}{('  ' + detail) if detail else ''}")
    if not ok:
        failures.append(what)


def rel_diff(a, b) -> float:
    a, b = a.to(torch.float64), b.to(torch.float64)
    scale = max(float(b.abs().max()), 1e-300)
    return float((a - b).abs().max()) / scale


def close(what, got, want, tol=TOL):
    if got.shape != want.shape:
        report(False, what, f"shape {tuple(got.shape)} vs {tuple(want.shape)}")
        return
    r = rel_diff(got, want)
    report(r < tol, what, f"rel {r:.2e} (< {tol:.0e})")


# ----------------------------------------------------------------------------- 1. golden

def check_golden(gdir: str):
    names = sorted({f[:-len(".model.safetensors")] for f in os.listdir(gdir) if f.endswith(".model.safetensors")})
    if not names:
        report(False, f"golden: no cases in {gdir}")
    for name in names:
        p, cfg = ref.load_model(os.path.join(gdir, name + ".model.safetensors"))
        io, _ = ref.read_safetensors(os.path.join(gdir, name + ".io.safetensors"))
        if cfg.arch == "decoder":
            inp, keys = io["tokens"], ("logits", "logits_decode")
        else:
            inp, keys = io["x"].to(torch.float64), ("y", "y_decode")
        close(f"golden {name}: {keys[0]} (prefill)", ref.run(p, inp, cfg, "prefill"), io[keys[0]])
        close(f"golden {name}: {keys[1]} (decode)", ref.run(p, inp, cfg, "decode"), io[keys[1]])
        close(f"golden {name}: {keys[0]} (chunked:4)", ref.run(p, inp, cfg, "chunked:4"), io[keys[0]])


# ----------------------------------------------------------------------------- 2./3. consistency, causality

def random_params(cfg: ref.Config, seed: int):
    gen = torch.Generator().manual_seed(seed)
    p = {}
    for name, shape in ref.param_shapes(cfg).items():
        fan_in = shape[-1] if len(shape) == 2 else 1
        if name.endswith("gamma_bias"):
            t = 1.0 + 0.1 * torch.randn((), generator=gen)
        elif name.endswith("ln.weight") or name == "norm_f.weight":
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:
            t = 0.1 * torch.randn(shape, generator=gen)
        elif name == "embedding.weight":
            t = torch.randn(shape, generator=gen)
        else:
            t = torch.randn(shape, generator=gen) / fan_in ** 0.5
        p[name] = t.to(torch.float32)
    return ref.params_as(p, torch.float64)


def random_input(cfg, B, T, seed):
    gen = torch.Generator().manual_seed(seed)
    if cfg.arch == "decoder":
        return torch.randint(0, cfg.vocab_size, (B, T), generator=gen)
    return torch.randn(B, T, cfg.d_model, generator=gen, dtype=torch.float64)


def check_forms(tag, p, cfg, inp, chunks=(1, 2, 3, 5, 7)):
    T = inp.shape[1]
    want = ref.run(p, inp, cfg, "prefill")
    ok = bool(torch.isfinite(want).all())
    report(ok, f"{tag}: prefill finite", f"max|out| {float(want.abs().max()):.3g}")
    close(f"{tag}: decode = prefill", ref.run(p, inp, cfg, "decode"), want)
    for n in sorted(set(chunks) | {T}):
        close(f"{tag}: chunked:{n} = prefill", ref.run(p, inp, cfg, f"chunked:{n}"), want)


def check_causality(tag, p, cfg, inp, js):
    for mode in ("prefill", "decode", "chunked:3"):
        base = ref.run(p, inp, cfg, mode)
        ok, detail = True, []
        for j in js:
            pert = inp.clone()
            if cfg.arch == "decoder":
                pert[:, j] = (pert[:, j] + 1) % cfg.vocab_size
            else:
                pert[:, j] += 0.75
            out = ref.run(p, pert, cfg, mode)
            same_before = torch.equal(out[:, :j], base[:, :j])
            changed_at = not torch.equal(out[:, j:], base[:, j:])
            ok = ok and same_before and changed_at
            detail.append(f"j={j}:{'ok' if same_before and changed_at else 'BAD'}")
        report(ok, f"{tag}: causality ({mode})", " ".join(detail))


def check_shared_reference(tag, p, cfg, inp):
    """Cross-check against the vectorized shared/reference/sessa_torch.py on a random model."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.normpath(os.path.join(here, "..", "..", "shared", "reference"))
    if not os.path.isfile(os.path.join(path, "sessa_torch.py")):
        return
    sys.path.insert(0, path)
    import sessa_torch as st
    c = {"n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads, "use_rope": cfg.use_rope,
         "gamma_max": cfg.gamma_max, "ln_eps": cfg.ln_eps, "n_layers": cfg.n_layers}
    want = st.decoder(p, inp, c) if cfg.arch == "decoder" else st.layer(p, inp, c)
    close(f"{tag}: prefill = shared/reference/sessa_torch.py", ref.run(p, inp, cfg, "prefill"), want)


def check_window(p, cfg_full, x):
    """A window >= T is the full causal branch; a window of 1 reads only the diagonal."""
    T = x.shape[1]
    wide = ref.Config(**{**cfg_full.__dict__, "window": T})
    close("window: W >= T equals causal (prefill)", ref.run(p, x, wide, "prefill"), ref.run(p, x, cfg_full, "prefill"))
    narrow = ref.Config(**{**cfg_full.__dict__, "window": 4})
    y4 = ref.run(p, x, narrow, "prefill")
    report(rel_diff(y4, ref.run(p, x, cfg_full, "prefill")) > 1e-6, "window: W = 4 differs from causal")
    # first W tokens see the same keys as the causal branch
    same = torch.equal(y4[:, :4], ref.run(p, x, cfg_full, "prefill")[:, :4]) or \
        rel_diff(y4[:, :4], ref.run(p, x, cfg_full, "prefill")[:, :4]) < TOL
    report(same, "window: first W outputs equal causal")


# ----------------------------------------------------------------------------- 4. safetensors

def check_safetensors():
    gen = torch.Generator().manual_seed(7)
    ts = {
        "f64": torch.randn(3, 4, generator=gen, dtype=torch.float64),
        "f32": torch.randn(5, generator=gen),
        "f16": torch.randn(2, 3, generator=gen).to(torch.float16),
        "bf16": torch.randn(4, 2, generator=gen).to(torch.bfloat16),
        "i64": torch.arange(-3, 3, dtype=torch.int64).reshape(2, 3),
        "i32": torch.arange(7, dtype=torch.int32),
        "bool": torch.ones(3, 3, dtype=torch.bool).tril(),
        "scalar": torch.tensor(1.5, dtype=torch.float32),
    }
    meta = {"sessa.arch": "layer", "note": "x y"}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.safetensors")
        ref.write_safetensors(path, ts, meta)
        back, m2 = ref.read_safetensors(path)
        raw = open(path, "rb").read()
    ok = m2 == meta and set(back) == set(ts) and all(
        back[k].dtype == v.dtype and back[k].shape == v.shape and
        torch.equal(back[k].view(torch.int16) if v.dtype == torch.bfloat16 else back[k],
                    v.view(torch.int16) if v.dtype == torch.bfloat16 else v) for k, v in ts.items())
    report(ok, "safetensors: round trip F64/F32/F16/BF16/I64/I32/BOOL/0-d + metadata")
    (n,) = struct.unpack("<Q", raw[:8])
    hdr = raw[8:8 + n].decode()
    keys = list(json.loads(hdr).keys())
    report(n % 8 == 0 and hdr.rstrip(" ") != "" and keys == sorted(keys),
           "safetensors: header padded to 8 with spaces, keys sorted", f"header {n} bytes")


# ----------------------------------------------------------------------------- main

def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--golden", default=os.path.normpath(os.path.join(here, "..", "..", "shared", "golden")))
    args = ap.parse_args()
    torch.set_num_threads(1)

    check_safetensors()
    report(torch.equal(ref.rope_inv_freq(8), torch.tensor([1.0, 0.1, 0.01, 0.001], dtype=torch.float32)),
           "rope: inv_freq(8) = float32(1, 0.1, 0.01, 0.001)")
    if os.path.isdir(args.golden):
        check_golden(args.golden)
    else:
        report(False, f"golden: directory {args.golden} not found")

    C = ref.Config
    cases = [
        ("layer H=4 Hkv=2 rope", C(32, 4, 2), 2, 23),
        ("layer H=1 norope", C(16, 1, 1, use_rope=False, gamma_max=0.9), 1, 20),
        ("layer H=8 Hkv=1 (MQA)", C(32, 8, 1, gamma_max=0.5, ln_eps=1e-6), 2, 17),
        ("layer H=3 Hkv=3", C(24, 3, 3), 3, 11),
        ("layer T=1", C(16, 2, 2), 2, 1),
        ("layer window 5", C(32, 4, 2, window=5), 2, 19),
        ("decoder tied", C(32, 4, 2, arch="decoder", vocab_size=40, n_layers=2), 2, 21),
        ("decoder untied", C(16, 2, 1, arch="decoder", vocab_size=37, n_layers=3, tie_embeddings=False), 1, 15),
    ]
    for i, (tag, cfg, B, T) in enumerate(cases):
        cfg.check()
        p = random_params(cfg, 100 + i)
        inp = random_input(cfg, B, T, 200 + i)
        check_forms(tag, p, cfg, inp)
        if cfg.window is None:
            check_shared_reference(tag, p, cfg, inp)
        if T > 3:
            check_causality(tag, p, cfg, inp, js=(1, T // 2, T - 1))
    tiny = os.path.normpath(os.path.join(here, "..", "examples", "models", "tiny_decoder.safetensors"))
    if os.path.isfile(tiny):
        p, cfg = ref.load_model(tiny)
        vocab = ref.read_safetensors(tiny)[1]["sessa.vocab"]
        text = "And the LORD spake unto Moses, saying, Speak unto Aaron and unto his sons, saying, On this wise"
        toks = torch.tensor([ref.encode_text(text, vocab)])  # longer than the model's window of 64
        check_forms("tiny_decoder", p, cfg, toks, chunks=(4, 16))
    cfg = C(32, 4, 2)
    check_window(random_params(cfg, 300), cfg, random_input(cfg, 2, 19, 301))

    print(f"\n{'all checks passed' if not failures else str(len(failures)) + ' check(s) FAILED'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
