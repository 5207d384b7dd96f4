#!/usr/bin/python3
"""Generates the project's golden vectors in tests/data/ with tools/reference/sessa_ref.py.

    /usr/bin/python3 tools/make_golden.py [--out tests/data]

Deterministic: every case draws its parameters and input from its own fixed torch seed, computes in
float64 on one thread, and the safetensors writer is byte-stable, so two runs give byte-identical
files (check with sha256sum tests/data/*).

Each case NAME is two files (SPEC.md "Golden vectors"):
  NAME.model.safetensors  parameters (F32 unless stated) + `__metadata__` (SPEC.md "Weight files":
                          sessa.arch, sessa.d_model, sessa.n_heads, sessa.n_kv_heads, sessa.use_rope,
                          sessa.gamma_max, sessa.ln_eps; decoders also sessa.vocab_size, sessa.n_layers,
                          sessa.tie_embeddings; a sliding-window case also sessa.attention, sessa.window)
  NAME.io.safetensors     layer:   x F32 (B,T,D); y, y_decode, y_chunked3 F64 (B,T,D)
                          decoder: tokens I64 (B,T); logits, logits_decode, logits_chunked5 F64 (B,T,V)
Outputs are computed in float64 from the stored parameters promoted exactly (F32, BF16 or F16) and
from x as stored (F32): `y` by the prefill form, `y_decode` token by token with a cache, `y_chunked3`
by chunked prefill with chunks of 3 tokens (decoders: chunks of 5).

Special cases:
  layer_d32_h4_kv1_t600, layer_d32_h2_kv1_t4300
                          long sequences: across the cpu kernels' blocks and tiles, and past prefill_block
  layer_d32_h4_kv2_bare   no `__metadata__` (a bare state dict) and the public modules' buffers
                          mixer.rope_inv_freq F32 (d/2), mixer.causal_mask_f_full / _fb_full BOOL (64,64);
                          its configuration is in layer_d32_h4_kv2_bare.config.json
  layer_d32_h4_kv2_bf16   parameters stored as BF16; _f16: as F16
  layer_d32_h4_kv2_window8  sliding window W = 8 on the forward branch

Parameter distribution (float32 draws): matrices N(0, 1/fan_in) (std 1/sqrt(fan_in)); biases
N(0, 0.1^2); LayerNorm weights 1 + N(0, 0.1^2); gamma_bias 1 + N(0, 0.1^2) (gains ~ 0.76 gamma_max);
gamma_ctx N(0, 1/fan_in) / 2; embeddings N(0, 1). Layer inputs x ~ N(0, 1).
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
import sessa_ref as ref  # noqa: E402

C = ref.Config

# name, config, B, T, seed, options
CASES = [
    ("layer_d16_h1_norope", C(16, 1, 1, use_rope=False, gamma_max=0.9), 1, 20, 1001, {}),
    ("layer_d32_h4_kv2", C(32, 4, 2), 2, 33, 1002, {}),
    ("layer_d24_h3_kv3", C(24, 3, 3), 3, 17, 1003, {}),
    ("layer_d32_h8_kv1", C(32, 8, 1, gamma_max=0.5, ln_eps=1e-6), 1, 40, 1004, {}),
    ("layer_d16_h2_t1", C(16, 2, 2), 2, 1, 1005, {}),
    ("decoder_v40_d32_l2_tied", C(32, 4, 2, arch="decoder", vocab_size=40, n_layers=2), 2, 30, 1006, {}),
    ("decoder_v37_d16_l3_untied",
     C(16, 2, 1, arch="decoder", vocab_size=37, n_layers=3, tie_embeddings=False), 1, 25, 1007, {}),
    ("layer_d32_h4_kv2_bare", C(32, 4, 2), 2, 33, 1008, {"bare": True}),
    ("layer_d32_h4_kv2_bf16", C(32, 4, 2), 2, 33, 1009, {"store": torch.bfloat16}),
    ("layer_d32_h4_kv2_f16", C(32, 4, 2), 2, 33, 1010, {"store": torch.float16}),
    ("layer_d32_h4_kv2_window8", C(32, 4, 2, window=8), 2, 33, 1011, {}),
    # Long enough to cross the cpu kernels' feedback blocks (128), key tiles (128) and query tiles (256 rows).
    ("layer_d32_h4_kv1_t600", C(32, 4, 1), 2, 600, 1012, {}),
    # Longer than sessa::prefill_block (4096), and a decode long enough to cross the decode key tiles
    # (attention: 4096 keys of d = 16; feedback: 2048 keys of D = 32). Tests tag it [slow].
    ("layer_d32_h2_kv1_t4300", C(32, 2, 1), 1, 4300, 1013, {}),
]
MASK_LEN = 64            # max_len of the public modules' causal-mask buffers in the bare case
LAYER_CHUNK, DECODER_CHUNK = 3, 5


def init_params(cfg: ref.Config, gen: torch.Generator):
    """float32 parameters, drawn in ref.param_shapes order."""
    p = {}
    for name, shape in ref.param_shapes(cfg).items():
        fan_in = shape[-1] if len(shape) == 2 else 1
        if name.endswith("gamma_bias"):
            t = 1.0 + 0.1 * torch.randn((), generator=gen)
        elif name.endswith("gamma_ctx.weight"):
            t = 0.5 * torch.randn(shape, generator=gen) / fan_in ** 0.5
        elif name.endswith("ln.weight") or name == "norm_f.weight":
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:
            t = 0.1 * torch.randn(shape, generator=gen)
        elif name == "embedding.weight":
            t = torch.randn(shape, generator=gen)
        else:
            t = torch.randn(shape, generator=gen) / fan_in ** 0.5
        p[name] = t.to(torch.float32).contiguous()
    return p


def feedback_share(p64, cfg, inp):
    """max|y - y(no feedback)| / max|y|: how much the feedback branch moves the output."""
    q = dict(p64)
    for k in q:
        if k.endswith("gamma_bias") or k.endswith("gamma_ctx.weight"):
            q[k] = torch.zeros_like(q[k])
    y, y0 = ref.run(p64, inp, cfg, "prefill"), ref.run(q, inp, cfg, "prefill")
    return float((y - y0).abs().max() / y.abs().max())


def make_case(out_dir, name, cfg, B, T, seed, opt):
    cfg.check()
    gen = torch.Generator().manual_seed(seed)
    params = init_params(cfg, gen)
    if "store" in opt:
        params = {k: v.to(opt["store"]) for k, v in params.items()}
    if cfg.arch == "decoder":
        inp = torch.randint(0, cfg.vocab_size, (B, T), generator=gen, dtype=torch.int64)
        inp64, keys, chunk = inp, ("logits", "logits_decode", f"logits_chunked{DECODER_CHUNK}"), DECODER_CHUNK
    else:
        inp = torch.randn(B, T, cfg.d_model, generator=gen, dtype=torch.float32)
        inp64, keys, chunk = inp.to(torch.float64), ("y", "y_decode", f"y_chunked{LAYER_CHUNK}"), LAYER_CHUNK

    p64 = ref.params_as(params, torch.float64)
    outs = [ref.run(p64, inp64, cfg, "prefill"), ref.run(p64, inp64, cfg, "decode"),
            ref.run(p64, inp64, cfg, f"chunked:{chunk}")]
    scale = float(outs[0].abs().max())
    for o, k in zip(outs[1:], keys[1:]):
        r = float((o - outs[0]).abs().max()) / scale
        if not r < 1e-12:
            raise RuntimeError(f"{name}: {k} differs from {keys[0]} by {r:.3e} relative")

    model_path = os.path.join(out_dir, name + ".model.safetensors")
    if opt.get("bare"):
        stored = dict(params)
        stored["mixer.rope_inv_freq"] = ref.rope_inv_freq(cfg.head_dim)
        tri = torch.ones(MASK_LEN, MASK_LEN, dtype=torch.bool)
        stored["mixer.causal_mask_f_full"] = tri.tril(0)       # s <= t
        stored["mixer.causal_mask_fb_full"] = tri.tril(-1)     # s < t
        ref.write_safetensors(model_path, stored, None)
        with open(os.path.join(out_dir, name + ".config.json"), "w") as fh:
            fh.write(json.dumps(cfg.to_json_dict(), indent=2, sort_keys=True) + "\n")
    else:
        ref.write_safetensors(model_path, params, cfg.to_metadata())
    io = {("tokens" if cfg.arch == "decoder" else "x"): inp}
    io.update({k: o for k, o in zip(keys, outs)})
    ref.write_safetensors(os.path.join(out_dir, name + ".io.safetensors"), io, None)

    # read back through the reader: the files reproduce what was computed
    p_back, cfg_back = ref.load_model(model_path, cfg if opt.get("bare") else None)
    assert cfg_back.to_metadata() == cfg.to_metadata(), name
    y_back = ref.run(p_back, inp64, cfg_back, "prefill")
    assert torch.equal(y_back, outs[0]), f"{name}: re-read model does not reproduce {keys[0]}"

    gam = [float(v) for k, v in p64.items() if k.endswith("gamma_bias")]
    print(f"{name:28s} B={B} T={T:4d} max|{keys[0]}|={scale:7.3f}  "
          f"feedback share={feedback_share(p64, cfg, inp64):.3f}  gamma_bias={gam[0]:.3f}")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "data"))
    ap.add_argument("--only", default="", help="comma-separated case names (default: every case)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    for case in CASES:
        if only is None or case[0] in only:
            make_case(args.out, *case)


if __name__ == "__main__":
    main()
