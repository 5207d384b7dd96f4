#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets in tests/fuzz: valid files and hand-broken variants of them.

usage: fuzz_seeds.py OUT_DIR                  every seed, into OUT_DIR/<target>/
       fuzz_seeds.py --broken-only OUT_DIR    only the hand-broken inputs, into OUT_DIR/<target>/

tools/fuzz.sh runs the first form to fill build/fuzz/corpus. The second form writes what tests/fuzz/regressions
holds besides fixed crash inputs (`python3 tools/fuzz_seeds.py --broken-only tests/fuzz/regressions`): each
broken input breaks one rule and must be rejected with a sessa::error, which the replay tests check in every
build. Files are only added or overwritten, never removed, so the crash inputs kept beside them stay.

The valid files are tiny models written here (d_model 4, the layer and decoder shapes the fuzz targets' bare
configurations name), copies of the small tests/data files, and CLI input files for fuzz_run_input's fixed models
(d_model 16, vocabulary 37). Standard library only: no numpy, no torch.
"""

import json
import math
import random
import struct
import sys
from pathlib import Path

USAGE = "usage: fuzz_seeds.py [--broken-only] OUT_DIR"
ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"

# -max_len of each target in tools/fuzz.sh: a longer seed would be cut, so the corpora leave it out, and a
# regression input must fit (it is replayed whole, but libFuzzer could not have produced it).
MAX_LEN = {"fuzz_safetensors": 65536, "fuzz_model_file": 40000, "fuzz_run_input": 4096, "fuzz_config_json": 4096,
           "fuzz_state": 16384}

# ------------------------------------------------------------------------------------------ safetensors

ELEMENT = {"F32": "<f", "F64": "<d", "F16": "<e", "I32": "<i", "I64": "<q", "U8": "<B"}


def bf16_bits(v):
    """float -> bfloat16 bits, round to nearest even (the top half of the float32 bits)."""
    (bits,) = struct.unpack("<I", struct.pack("<f", v))
    return (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16


def encode(dtype, values):
    if dtype == "BF16":
        return b"".join(struct.pack("<H", bf16_bits(v)) for v in values)
    if dtype == "BOOL":
        return bytes(1 if v else 0 for v in values)
    return b"".join(struct.pack(ELEMENT[dtype], v) for v in values)


def header_bytes(header):
    """Compact JSON padded with spaces to a multiple of 8, as the library's writer and the reference write it."""
    text = json.dumps(header, separators=(",", ":")).encode()
    return text + b" " * (-len(text) % 8)


def raw_file(header_text, data=b"", length=None):
    """A file made by hand: the 8-byte length (the header's unless `length` is given), the header, the data."""
    if isinstance(header_text, str):
        header_text = header_text.encode()
    n = len(header_text) if length is None else length
    return struct.pack("<Q", n) + header_text + data


def safetensors(tensors, metadata=None):
    """tensors: (name, dtype, shape, raw bytes) -> a valid file: names sorted, data in that order, metadata last."""
    header, data = {}, b""
    for name, dtype, shape, raw in sorted(tensors, key=lambda t: t[0]):
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata:
        header["__metadata__"] = dict(sorted(metadata.items()))
    return raw_file(header_bytes(header), data)


def split(file):
    """(header dict, data bytes) of a file made by safetensors()."""
    (n,) = struct.unpack("<Q", file[:8])
    return json.loads(file[8 : 8 + n]), file[8 + n :]


def rebuild(header, data, length=None):
    """A file from an edited header (kept in its key order) and data."""
    return raw_file(header_bytes(header), data, length)


# ------------------------------------------------------------------------------------------ models


def layer_parameters(d, h, kv_heads, prefix=""):
    """(name, shape) of every layer parameter, in the order of the library's for_each_parameter."""
    kv = kv_heads * (d // h)
    m = prefix + "mixer."
    out = [(prefix + "ln.weight", [d]), (prefix + "ln.bias", [d]), (prefix + "W_in.weight", [2 * d, d]),
           (prefix + "W_in.bias", [2 * d]), (m + "q_proj.weight", [d, d]), (m + "q_proj.bias", [d]),
           (m + "k_proj.weight", [kv, d]), (m + "k_proj.bias", [kv]), (m + "v_proj.weight", [kv, d]),
           (m + "v_proj.bias", [kv])]
    if h > 1:
        out.append((m + "out_proj.weight", [d, d]))
    out += [(m + "proj_fb.weight", [2 * d, d]), (m + "proj_fb.bias", [2 * d]), (m + "gamma_bias", []),
            (m + "gamma_ctx.weight", [1, d]), (prefix + "W_out.weight", [d, d]), (prefix + "W_out.bias", [d])]
    return out


def decoder_parameters(v, d, h, kv_heads, n_layers, tied):
    out = [("embedding.weight", [v, d])]
    for i in range(n_layers):
        out += layer_parameters(d, h, kv_heads, f"layers.{i}.")
    out += [("norm_f.weight", [d]), ("norm_f.bias", [d])]
    if not tied:
        out.append(("lm_head.weight", [v, d]))
    return out


def values(name, shape, rng):
    """Small deterministic weights: LayerNorm gains near 1, everything else about 1/sqrt(fan-in)."""
    count = math.prod(shape)
    if name.endswith("ln.weight") or name.endswith("norm_f.weight"):
        return [1.0 + 0.1 * rng.uniform(-1, 1) for _ in range(count)]
    scale = 1.0 / math.sqrt(shape[-1]) if shape else 0.5
    return [scale * rng.uniform(-1, 1) for _ in range(count)]


def model(parameters, metadata=None, dtype="F32", seed=1, extra=()):
    rng = random.Random(seed)
    tensors = [(n, dtype, s, encode(dtype, values(n, s, rng))) for n, s in parameters]
    return safetensors(tensors + list(extra), metadata)


def layer_metadata(d, h, kv_heads, rope=True, gamma_max="0.999", ln_eps="1e-05"):
    return {"sessa.arch": "layer", "sessa.d_model": str(d), "sessa.n_heads": str(h),
            "sessa.n_kv_heads": str(kv_heads), "sessa.use_rope": "true" if rope else "false",
            "sessa.gamma_max": gamma_max, "sessa.ln_eps": ln_eps}


def decoder_metadata(v, d, h, kv_heads, n_layers, tied):
    m = layer_metadata(d, h, kv_heads)
    m.update({"sessa.arch": "decoder", "sessa.vocab_size": str(v), "sessa.n_layers": str(n_layers),
              "sessa.tie_embeddings": "true" if tied else "false"})
    return m


def rope_inv_freq(head_dim):
    """10000^(-2i/d) for i < d/2, as float32 (the public modules' mixer.rope_inv_freq buffer)."""
    return [10000.0 ** (struct.unpack("<f", struct.pack("<f", -2.0 * i / head_dim))[0]) for i in range(head_dim // 2)]


# The tiny shapes (fuzz_model_file's bare configurations name the same ones).
LAYER = (4, 2, 1)          # d_model, n_heads, n_kv_heads
DECODER = (6, 4, 2, 1, 2)  # vocab_size, d_model, n_heads, n_kv_heads, n_layers


def tiny_layer(**kw):
    return model(layer_parameters(*LAYER), layer_metadata(*LAYER), **kw)


def tiny_decoder(tied=True, **kw):
    v, d, h, kv, n = DECODER
    return model(decoder_parameters(v, d, h, kv, n, tied), decoder_metadata(v, d, h, kv, n, tied), **kw)


# ------------------------------------------------------------------------------------------ seeds per target


def model_seeds():
    """Valid model files: every dtype, both architectures, windows, buffers, bare state dicts."""
    d, h, kv = LAYER
    v, dd, dh, dkv, n = DECODER
    hd = d // h
    buffers = [("mixer.rope_inv_freq", "F32", [hd // 2], encode("F32", rope_inv_freq(hd))),
               ("mixer.causal_mask_f_full", "BOOL", [3, 3], encode("BOOL", [1, 0, 0, 1, 1, 0, 1, 1, 1])),
               ("mixer.causal_mask_fb_full", "BOOL", [2, 2], encode("BOOL", [0, 0, 1, 0]))]
    window = dict(layer_metadata(*LAYER), **{"sessa.attention": "sliding_window", "sessa.window": "3"})
    dec_window = dict(decoder_metadata(v, dd, dh, dkv, n, True), **{"sessa.attention": "sliding_window",
                                                                    "sessa.window": "2", "sessa.vocab": "abcdef"})
    out = {
        "layer_f32.safetensors": tiny_layer(),
        "layer_f64.safetensors": tiny_layer(dtype="F64"),
        "layer_f16.safetensors": tiny_layer(dtype="F16"),
        "layer_bf16.safetensors": tiny_layer(dtype="BF16"),
        "layer_window3.safetensors": model(layer_parameters(*LAYER), window),
        "layer_buffers.safetensors": model(layer_parameters(*LAYER), layer_metadata(*LAYER), extra=buffers),
        "layer_h1_norope.safetensors": model(layer_parameters(6, 1, 1), layer_metadata(6, 1, 1, rope=False)),
        "layer_bare.safetensors": model(layer_parameters(*LAYER)),
        "decoder_tied.safetensors": tiny_decoder(),
        "decoder_untied_bf16.safetensors": tiny_decoder(tied=False, dtype="BF16"),
        "decoder_window2.safetensors": model(decoder_parameters(v, dd, dh, dkv, n, True), dec_window),
        "decoder_bare.safetensors": model(decoder_parameters(v, dd, dh, dkv, n, False)),
    }
    return out


def copies(pattern):
    return {p.name: p.read_bytes() for p in sorted(DATA.glob(pattern)) if p.stat().st_size <= max(MAX_LEN.values())}


def small_file():
    """A valid file with three tensors (F32, I64, 0-d F16) and metadata: what broken_format() breaks."""
    return safetensors([("a", "F32", [2, 3], encode("F32", [1, 2, 3, 4, 5, 6])),
                        ("b", "I64", [2], encode("I64", [7, -8])),
                        ("c", "F16", [], encode("F16", [0.5]))], {"origin": "fuzz_seeds"})


def broken_format():
    """Files that break one rule of the safetensors format each."""
    good = small_file()
    header, data = split(good)
    (n,) = struct.unpack("<Q", good[:8])

    def edit(extra_data=b"", **changes):
        """good with some tensors' fields changed (and extra_data appended to the data section)."""
        h = json.loads(json.dumps(header))
        for name, fields in changes.items():
            h[name].update(fields)
        return rebuild(h, data + extra_data)

    deep = "[" * 65 + "]" * 65
    return {
        "empty": b"",
        "seven_bytes": good[:7],
        "truncated_header": good[: 8 + n // 2],
        "truncated_data": good[:-1],
        "trailing_byte": good + b"\0",
        "header_length_zero": raw_file(good[8 : 8 + n], data, length=0),
        "header_length_plus_one": raw_file(good[8 : 8 + n], data, length=n + 1),
        "header_length_minus_one": raw_file(good[8 : 8 + n], data, length=n - 1),
        "header_length_huge": raw_file(good[8 : 8 + n], data, length=(1 << 63) + 5),
        "header_length_over_100MiB": raw_file(good[8 : 8 + n], data, length=(100 << 20) + 8),
        "header_not_object": raw_file(header_bytes([1, 2]), b""),
        # thousands of values in a few kilobytes: parsing must not spend a hundred bytes on each
        "header_many_values": raw_file(b"[" + b"0," * 3000 + b"0]"),
        "metadata_many_entries": raw_file(b'{"__metadata__":{' + b",".join(b'"%d":""' % i for i in range(600)) + b"}}"),
        "header_deep_nesting": raw_file(('{"x":' + deep + "}").encode()),
        "header_duplicate_key": raw_file(b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                                         b'"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', b"\1\2"),
        "header_bad_utf8_name": raw_file(b'{"\xc3\x28":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\1"),
        "header_nan_offset": raw_file(b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[NaN,1]}}', b"\1"),
        "offsets_overlap": edit(b={"data_offsets": [8, 24]}),
        "offsets_hole": edit(extra_data=b"\0\0", c={"data_offsets": [42, 44]}),
        "offsets_reversed": edit(b={"data_offsets": [40, 24]}),
        "offsets_past_end": edit(c={"shape": [2048], "data_offsets": [40, 4136]}),
        "offsets_float": edit(b={"data_offsets": [24.0, 40]}),
        "offsets_negative": edit(b={"data_offsets": [-24, 40]}),
        "dtype_unknown": edit(a={"dtype": "F33"}),
        "dtype_lowercase": edit(a={"dtype": "f32"}),
        "dtype_number": edit(a={"dtype": 32}),
        "shape_huge_product": edit(a={"shape": [1 << 53, 1 << 53, 0]}),
        "shape_extent_over_2_53": edit(a={"shape": [(1 << 53) + 1]}),
        "shape_negative": edit(a={"shape": [-2, -3]}),
        "shape_float": edit(a={"shape": [2.0, 3]}),
        "shape_mismatch": edit(a={"shape": [3, 3]}),
        "field_extra": edit(a={"stride": [3, 1]}),
        "metadata_not_string": rebuild(dict(header, __metadata__={"origin": 1}), data),
        "metadata_nested": rebuild(dict(header, __metadata__={"origin": {"deep": "x"}}), data),
        "int64_beyond_int32": safetensors([("t", "I64", [2], encode("I64", [1 << 40, -(1 << 40)]))]),
        "unreadable_dtypes": safetensors([("u", "U8", [3], b"\1\2\3"), ("f8", "F8_E4M3", [2], b"\x38\xb8"),
                                          ("bool", "BOOL", [2], b"\1\0")]),
        "nonfinite_values": safetensors([("f", "F32", [3], encode("F32", [math.nan, math.inf, -math.inf])),
                                         ("h", "F16", [2], encode("F16", [math.inf, -0.0])),
                                         ("d", "F64", [2], encode("F64", [1e300, -1e-320]))]),
    }


def broken_models():
    """Model files whose safetensors layer is valid but whose model breaks one rule each."""
    d, h, kv = LAYER
    v, dd, dh, dkv, n = DECODER
    params = layer_parameters(*LAYER)

    def layer_with(**meta):
        return model(params, dict(layer_metadata(*LAYER), **meta))

    tied = decoder_parameters(v, dd, dh, dkv, n, True)
    tied_meta = decoder_metadata(v, dd, dh, dkv, n, True)

    def decoder_with(**meta):
        return model(tied, dict(tied_meta, **meta))

    bad_freq = [("mixer.rope_inv_freq", "F32", [1], encode("F32", [0.5]))]
    return {
        # n_layers lies: more layers than the file holds, none, negative, past int64, past the limit
        "n_layers_4096": decoder_with(**{"sessa.n_layers": "4096"}),
        "n_layers_3": decoder_with(**{"sessa.n_layers": "3"}),
        "n_layers_0": decoder_with(**{"sessa.n_layers": "0"}),
        "n_layers_negative": decoder_with(**{"sessa.n_layers": "-1"}),
        "n_layers_past_int64": decoder_with(**{"sessa.n_layers": "99999999999999999999"}),
        "n_layers_4097": decoder_with(**{"sessa.n_layers": "4097"}),
        # a decoder of 4096 layers whose file names only layer 4095: the configuration must not size 4096 layers
        "n_layers_4096_one_name": model([("layers.4095.ln.weight", [dd])],
                                        decoder_metadata(v, dd, dh, dkv, 4096, True)),
        "vocab_size_huge": decoder_with(**{"sessa.vocab_size": str(1 << 24)}),
        "vocab_size_past_limit": decoder_with(**{"sessa.vocab_size": str((1 << 24) + 1)}),
        "d_model_huge": layer_with(**{"sessa.d_model": "65536"}),
        "d_model_past_limit": layer_with(**{"sessa.d_model": str(1 << 40)}),
        "d_model_not_integer": layer_with(**{"sessa.d_model": "4.0"}),
        "n_heads_zero": layer_with(**{"sessa.n_heads": "0"}),
        "n_kv_heads_not_divisor": layer_with(**{"sessa.n_kv_heads": "3"}),
        "gamma_max_nan": layer_with(**{"sessa.gamma_max": "nan"}),
        "gamma_max_one": layer_with(**{"sessa.gamma_max": "1"}),
        "ln_eps_inf": layer_with(**{"sessa.ln_eps": "inf"}),
        "ln_eps_trailing_text": layer_with(**{"sessa.ln_eps": "1e-05x"}),
        "use_rope_yes": layer_with(**{"sessa.use_rope": "yes"}),
        "arch_unknown": layer_with(**{"sessa.arch": "encoder"}),
        "arch_decoder_with_layer_tensors": layer_with(**{"sessa.arch": "decoder", "sessa.vocab_size": "6",
                                                         "sessa.n_layers": "1", "sessa.tie_embeddings": "true"}),
        "metadata_key_missing": model(params, {k: v for k, v in layer_metadata(*LAYER).items() if k != "sessa.ln_eps"}),
        "attention_unknown": layer_with(**{"sessa.attention": "linear"}),
        "window_zero": layer_with(**{"sessa.attention": "sliding_window", "sessa.window": "0"}),
        "window_missing": layer_with(**{"sessa.attention": "sliding_window"}),
        "tensor_missing": model([p for p in params if p[0] != "mixer.gamma_bias"], layer_metadata(*LAYER)),
        "tensor_unexpected": model(params + [("mixer.extra", [1])], layer_metadata(*LAYER)),
        "tensor_misshaped": model([(nm, [2 * d, 2 * d] if nm == "W_in.weight" else s) for nm, s in params],
                                  layer_metadata(*LAYER)),
        "tensor_integer_dtype": model([p for p in params if p[0] != "W_in.bias"], layer_metadata(*LAYER),
                                      extra=[("W_in.bias", "I32", [2 * d], encode("I32", [1] * (2 * d)))]),
        "rope_inv_freq_wrong": model(params, layer_metadata(*LAYER), extra=bad_freq),
        "causal_mask_not_square": model(params, layer_metadata(*LAYER),
                                        extra=[("mixer.causal_mask_f_full", "BOOL", [2, 3], b"\1" * 6)]),
        "lm_head_when_tied": model(decoder_parameters(v, dd, dh, dkv, n, False), tied_meta),
        "layer_index_past_n_layers": model(tied + [("layers.7.ln.weight", [dd])], tied_meta),
    }


# fuzz_run_input's fixed models: a layer of d_model 16 and a decoder of vocabulary 37.
RUN_D, RUN_V = 16, 37


def run_input_seeds():
    rng = random.Random(3)

    def x(shape, dtype="F32", fill=None):
        vals = fill if fill is not None else [rng.uniform(-2, 2) for _ in range(math.prod(shape))]
        return ("x", dtype, shape, encode(dtype, vals))

    def tokens(ids, shape, dtype="I64"):
        return ("tokens", dtype, shape, encode(dtype, ids))

    return {
        "tokens_i64.safetensors": safetensors([tokens([5, 0, 36, 12, 7, 7, 1, 30], [1, 8])]),
        "tokens_i32_batch2.safetensors": safetensors([tokens([1, 2, 3, 4, 5, 36, 35, 34, 33, 0], [2, 5], "I32")]),
        "x_f32.safetensors": safetensors([x([2, 3, RUN_D])]),
        "x_f16.safetensors": safetensors([x([1, 4, RUN_D], "F16")]),
        "x_bf16.safetensors": safetensors([x([1, 2, RUN_D], "BF16")]),
        "x_f64_with_y.safetensors": safetensors([x([1, 3, RUN_D], "F64"), ("y", "F64", [1], encode("F64", [0.0]))]),
        "tokens_and_x.safetensors": safetensors([tokens([3, 4], [1, 2]), x([1, 1, RUN_D])]),
    }, {
        "token_past_vocab": safetensors([tokens([0, RUN_V], [1, 2])]),
        "token_negative": safetensors([tokens([-1, 2], [2, 1])]),
        "token_int64_min": safetensors([tokens([-(1 << 63)], [1, 1])]),
        "tokens_rank1": safetensors([tokens([1, 2], [2])]),
        "tokens_rank3": safetensors([tokens([1, 2], [1, 1, 2])]),
        "tokens_empty": safetensors([tokens([], [1, 0])]),
        "tokens_float": safetensors([("tokens", "F32", [1, 2], encode("F32", [1.0, 2.0]))]),
        "x_wrong_width": safetensors([x([1, 2, RUN_D - 1])]),
        "x_rank2": safetensors([x([2, RUN_D])]),
        "x_zero_tokens": safetensors([x([1, 0, RUN_D])]),
        "x_nonfinite": safetensors([x([1, 3, RUN_D], fill=[math.nan, math.inf, -math.inf] * RUN_D)]),
        "x_huge": safetensors([x([1, 2, RUN_D], fill=[3e38, -3e38] * RUN_D)]),
        "x_integer": safetensors([("x", "I32", [1, 1, RUN_D], encode("I32", list(range(RUN_D))))]),
        "neither_x_nor_tokens": safetensors([("X", "F32", [1], encode("F32", [1.0]))]),
    }


def state_seeds():
    """Saved generation states (include/sessa/generate/session.hpp) for fuzz_state's decoder (vocabulary 37,
    d_model 16, 2 heads, 1 key/value head of width 8, 2 layers, untied), valid and hand-broken."""
    rng = random.Random(5)
    meta = decoder_metadata(RUN_V, RUN_D, 2, 1, 2, False)
    meta["sessa.attention"] = "causal"

    def state(length, pending=True, extra_meta=None, drop=(), cache_dtype="F32", override=None):
        n = length + (1 if pending else 0)
        toks = [rng.randrange(RUN_V) for _ in range(n)]
        m = dict(meta)
        m.update({"sessa.state": "1", "sessa.state.cache_dtype": cache_dtype, "sessa.state.length": str(length),
                  "sessa.state.pending": str(toks[-1]) if pending else "none",
                  "sessa.state.rng": ",".join(f"{rng.getrandbits(64):016x}" for _ in range(4))})
        m.update(extra_meta or {})
        tensors = {
            "tokens": ("I64", [n], encode("I64", toks)),
            "logits": ("F32", [RUN_V], encode("F32", [rng.uniform(-3, 3) for _ in range(RUN_V)])),
            "sampler.recent": ("I64", [min(n, 8)], encode("I64", toks[-8:])),
        }
        for i in range(2):
            for w, shape in (("k", [1, 1, length, 8]), ("v", [1, 1, length, 8]), ("kb", [1, length, RUN_D]),
                             ("s", [1, length, RUN_D])):
                tensors[f"layers.{i}.{w}"] = (cache_dtype, shape,
                                              encode(cache_dtype, [rng.uniform(-1, 1) for _ in range(math.prod(shape))]))
        for name, t in (override or {}).items():
            tensors[name] = t
        return safetensors([(k, *v) for k, v in tensors.items() if k not in drop], m)

    return {
        "state_pending.safetensors": state(5),
        "state_fed.safetensors": state(7, pending=False),
        "state_one_token.safetensors": state(1, pending=False),
        "state_full.safetensors": state(15),
    }, {
        "state_too_long": state(20),
        "state_rng_zero": state(3, extra_meta={"sessa.state.rng": ",".join(["0" * 16] * 4)}),
        "state_rng_short": state(3, extra_meta={"sessa.state.rng": "12,34"}),
        "state_pending_mismatch": state(3, extra_meta={"sessa.state.pending": "36"}),
        "state_length_mismatch": state(3, extra_meta={"sessa.state.length": "4"}),
        "state_other_heads": state(3, extra_meta={"sessa.n_heads": "4"}),
        "state_window": state(3, extra_meta={"sessa.attention": "sliding_window", "sessa.window": "4"}),
        "state_f64_cache": state(3, cache_dtype="F64"),
        "state_version_2": state(3, extra_meta={"sessa.state": "2"}),
        "state_no_s": state(3, drop=("layers.1.s",)),
        "state_nan_logits": state(3, override={"logits": ("F32", [RUN_V], encode("F32", [math.nan] * RUN_V))}),
        "state_huge_cache": state(3, override={"layers.0.s": ("F32", [1, 3, RUN_D], encode("F32", [3e38] * (3 * RUN_D)))}),
        "state_token_past_vocab": state(2, override={"tokens": ("I64", [3], encode("I64", [1, 2, RUN_V]))}),
        "state_logits_short": state(2, override={"logits": ("F32", [3], encode("F32", [0.0, 1.0, 2.0]))}),
    }


def config_seeds():
    valid = {
        "layer_minimal.json": '{"d_model": 32, "n_heads": 4}',
        "layer_full.json": '{"arch": "layer", "d_model": 32, "n_heads": 4, "n_kv_heads": 2, "use_rope": true, '
                           '"gamma_max": 0.999, "ln_eps": 1e-05, "attention": "causal"}',
        "decoder.json": '{"arch": "decoder", "d_model": 16, "n_heads": 2, "n_kv_heads": 1, "vocab_size": 37, '
                        '"n_layers": 3, "tie_embeddings": false}',
        "window.json": '{"d_model": 8, "n_heads": 1, "use_rope": false, "attention": "sliding_window", "window": 5}',
        "generic_unicode.json": '{"s": "caf\\u00e9 \\ud83d\\ude00 \u00e9\u20ac\U0001F600 \\/\\b\\f\\n\\r\\t\\"", '
                                '"n": [-0, 0.5e-3, 1E+2, 9007199254740993, -9223372036854775808], "z": null}',
        "generic_depth64.json": "[" * 64 + "]" * 64,
        "generic_del_char.json": '["\x7f", "\\u007f", "\\u0000"]',
    }
    broken = {
        "empty": "",
        "top_level_array": "[1, 2]",
        "missing_d_model": '{"n_heads": 4}',
        "unknown_key": '{"d_model": 32, "n_heads": 4, "heads": 4}',
        "d_model_string": '{"d_model": "32", "n_heads": 4}',
        "d_model_fraction": '{"d_model": 32.0, "n_heads": 4}',
        "d_model_exponent": '{"d_model": 3.2e1, "n_heads": 4}',
        "d_model_negative": '{"d_model": -32, "n_heads": 4}',
        "d_model_past_int64": '{"d_model": 99999999999999999999, "n_heads": 4}',
        "d_model_past_limit": '{"d_model": 131072, "n_heads": 4}',
        "n_layers_past_limit": '{"arch": "decoder", "d_model": 16, "n_heads": 2, "vocab_size": 37, "n_layers": 4097}',
        "vocab_size_past_limit": '{"arch": "decoder", "d_model": 16, "n_heads": 2, "vocab_size": 16777217, '
                                 '"n_layers": 1}',
        "decoder_missing_vocab": '{"arch": "decoder", "d_model": 16, "n_heads": 2, "n_layers": 1}',
        "gamma_max_one": '{"d_model": 32, "n_heads": 4, "gamma_max": 1}',
        "gamma_max_overflow": '{"d_model": 32, "n_heads": 4, "gamma_max": 1e400}',
        "ln_eps_zero": '{"d_model": 32, "n_heads": 4, "ln_eps": 0}',
        "ln_eps_nan_literal": '{"d_model": 32, "n_heads": 4, "ln_eps": NaN}',
        "ln_eps_infinity_literal": '{"d_model": 32, "n_heads": 4, "ln_eps": Infinity}',
        "use_rope_string": '{"d_model": 32, "n_heads": 4, "use_rope": "true"}',
        "window_zero": '{"d_model": 32, "n_heads": 4, "attention": "sliding_window", "window": 0}',
        "window_missing": '{"d_model": 32, "n_heads": 4, "attention": "sliding_window"}',
        "attention_unknown": '{"d_model": 32, "n_heads": 4, "attention": "linear"}',
        "arch_unknown": '{"arch": "encoder", "d_model": 32, "n_heads": 4}',
        "duplicate_key": '{"d_model": 32, "d_model": 16, "n_heads": 4}',
        "trailing_comma": '{"d_model": 32, "n_heads": 4,}',
        "trailing_garbage": '{"d_model": 32, "n_heads": 4} x',
        "byte_order_mark": '\ufeff{"d_model": 32, "n_heads": 4}',
        "depth65": "[" * 65 + "]" * 65,
        "unterminated_string": '{"d_model": 32, "n_heads": 4, "arch": "lay',
        "lone_high_surrogate": '["\\ud800"]',
        "lone_low_surrogate": '["\\udc00x"]',
        "bad_escape": '["\\x41"]',
        "control_character": '["a\tb"]',
        "leading_zero": "[032]",
        "plus_sign": "[+1]",
        "bare_point": "[.5]",
        "exponent_without_digits": "[1e]",
    }
    bad_bytes = {
        "utf8_overlong": b'["\xc0\xaf"]',
        "utf8_surrogate": b'["\xed\xa0\x80"]',
        "utf8_above_10ffff": b'["\xf4\x90\x80\x80"]',
        "utf8_truncated": b'["\xe2\x82"]',
        "utf8_stray_continuation": b'["\x80"]',
    }
    return ({k: v.encode() for k, v in valid.items()},
            dict({k: v.encode() for k, v in broken.items()}, **bad_bytes))


def merge(*parts):
    """One {name: bytes} from several; a name twice is a mistake in this script, not something to overwrite."""
    out = {}
    for part in parts:
        for name, data in part.items():
            if name in out:
                sys.exit(f"fuzz_seeds.py: seed name '{name}' is used twice")
            out[name] = data
    return out


def seeds(broken_only):
    """{target: {file name: bytes}}."""
    fmt = broken_format()
    models = model_seeds()
    bad_models = broken_models()
    run_valid, run_broken = run_input_seeds()
    cfg_valid, cfg_broken = config_seeds()
    state_valid, state_broken = state_seeds()
    if broken_only:
        return {"fuzz_safetensors": fmt, "fuzz_model_file": bad_models, "fuzz_run_input": run_broken,
                "fuzz_config_json": cfg_broken, "fuzz_state": state_broken}
    small = {"small.safetensors": small_file()}
    corpora = {
        "fuzz_safetensors": merge(small, fmt, models, bad_models, run_valid, run_broken, copies("*.safetensors")),
        "fuzz_model_file": merge(models, bad_models, small, fmt, copies("*.model.safetensors")),
        "fuzz_run_input": merge(run_valid, run_broken, small, fmt, copies("*.io.safetensors")),
        "fuzz_config_json": merge(cfg_valid, cfg_broken, copies("*.json")),
        "fuzz_state": merge(state_valid, state_broken, small, fmt),
    }
    # Another target's seed may be longer than this target's -max_len: libFuzzer would cut it, so it is left out.
    return {t: {k: v for k, v in files.items() if len(v) <= MAX_LEN[t]} for t, files in corpora.items()}


def main(argv):
    broken_only = "--broken-only" in argv
    rest = [a for a in argv if a != "--broken-only"]
    if len(rest) != 1 or rest[0].startswith("-"):
        sys.exit(USAGE)
    out = Path(rest[0])
    total = 0
    for target, files in seeds(broken_only).items():
        folder = out / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            if len(data) > MAX_LEN[target]:
                sys.exit(f"fuzz_seeds.py: seed {target}/{name} has {len(data)} bytes, more than -max_len")
            (folder / name).write_bytes(data)
        total += len(files)
        print(f"{folder}: {len(files)} files")
    print(f"{total} seed files")


if __name__ == "__main__":
    main(sys.argv[1:])
