#!/usr/bin/python3
"""CTest `export_safetensors`: tools/export_safetensors.py on checkpoints shaped like the public modules'.

    test_export_safetensors.py SESSA_CLI TEST_DATA_DIR SCRATCH_DIR

Builds torch.save checkpoints the way the public modules write them (a SessaLayer state_dict with its
rope_inv_freq and causal-mask buffers and a DataParallel "module." prefix; a decoder state dict nested under
"state_dict"; an untied decoder saved as safetensors without metadata) from the project's test models, converts
each with --check (sessa run against the float64 reference, f64 and f32), and checks that bad inputs fail with
a message naming the problem. Exit 77 (CTest: skipped) when torch is not installed.
"""
import os
import subprocess
import sys

try:
    import torch
except ImportError:
    print("torch is not installed: skipped")
    sys.exit(77)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "reference"))
import sessa_ref as ref  # noqa: E402

EXPORT = os.path.join(ROOT, "tools", "export_safetensors.py")


def run(args):
    return subprocess.run([sys.executable, EXPORT] + args, capture_output=True, text=True)


def main():
    cli, data, scratch = sys.argv[1:4]
    os.makedirs(scratch, exist_ok=True)
    failures = []

    def expect(ok, what):
        if not ok:
            failures.append(what)
            print("FAILED:", what)

    layer, _ = ref.read_safetensors(os.path.join(data, "layer_d32_h4_kv2.model.safetensors"))
    layer = dict(layer)
    layer["mixer.rope_inv_freq"] = ref.rope_inv_freq(8)
    layer["mixer.causal_mask_f_full"] = torch.ones(16, 16, dtype=torch.bool).tril()
    layer["mixer.causal_mask_fb_full"] = torch.ones(16, 16, dtype=torch.bool).tril(-1)
    torch.save({"module." + k: v for k, v in layer.items()}, os.path.join(scratch, "layer.pt"))
    dec, _ = ref.read_safetensors(os.path.join(data, "decoder_v40_d32_l2_tied.model.safetensors"))
    torch.save({"state_dict": dict(dec)}, os.path.join(scratch, "decoder.pt"))
    untied, _ = ref.read_safetensors(os.path.join(data, "decoder_v37_d16_l3_untied.model.safetensors"))
    ref.write_safetensors(os.path.join(scratch, "untied_bare.safetensors"), dict(untied))

    cases = [("layer.pt", ["--n-heads", "4", "--n-kv-heads", "2"], "layer: d_model 32, 4 heads, 2 key/value heads"),
             ("decoder.pt", ["--n-heads", "4", "--n-kv-heads", "2"], "decoder: vocab_size 40, 2 layers, tied"),
             ("untied_bare.safetensors", ["--n-heads", "2", "--n-kv-heads", "1"], "decoder: vocab_size 37, 3 layers, untied")]
    for name, opts, summary in cases:
        out = os.path.join(scratch, name + ".sessa.safetensors")
        r = run([os.path.join(scratch, name), out] + opts + ["--check", "--sessa", cli])
        print(r.stdout + r.stderr)
        expect(r.returncode == 0, f"{name}: exit {r.returncode}")
        expect(summary in r.stdout, f"{name}: summary '{summary}'")
        expect(r.stdout.count("check f") == 2, f"{name}: both precisions checked")
        _, meta = ref.read_safetensors(out)
        expect(meta.get("sessa.n_heads") == opts[1], f"{name}: metadata sessa.n_heads")
        # The converted file loads in the CLI with its own metadata, and the buffers were left out.
        info = subprocess.run([cli, "info", "--model", out], capture_output=True, text=True)
        expect(info.returncode == 0, f"{name}: sessa info")
        tensors, _ = ref.read_safetensors(out)
        expect(not any(k.endswith(("rope_inv_freq", "_full")) for k in tensors), f"{name}: buffers dropped")

    bad = [
        (["layer.pt", "x", "--n-heads", "4"], "'mixer.k_proj.weight' has shape (16, 32), which is not"),
        (["layer.pt", "x", "--n-heads", "3"], "d_model=32 is not a multiple of n_heads=3"),
        (["layer.pt", "x", "--n-heads", "4", "--n-kv-heads", "2", "--gamma-max", "1.5"], "gamma_max=1.5 must lie in (0, 1)"),
        (["nope.pt", "x", "--n-heads", "4"], "nope.pt"),
    ]
    broken = dict(layer)
    del broken["W_out.bias"]
    torch.save(broken, os.path.join(scratch, "missing.pt"))
    bad.append((["missing.pt", "x", "--n-heads", "4", "--n-kv-heads", "2"], "missing tensor 'W_out.bias'"))
    extra = dict(layer)
    extra["mixer.extra.weight"] = torch.zeros(2)
    torch.save(extra, os.path.join(scratch, "extra.pt"))
    bad.append((["extra.pt", "x", "--n-heads", "4", "--n-kv-heads", "2"], "unknown tensor 'mixer.extra.weight'"))
    with open(os.path.join(scratch, "junk.pt"), "wb") as fh:
        fh.write(b"not a checkpoint at all")
    bad.append((["junk.pt", "x", "--n-heads", "4"], "not a torch checkpoint or safetensors file"))
    for args, needle in bad:
        args = [os.path.join(scratch, args[0]), os.path.join(scratch, "never.safetensors")] + args[2:]
        r = run(args)
        expect(r.returncode == 1 and needle in r.stderr and r.stderr.count("\n") == 1,
               f"{args[0]}: exit {r.returncode}, stderr {r.stderr.strip()!r} should name '{needle}'")
        expect(not os.path.exists(os.path.join(scratch, "never.safetensors")), f"{args[0]}: no output file")
    if failures:
        print(f"{len(failures)} failures")
        sys.exit(1)
    print("all export checks passed")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
