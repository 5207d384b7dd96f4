#!/usr/bin/python3
"""The mean cross-entropy `sessa eval` computes, done by the project's float64 PyTorch reference.

    /usr/bin/python3 tools/eval_reference.py MODEL TEXT WINDOW STRIDE [--json]

Same windows as include/sessa/generate/evaluate.hpp: window k covers [k*stride, min(k*stride + window, n)),
stopping with the first window that reaches the end; each window is one prefill from an empty state and scores
every token after its first. The tokenizer is the file's `sessa.vocab` (one token per character). Prints one
JSON line (nats_per_token, bits_per_byte, tokens, bytes, windows); tests/data/eval_tiny.json was written by

    /usr/bin/python3 tools/eval_reference.py examples/models/tiny_decoder.safetensors tests/data/eval_text.txt 128 96

(tests/data/eval_text.txt: the first verses of the held-out text of the shipped model, tools/train_tiny.py).
"""
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
import sessa_ref as ref  # noqa: E402


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    model, text_path, window, stride = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    p, cfg = ref.load_model(model, dtype=torch.float64)
    _, meta = ref.read_safetensors(model)
    vocab = list(meta["sessa.vocab"])
    text = open(text_path, encoding="utf-8").read()
    ids = [vocab.index(c) for c in text]
    n = len(ids)
    nats, scored, nbytes, windows = 0.0, 0, 0, 0
    b = 0
    while True:
        e = min(b + window, n)
        toks = torch.tensor([ids[b:e]], dtype=torch.int64)
        with torch.no_grad():
            logits = ref.decoder_prefill(p, toks, cfg)[0]  # (n, V) float64
        logp = torch.log_softmax(logits, dim=-1)
        for t in range(1, e - b):
            nats -= float(logp[t - 1, ids[b + t]])
            scored += 1
            nbytes += len(vocab[ids[b + t]].encode("utf-8"))
        windows += 1
        if e == n:
            break
        b += stride
    print(json.dumps({"model": os.path.basename(model), "text": os.path.basename(text_path), "window": window,
                      "stride": stride, "nats_per_token": nats / scored, "bits_per_byte": nats / math.log(2) / nbytes,
                      "tokens": scored, "bytes": nbytes, "windows": windows}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
