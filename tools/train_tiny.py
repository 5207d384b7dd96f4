#!/usr/bin/python3
"""Trains the README demo model, examples/models/tiny_decoder.safetensors, on the CPU.

    /usr/bin/python3 tools/train_tiny.py [--out examples/models/tiny_decoder.safetensors] [--steps N]

A character-level Sessa decoder: vocab 64 (token i = ASCII byte 32 + i, ' '..'_', so text is
uppercased and anything else becomes a space), D = 64, H = 4, Hkv = 2, 2 layers, tied embeddings,
RoPE, gamma_max 0.999. It is trained for a minute or so with AdamW on the few paragraphs of English
below, through the float32 prefill form of tools/reference/sessa_ref.py with autograd, so that greedy
generation from a prompt such as "THE " gives recognizable fragments of the text. It memorizes; it
is a demo, not a language model.

Deterministic: fixed seed, one thread, a fixed number of steps. The file carries the full metadata
(SPEC.md "Weight files") plus `sessa.vocab`, the 64 characters in token order. At the end the script
prints a greedy sample computed with the float64 decode form of the reference.
"""
import argparse
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
import sessa_ref as ref  # noqa: E402

TEXT = """
The sun rose over the quiet hills, and the river ran down to the sea. In the little town by the water,
the people woke early. The baker lit his oven, the fisher mended her nets, and the children ran to the
school at the top of the hill. It was the first day of spring, and the air was warm and bright.

The old lighthouse keeper watched the boats go out. Every morning he counted them, and every evening
he counted them again as they came home. He had done this for forty years. He knew the name of every
boat and the face of every sailor. When the wind was strong and the waves were high, he kept his lamp
burning through the night, so that no one would be lost on the rocks.

One day a stranger came to the town. She carried a small bag and a large book. She asked the baker for
bread, and she asked the fisher for the way to the lighthouse. The keeper met her at the door. "I have
come to learn the sea," she said. "Then you must learn to wait," he answered, "for the sea tells its
story slowly." And so she stayed, and she listened, and she wrote the story of the sea in her book.

The seasons turned. The summer was long and golden, the autumn brought the storms, and the winter was
cold and still. Through all of it the lamp kept burning, and the boats came home, and the book grew
thick with the names of the wind, the tides, the birds and the stars. When the spring came again, the
keeper was old and tired, and the stranger was no longer a stranger. She took the lamp, and she kept
it burning, and the town slept safe by the sea.
"""

CFG = ref.Config(d_model=64, n_heads=4, n_kv_heads=2, use_rope=True, gamma_max=0.999, ln_eps=1e-5,
                 arch="decoder", vocab_size=64, n_layers=2, tie_embeddings=True)


def corpus() -> torch.Tensor:
    text = " ".join(TEXT.split())                       # one line, single spaces
    return torch.tensor(ref.encode_text(text), dtype=torch.int64)


def init_params(gen: torch.Generator):
    p = {}
    for name, shape in ref.param_shapes(CFG).items():
        fan_in = shape[-1] if len(shape) == 2 else 1
        if name.endswith("gamma_bias"):
            t = torch.full((), 0.5)
        elif name.endswith("gamma_ctx.weight"):
            t = 0.1 * torch.randn(shape, generator=gen) / fan_in ** 0.5
        elif name.endswith("ln.weight") or name == "norm_f.weight":
            t = torch.ones(shape)
        elif len(shape) == 1:
            t = torch.zeros(shape)
        elif name == "embedding.weight":
            t = 0.05 * torch.randn(shape, generator=gen)
        elif name.endswith("W_out.weight") or name.endswith("out_proj.weight"):
            t = 0.5 * torch.randn(shape, generator=gen) / fan_in ** 0.5
        else:
            t = torch.randn(shape, generator=gen) / fan_in ** 0.5
        p[name] = t.to(torch.float32).requires_grad_(True)
    return p


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.normpath(os.path.join(here, "..", "examples", "models", "tiny_decoder.safetensors")))
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(20261125)
    gen = torch.Generator().manual_seed(20261125)
    data = corpus()
    p = init_params(gen)
    decay = [v for k, v in p.items() if v.dim() == 2 and k != "embedding.weight"]
    rest = [v for k, v in p.items() if not (v.dim() == 2 and k != "embedding.weight")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                            lr=3e-3, betas=(0.9, 0.98))
    warm, lr0 = 30, 3e-3
    t0 = time.time()
    for step in range(args.steps):
        lr = lr0 * min(1.0, (step + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(data) - args.seq - 1, (args.batch,), generator=gen)
        win = torch.stack([data[s:s + args.seq + 1] for s in starts.tolist()])
        logits = ref.decoder_prefill(p, win[:, :-1], CFG)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, CFG.vocab_size), win[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(p.values()), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  lr {lr:.2e}  {time.time() - t0:5.1f}s", flush=True)

    params = {k: v.detach().to(torch.float32).contiguous() for k, v in p.items()}
    meta = CFG.to_metadata()
    meta["sessa.vocab"] = ref.CHARSET
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    ref.write_safetensors(args.out, params, meta)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")

    p64, cfg = ref.load_model(args.out)
    for prompt in ("THE ", "THE KEEPER "):
        print(f"greedy {prompt!r} -> {ref.greedy_generate(p64, cfg, prompt, 80)!r}")


if __name__ == "__main__":
    main()
