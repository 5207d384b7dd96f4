#!/usr/bin/env python3
"""Largest output difference of each weight storage type against the float64 golden vectors.

For every golden case (a MODEL.model.safetensors beside MODEL.io.safetensors holding the input `x` or `tokens` and
the float64 reference `y` or `logits`), runs `sessa run --weights W` for each storage type W and prints the largest
absolute difference and that difference over the largest |reference| value: the figures of docs/PERFORMANCE.md's
accuracy tables. Pure Python (no numpy): reads safetensors headers and F32 / F64 data with struct.

usage: tools/storage_accuracy.py SESSA_CLI DIR [DIR...] [--weights f32,bf16,f16,q8_0]
"""
import json
import os
import struct
import subprocess
import sys
import tempfile


def read_tensor(path, name):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    entry = header[name]
    begin, end = entry["data_offsets"]
    raw = data[8 + n + begin:8 + n + end]
    fmt = {"F32": "f", "F64": "d"}[entry["dtype"]]
    return struct.unpack("<%d%s" % (len(raw) // struct.calcsize(fmt), fmt), raw)


def main(argv):
    weights = ["f32", "bf16", "f16", "q8_0"]
    args = []
    i = 1
    while i < len(argv):
        if argv[i] == "--weights":
            weights = argv[i + 1].split(",")
            i += 2
        else:
            args.append(argv[i])
            i += 1
    if len(args) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cli, dirs = args[0], args[1:]
    print("case | output | " + " | ".join(weights))
    for d in dirs:
        for name in sorted(os.listdir(d)):
            if not name.endswith(".model.safetensors"):
                continue
            case = name[: -len(".model.safetensors")]
            io_path = os.path.join(d, case + ".io.safetensors")
            if not os.path.exists(io_path) or case.endswith("_bare"):  # a bare state dict needs --config
                continue
            with open(io_path, "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                header = json.loads(f.read(n))
            out_name = "logits" if "logits" in header else "y"
            want = read_tensor(io_path, out_name)
            scale = max(abs(v) for v in want)
            cells = []
            for w in weights:
                with tempfile.TemporaryDirectory() as tmp:
                    out = os.path.join(tmp, "out.safetensors")
                    r = subprocess.run([cli, "run", "--model", os.path.join(d, name), "--input", io_path, "--output",
                                        out, "--weights", w], capture_output=True, text=True)
                    if r.returncode != 0:
                        cells.append("error: " + r.stderr.strip())
                        continue
                    got = read_tensor(out, out_name)
                diff = max(abs(a - b) for a, b in zip(got, want))
                cells.append("%.2g (%.2g)" % (diff, diff / scale))
            print("%s/%s | %s | %s" % (os.path.basename(os.path.normpath(d)), case, out_name, " | ".join(cells)))
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
