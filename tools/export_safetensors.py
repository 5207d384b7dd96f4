#!/usr/bin/python3
"""Turns a checkpoint of the public PyTorch modules into a sessa weight file.

    /usr/bin/python3 tools/export_safetensors.py IN OUT --n-heads H [--n-kv-heads K] [--no-rope]
                     [--gamma-max G] [--ln-eps E] [--check [--sessa PATH]]

IN is `torch.save` of a `SessaLayer` state_dict, of a whole model holding such layers under SPEC.md's decoder
names (`embedding.weight`, `layers.{i}.*`, `norm_f.*`, `lm_head.weight` unless tied), of a dict with such a state
dict under "state_dict" or "model", or a file already in safetensors. A "module." prefix (DataParallel) is
dropped. Whether it is a layer or a decoder, d_model, n_layers, vocab_size and tied embeddings are read from the
names and shapes; what the modules do not store comes from the command line (heads, key/value heads, RoPE,
gamma_max, LayerNorm eps). The public modules' buffers (rope_inv_freq, the causal masks) are checked and left
out. Every missing, unknown or mis-shaped tensor is an error naming it. Tensors keep their dtype (F32, F64, F16
or BF16, all of which the library reads).

OUT gets the tensors and the configuration in `__metadata__` (SPEC.md "Weight files"). With --check, the
project's float64 PyTorch reference (tools/reference/sessa_ref.py) and `sessa run` (--sessa PATH, default: the
first of build/release, build/dev or PATH) run the converted file on the same random input, in float64 and in
float32, and the largest differences relative to max|reference| are printed; the exit status is 1 when they
exceed 1e-9 (f64) or 1e-4 (f32). Needs only torch (and numpy, which torch uses).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "reference"))
import sessa_ref as ref  # noqa: E402

LAYER_RE = re.compile(r"^layers\.(\d+)\.")


def fail(msg):
    print(f"export_safetensors: {msg}", file=sys.stderr)
    sys.exit(1)


def read_checkpoint(path):
    with open(path, "rb") as fh:
        head = fh.read(16)
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: 8-byte length, then the JSON header
        tensors, _ = ref.read_safetensors(path)
        return tensors
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except TypeError:  # torch < 1.13 has no weights_only
        obj = torch.load(path, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - torch raises many types for a file it cannot read
        fail(f"{path}: not a torch checkpoint or safetensors file ({e})")
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        fail(f"{path}: expected a state dict (names to tensors)")
    return dict(obj)


def configure(tensors, args, src):
    names = [n[len("module."):] if n.startswith("module.") else n for n in tensors]
    tensors = dict(zip(names, tensors.values()))
    decoder = "embedding.weight" in tensors
    layer_ids = sorted({int(m.group(1)) for n in tensors for m in [LAYER_RE.match(n)] if m})
    if decoder:
        if not layer_ids:
            fail(f"{src}: a decoder (it has embedding.weight) without any layers.{{i}}.* tensors")
        if layer_ids != list(range(len(layer_ids))):
            fail(f"{src}: layer indices {layer_ids} are not 0..{len(layer_ids) - 1}")
    pre = "layers.0." if decoder else ""
    if pre + "ln.weight" not in tensors:
        fail(f"{src}: no tensor '{pre}ln.weight' (is this a Sessa layer or decoder checkpoint?)")
    d_model = int(tensors[pre + "ln.weight"].shape[0])
    cfg = ref.Config(d_model=d_model, n_heads=args.n_heads, n_kv_heads=args.n_kv_heads or args.n_heads,
                     use_rope=not args.no_rope, gamma_max=args.gamma_max, ln_eps=args.ln_eps)
    if decoder:
        cfg.arch = "decoder"
        cfg.vocab_size = int(tensors["embedding.weight"].shape[0])
        cfg.n_layers = len(layer_ids)
        cfg.tie_embeddings = "lm_head.weight" not in tensors
    try:
        cfg.check()
    except ValueError as e:
        fail(f"{src}: {e}")
    kv = pre + "mixer.k_proj.weight"
    if kv in tensors and tuple(tensors[kv].shape) != (cfg.n_kv_heads * cfg.head_dim, d_model):
        fail(f"{src}: '{kv}' has shape {tuple(tensors[kv].shape)}, which is not (n_kv_heads*d, d_model) = "
             f"({cfg.n_kv_heads * cfg.head_dim}, {d_model}) for --n-heads {cfg.n_heads} --n-kv-heads {cfg.n_kv_heads}")
    try:
        ref.check_params(tensors, cfg)
    except (KeyError, ValueError) as e:
        fail(f"{src}: {e.args[0] if e.args else e}")
    kept = {n: t for n, t in tensors.items() if not n.endswith(ref._BUFFERS)}
    for n, t in kept.items():
        if t.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            fail(f"{src}: tensor '{n}' has dtype {t.dtype}; sessa reads float32, float64, float16 and bfloat16")
    return kept, cfg


def find_sessa(explicit):
    if explicit:
        return explicit
    root = os.path.dirname(HERE)
    for cand in ("build/release/tools/cli/sessa", "build/dev/tools/cli/sessa"):
        p = os.path.join(root, cand)
        if os.access(p, os.X_OK):
            return p
    p = shutil.which("sessa")
    if p:
        return p
    fail("--check needs the sessa CLI: build it (bash tools/demo.sh) or give --sessa PATH")


def check(out, cfg, sessa):
    torch.manual_seed(0)
    p, _ = ref.load_model(out, dtype=torch.float64)
    tokens = 24
    with tempfile.TemporaryDirectory() as tmp:
        io_path, got_path = os.path.join(tmp, "in.safetensors"), os.path.join(tmp, "out.safetensors")
        with torch.no_grad():
            if cfg.arch == "decoder":
                x = torch.randint(0, cfg.vocab_size, (2, tokens), dtype=torch.int64)
                want, key = ref.decoder_prefill(p, x, cfg), "logits"
                ref.write_safetensors(io_path, {"tokens": x})
            else:
                x = torch.randn(2, tokens, cfg.d_model, dtype=torch.float32)
                want, key = ref.layer_prefill(p, x.double(), cfg), "y"
                ref.write_safetensors(io_path, {"x": x})
        worst = {}
        for precision in ("f64", "f32"):
            r = subprocess.run([sessa, "run", "--model", out, "--input", io_path, "--output", got_path,
                                "--precision", precision], capture_output=True, text=True)
            if r.returncode != 0:
                fail(f"sessa run failed: {r.stderr.strip()}")
            got, _ = ref.read_safetensors(got_path)
            worst[precision] = float((got[key].double() - want).abs().max() / want.abs().max())
            print(f"check {precision}: max|sessa - reference| / max|reference| = {worst[precision]:.3e}")
    return worst["f64"] <= 1e-9 and worst["f32"] <= 1e-4


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--n-heads", type=int, required=True)
    ap.add_argument("--n-kv-heads", type=int)
    ap.add_argument("--no-rope", action="store_true")
    ap.add_argument("--gamma-max", type=float, default=0.999)
    ap.add_argument("--ln-eps", type=float, default=1e-5)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--sessa")
    args = ap.parse_args()
    try:
        tensors = read_checkpoint(args.input)
    except (OSError, ValueError) as e:
        fail(f"{args.input}: {e}")
    kept, cfg = configure(tensors, args, args.input)
    ref.write_safetensors(args.output, kept, cfg.to_metadata())
    kind = (f"decoder: vocab_size {cfg.vocab_size}, {cfg.n_layers} layers, "
            f"{'tied' if cfg.tie_embeddings else 'untied'} embeddings, " if cfg.arch == "decoder" else "layer: ")
    print(f"wrote {args.output} ({kind}d_model {cfg.d_model}, {cfg.n_heads} heads, {cfg.n_kv_heads} key/value heads, "
          f"rope {'on' if cfg.use_rope else 'off'}, gamma_max {cfg.gamma_max}, {len(kept)} tensors)")
    if args.check and not check(args.output, cfg, find_sessa(args.sessa)):
        fail("the converted file does not reproduce the reference")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
