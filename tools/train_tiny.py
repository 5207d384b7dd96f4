#!/usr/bin/python3
"""Trains the shipped demo model, examples/models/tiny_decoder.safetensors, on the King James Bible.

    /usr/bin/python3 tools/train_tiny.py [--corpus FILE] [--steps N] [--out MODEL] [--no-docs | --data-only]

A character-level Sessa decoder: D = 112, H = 4, Hkv = 2, 3 layers, RoPE, gamma_max 0.999, tied embeddings,
a forward branch that attends over a sliding window of the last 64 tokens (the feedback branch reads the whole
past, as always), vocabulary = the 62 characters of the corpus (letters of both cases except 'X', space and
!'(),-.:;?) in code point order, stored in the file as `sessa.vocab`. 311,587 parameters: 1.25 MB in float32.

Why the window: trained on windows of 128 characters, the same model with full causal attention in the forward
branch gets worse past 128 tokens (held-out 1.58 nats per character in windows of 128, 2.27 in windows of 512),
while with the forward branch limited to the last 64 tokens it gets better with more context (the feedback
carries it): the model works at any length.

Corpus: the King James Version (1611, public domain; in the United Kingdom the Crown's letters patent still
govern printing) as Debian's `bible-kjv` / `bible-kjv-text` packages install it: `bible -f gen1:1-rev22:21`
prints the 31,102 verses, one per line, each after a reference such as `Ge1:1 `, which is dropped. When `bible`
is missing the script runs `apt-get install -y bible-kjv` (as root; otherwise it stops and says what to do);
`--corpus FILE` reads that output from a file instead.

Split: three whole books are held out and never trained on: Ruth, Jonah and James (narrative, prophecy and an
epistle; 31,769 characters). Every other book is training text. Verses are joined by single spaces, books in
canonical order, so the text is one line (no newline token). The held-out text is written to
tests/data/kjv_heldout.txt, and its first verses (up to 2 KB, whole verses) to tests/data/eval_text.txt, the
text of the `sessa eval` test (tests/data/eval_tiny.json, made by tools/eval_reference.py); --data-only writes
these two files and stops.

Training: AdamW (lr 4e-3, betas 0.9/0.98, weight decay 0.01 on matrices), 50 warm-up steps then cosine decay
to a tenth, gradient norm clipped to 1, batches of 16 random windows of 128 characters, through the float32
prefill form of tools/reference/sessa_ref.py with autograd. Deterministic (two runs write the same bytes):
fixed seeds, a fixed number of steps, 2 threads, and torch.use_deterministic_algorithms (without it the
embedding's backward accumulates in an order that varies between runs). OMP_WAIT_POLICY=PASSIVE is set before
torch loads: the reference runs many small operations, and spinning OpenMP threads slow them down many times
over when another process shares the cores.

Every --eval-every steps the held-out loss is measured on a fixed slice (the first 64 windows of 128
characters of the held-out text, float32 reference); at the end on the whole held-out text in windows of 128
(the windows of `sessa eval --window 128 --stride 128`). The script writes the model, the held-out text,
docs/model_loss.svg (train and held-out loss against step) and docs/model_training.md (the table, the
run's time and figures, greedy samples from the float64 decode form of the reference).
"""
import argparse
import hashlib
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads its OpenMP runtime

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "reference"))
import sessa_ref as ref  # noqa: E402

HELDOUT_BOOKS = ("Ruth", "Jonah", "Jas")          # as `bible` abbreviates them
EVAL_SLICE_BYTES = 2048                           # tests/data/eval_text.txt: whole verses up to this many bytes
SEED = 20261201
PROMPTS = ("And God said", "In the beginning ", "And the LORD spake unto Moses, saying, ")
REF_LINE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


def config(vocab_size: int) -> ref.Config:
    return ref.Config(d_model=112, n_heads=4, n_kv_heads=2, use_rope=True, gamma_max=0.999, ln_eps=1e-5,
                      window=64, arch="decoder", vocab_size=vocab_size, n_layers=3, tie_embeddings=True)


# ------------------------------------------------------------------------------------------------ corpus

def bible_output() -> str:
    """`bible -f gen1:1-rev22:21`, installing Debian's bible-kjv first when the program is missing."""
    exe = shutil.which("bible")
    if exe is None:
        if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
            sys.exit("train_tiny.py: the corpus comes from Debian's bible-kjv package, and `bible` is not installed.\n"
                     "  Install it (sudo apt-get install bible-kjv) or pass --corpus FILE, a file holding the output\n"
                     "  of `bible -f gen1:1-rev22:21`.")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        print("installing bible-kjv: apt-get install -y bible-kjv", flush=True)
        if subprocess.run(["apt-get", "install", "-y", "bible-kjv"], env=env).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, check=True)
            subprocess.run(["apt-get", "install", "-y", "bible-kjv"], env=env, check=True)
        exe = shutil.which("bible")
        if exe is None:
            sys.exit("train_tiny.py: apt-get installed bible-kjv but no `bible` program is on PATH")
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    r = subprocess.run([exe, "-f", "gen1:1-rev22:21"], stdin=subprocess.DEVNULL, capture_output=True, env=env)
    if r.returncode != 0 or not r.stdout:
        sys.exit(f"train_tiny.py: `{exe} -f gen1:1-rev22:21` failed ({r.returncode}): "
                 f"{r.stderr.decode(errors='replace')}")
    return r.stdout.decode("utf-8")


def verses(raw: str):
    """[(book, chapter, verse, text)] from `bible -f` output; a line without a reference continues the verse
    before it (a wrapped line)."""
    out = []
    for line in raw.splitlines():
        m = REF_LINE.match(line)
        if m:
            out.append([m.group(1), int(m.group(2)), int(m.group(3)), m.group(4).strip()])
        elif line.strip():
            if not out:
                raise ValueError(f"the corpus does not start with a verse reference: {line[:60]!r}")
            out[-1][3] += " " + line.strip()
    return [tuple(v) for v in out]


def split(vs):
    """(training text, held-out text, the held-out verses): verses joined by single spaces, books in canonical
    order."""
    books = {b for b, _, _, _ in vs}
    missing = [b for b in HELDOUT_BOOKS if b not in books]
    if missing:
        raise ValueError(f"held-out books {missing} are not in the corpus")
    train = " ".join(" ".join(t.split()) for b, _, _, t in vs if b not in HELDOUT_BOOKS)
    held_verses = [" ".join(t.split()) for b, _, _, t in vs if b in HELDOUT_BOOKS]
    return train, " ".join(held_verses), held_verses


def eval_slice(held_verses) -> str:
    """The first whole verses of the held-out text, at most EVAL_SLICE_BYTES bytes."""
    out = held_verses[0]
    for v in held_verses[1:]:
        if len(out) + 1 + len(v) > EVAL_SLICE_BYTES:
            break
        out += " " + v
    return out


# ------------------------------------------------------------------------------------------------ model

def init_params(cfg: ref.Config, gen: torch.Generator):
    p = {}
    for name, shape in ref.param_shapes(cfg).items():
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


def windows(n: int, window: int, stride: int):
    """`sessa eval`'s windows of n tokens: [k*stride, min(k*stride + window, n)), up to the first that reaches n."""
    out, b = [], 0
    while True:
        e = min(b + window, n)
        out.append((b, e))
        if e == n:
            return out
        b += stride


@torch.no_grad()
def mean_nats(p, cfg, ids: torch.Tensor, wins, batch: int = 64):
    """Mean -log p(token | the tokens before it in its window) over every token after a window's first."""
    total, count = 0.0, 0
    groups = {}
    for b, e in wins:
        groups.setdefault(e - b, []).append(b)
    for length, starts in sorted(groups.items()):
        for i in range(0, len(starts), batch):
            toks = torch.stack([ids[s:s + length] for s in starts[i:i + batch]])
            logits = ref.decoder_prefill(p, toks[:, :-1], cfg)
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size).double(),
                                                    toks[:, 1:].reshape(-1), reduction="sum")
            total += float(nll)
            count += toks[:, 1:].numel()
    return total / count


# ------------------------------------------------------------------------------------------------ outputs

def svg_plot(rows, path: str, title: str, heldout_label: str):
    """Train and held-out loss against step, as a self-contained SVG (no plotting library)."""
    W, H, left, right, top, bottom = 640, 380, 64, 20, 36, 52
    steps = [r["step"] for r in rows]
    vals = [r["train"] for r in rows if r["train"] is not None] + [r["heldout"] for r in rows]
    x_max = max(steps) or 1
    y_lo, y_hi = math.floor(min(vals) * 2) / 2, math.ceil(max(vals) * 2) / 2
    if y_hi - y_lo < 0.5:
        y_hi = y_lo + 0.5

    def X(s):
        return left + (W - left - right) * s / x_max

    def Y(v):
        return top + (H - top - bottom) * (y_hi - v) / (y_hi - y_lo)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>']
    # grid and y ticks every 0.5 nats
    v = y_lo
    while v <= y_hi + 1e-9:
        out.append(f'<line x1="{left}" y1="{Y(v):.1f}" x2="{W - right}" y2="{Y(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{v:.1f}</text>')
        v += 0.5
    # x ticks: the first of 1, 2, 5, 10, 20, 50, ... steps that gives at most 8 intervals
    tick = 1
    while x_max / tick > 8:
        tick = tick * 5 // 2 if str(tick)[0] == "2" else tick * 2
    for s in range(0, x_max + 1, tick):
        out.append(f'<line x1="{X(s):.1f}" y1="{H - bottom}" x2="{X(s):.1f}" y2="{H - bottom + 4}" stroke="black"/>')
        out.append(f'<text x="{X(s):.1f}" y="{H - bottom + 18}" text-anchor="middle">{s}</text>')
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{H - bottom}" stroke="black"/>')
    out.append(f'<line x1="{left}" y1="{H - bottom}" x2="{W - right}" y2="{H - bottom}" stroke="black"/>')
    out.append(f'<text x="{(left + W - right) / 2}" y="{H - 12}" text-anchor="middle">step</text>')
    out.append(f'<text x="16" y="{(top + H - bottom) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {(top + H - bottom) / 2})">loss (nats per character)</text>')
    series = [("train (mean batch loss since the last point)", "#1f77b4", "train"),
              (heldout_label, "#d62728", "heldout")]
    for label, color, key in series:
        pts = " ".join(f"{X(r['step']):.1f},{Y(r[key]):.1f}" for r in rows if r[key] is not None)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>')
    lx, ly = W - right - 350, top + 10
    out.append(f'<rect x="{lx}" y="{ly}" width="340" height="46" fill="white" stroke="#999"/>')
    for i, (label, color, _) in enumerate(series):
        yy = ly + 16 + 18 * i
        out.append(f'<line x1="{lx + 8}" y1="{yy - 4}" x2="{lx + 32}" y2="{yy - 4}" stroke="{color}" '
                   'stroke-width="2"/>')
        out.append(f'<text x="{lx + 38}" y="{yy}">{label}</text>')
    out.append("</svg>")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(out) + "\n")


def write_test_texts(held_text: str, held_verses):
    data_dir = os.path.join(ROOT, "tests", "data")
    with open(os.path.join(data_dir, "kjv_heldout.txt"), "w", encoding="utf-8") as fh:
        fh.write(held_text)
    with open(os.path.join(data_dir, "eval_text.txt"), "w", encoding="utf-8") as fh:
        fh.write(eval_slice(held_verses))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", help="the output of `bible -f gen1:1-rev22:21` (default: run bible)")
    ap.add_argument("--out", default=os.path.join(ROOT, "examples", "models", "tiny_decoder.safetensors"))
    ap.add_argument("--steps", type=int, default=1100)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-docs", action="store_true",
                    help="write only the model (not tests/data/*.txt, docs/model_loss.svg, docs/model_training.md)")
    ap.add_argument("--data-only", action="store_true",
                    help="write tests/data/kjv_heldout.txt and tests/data/eval_text.txt from the corpus, and stop")
    args = ap.parse_args()

    t_start = time.time()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)  # the embedding's backward (index_put_ with accumulate) included
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)

    raw = open(args.corpus, encoding="utf-8").read() if args.corpus else bible_output()
    vs = verses(raw)
    train_text, held_text, held_verses = split(vs)
    vocab = "".join(sorted(set(train_text) | set(held_text)))
    cfg = config(len(vocab))
    digest = hashlib.sha256((train_text + "\0" + held_text).encode("utf-8")).hexdigest()
    print(f"{len(vs)} verses; training text {len(train_text)} characters, held out ({', '.join(HELDOUT_BOOKS)}) "
          f"{len(held_text)}; vocabulary {len(vocab)}: {vocab!r}; sha256 {digest[:16]}", flush=True)
    if args.data_only:
        write_test_texts(held_text, held_verses)
        print("wrote tests/data/kjv_heldout.txt, tests/data/eval_text.txt")
        return
    index = {c: i for i, c in enumerate(vocab)}
    data = torch.tensor([index[c] for c in train_text], dtype=torch.int64)
    held = torch.tensor([index[c] for c in held_text], dtype=torch.int64)
    slice_wins = windows(min(len(held), 64 * args.seq), args.seq, args.seq)
    full_wins = windows(len(held), args.seq, args.seq)

    p = init_params(cfg, gen)
    n_params = sum(v.numel() for v in p.values())
    decay = [v for k, v in p.items() if v.dim() == 2 and k != "embedding.weight"]
    rest = [v for k, v in p.items() if not (v.dim() == 2 and k != "embedding.weight")]
    lr0, warm = args.lr, 50
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr0, betas=(0.9, 0.98))
    rows, losses = [], []
    t0 = time.time()

    def record(step):
        h = mean_nats(p, cfg, held, slice_wins)
        tr = sum(losses) / len(losses) if losses else None
        rows.append({"step": step, "train": tr, "heldout": h, "seconds": time.time() - t0})
        losses.clear()
        trs = f"{tr:.4f}" if tr is not None else "  -   "
        print(f"step {step:5d}  train {trs}  held-out {h:.4f}  {time.time() - t0:7.1f}s", flush=True)

    record(0)
    for step in range(args.steps):
        lr = lr0 * min(1.0, (step + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(data) - args.seq - 1, (args.batch,), generator=gen)
        win = torch.stack([data[s:s + args.seq + 1] for s in starts.tolist()])
        logits = ref.decoder_prefill(p, win[:, :-1], cfg)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size), win[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(p.values()), 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            record(step + 1)
    train_seconds = time.time() - t0

    params = {k: v.detach().to(torch.float32).contiguous() for k, v in p.items()}
    meta = cfg.to_metadata()
    meta["sessa.vocab"] = vocab
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    ref.write_safetensors(args.out, params, meta)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, {n_params} parameters)", flush=True)

    final = mean_nats(params, cfg, held, full_wins)
    print(f"held-out (whole, windows of {args.seq}): {final:.4f} nats/char, {final / math.log(2):.4f} bits/char",
          flush=True)
    p64, cfg64 = ref.load_model(args.out)
    with torch.no_grad():
        samples = [(pr, ref.greedy_generate(p64, cfg64, pr, 200, vocab)) for pr in PROMPTS]
    for pr, s in samples:
        print(f"greedy {pr!r} -> {s!r}", flush=True)
    total_seconds = time.time() - t_start

    if args.no_docs:
        return
    write_test_texts(held_text, held_verses)
    docs = os.path.join(ROOT, "docs")
    seen = args.steps * args.batch * args.seq
    svg_plot(rows, os.path.join(docs, "model_loss.svg"),
             f"tiny_decoder: D={cfg.d_model}, {cfg.n_layers} layers, {n_params:,} parameters, KJV characters",
             f"held-out (the first {len(slice_wins)} windows of {args.seq})")
    lines = [
        "# Training run of the shipped model",
        "",
        "Written by `tools/train_tiny.py` (do not edit; docs/MODEL.md explains the model). Loss curve:",
        "[model_loss.svg](model_loss.svg).",
        "",
        f"- torch {torch.__version__}, Python {platform.python_version()}, {args.threads} threads; "
        f"{args.steps} steps of {args.batch} windows of {args.seq} characters "
        f"({seen:,} characters, {seen / len(train_text):.2f} passes over the training text)",
        f"- corpus: {len(vs):,} verses; training text {len(train_text):,} characters, held-out text "
        f"({', '.join(HELDOUT_BOOKS)}) {len(held_text):,}; sha256 of both {digest[:16]}…",
        f"- {n_params:,} parameters; vocabulary of {len(vocab)} characters",
        f"- wall time: {train_seconds:.0f} s training (including the held-out evaluations), "
        f"{total_seconds:.0f} s in all",
        f"- final held-out loss, whole held-out text in windows of {args.seq} (`sessa eval --window {args.seq} "
        f"--stride {args.seq}`): **{final:.4f} nats per character, {final / math.log(2):.4f} bits per character**",
        "",
        f"| step | train loss (mean of the batches since the previous row) | held-out loss (first "
        f"{len(slice_wins)} windows of {args.seq}) | held-out bits/char | seconds |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        tr = f"{r['train']:.4f}" if r["train"] is not None else "–"
        lines.append(f"| {r['step']} | {tr} | {r['heldout']:.4f} | {r['heldout'] / math.log(2):.4f} "
                     f"| {r['seconds']:.0f} |")
    lines += ["", "Greedy continuations (float64 decode form of the reference, 200 characters):", ""]
    for pr, s in samples:
        lines.append(f"- `{pr}` → {s}")
    with open(os.path.join(docs, "model_training.md"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    print("wrote tests/data/kjv_heldout.txt, tests/data/eval_text.txt, docs/model_loss.svg, docs/model_training.md")


if __name__ == "__main__":
    main()
