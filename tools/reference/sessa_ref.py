"""sessa_ref: the project's own reference for the Sessa layer and decoder (see shared/SPEC.md).

Why this file exists
--------------------
The C++ library is tested against numbers that this module computes. It is written for clarity and
for agreement between its own three forms, not for speed:

  * prefill   - all T tokens at once: matrices for the forward branch, the feedback gains and routing
                built as a (T, T) strictly-lower matrix M = diag(gamma) A, then the unit lower-triangular
                system (I - M) s = f solved by an explicit forward-substitution loop over tokens;
  * decode    - one token at a time against a cache (k, v after RoPE; k_b; s), with explicit loops over
                batch rows and heads, exactly as SPEC.md "Recurrent (decode) form" describes it;
  * chunked   - prefill of a chunk of N tokens that extends an existing cache (positions continue).

All three must agree to float64 rounding; tools/check_reference.py checks that, causality, and
agreement with shared/golden. The functions are generic in the floating type of the tensors they are
given, so tools/train_tiny.py trains with the float32 prefill form through autograd (nothing here
writes into a tensor in place on the prefill path).

Also here: an optional sliding window on the forward branch (query t reads keys
max(0, t-W+1)..t; the feedback branch always reads the whole strict past), a minimal safetensors
reader/writer (F64/F32/F16/BF16/I64/I32/I16/I8/U8/BOOL, string `__metadata__`, header keys sorted,
header padded with spaces to a multiple of 8), configuration <-> metadata, and a parameter-name check.

Conventions: parameters are a dict {name: tensor} with SPEC.md's names (a decoder prefixes
`layers.{i}.`); `W x` is `x @ W.T`. Promote parameters with `params_as(p, torch.float64)` first when
float64 results are wanted: the functions compute in the dtype of what they are given.
Needs only torch and numpy (Debian python3-torch, python3-numpy).
"""
from __future__ import annotations

import dataclasses
import json
import math
import struct
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

# =============================================================================== configuration


@dataclasses.dataclass
class Config:
    """Hyperparameters of a layer (and, when arch == 'decoder', of the decoder around it)."""
    d_model: int
    n_heads: int
    n_kv_heads: int
    use_rope: bool = True
    gamma_max: float = 0.999
    ln_eps: float = 1e-5
    window: Optional[int] = None          # sliding window on the forward branch; None = full causal
    arch: str = "layer"                    # 'layer' | 'decoder'
    vocab_size: int = 0
    n_layers: int = 0
    tie_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    def check(self) -> "Config":
        if self.d_model <= 0 or self.n_heads <= 0 or self.n_kv_heads <= 0:
            raise ValueError(f"sizes must be positive: {self}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not a multiple of n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.use_rope and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head width, got d={self.head_dim}")
        if not 0.0 < self.gamma_max < 1.0:
            raise ValueError(f"gamma_max={self.gamma_max} must lie in (0, 1)")
        if self.window is not None and self.window < 1:
            raise ValueError(f"window={self.window} must be >= 1")
        if self.arch not in ("layer", "decoder"):
            raise ValueError(f"arch={self.arch!r} must be 'layer' or 'decoder'")
        if self.arch == "decoder" and (self.vocab_size <= 0 or self.n_layers <= 0):
            raise ValueError(f"a decoder needs vocab_size and n_layers: {self}")
        return self

    # --- metadata (SPEC.md "Weight files"): every value a string
    def to_metadata(self) -> Dict[str, str]:
        m = {
            "sessa.arch": self.arch,
            "sessa.d_model": str(self.d_model),
            "sessa.n_heads": str(self.n_heads),
            "sessa.n_kv_heads": str(self.n_kv_heads),
            "sessa.use_rope": "true" if self.use_rope else "false",
            "sessa.gamma_max": repr(float(self.gamma_max)),
            "sessa.ln_eps": repr(float(self.ln_eps)),
        }
        if self.arch == "decoder":
            m["sessa.vocab_size"] = str(self.vocab_size)
            m["sessa.n_layers"] = str(self.n_layers)
            m["sessa.tie_embeddings"] = "true" if self.tie_embeddings else "false"
        if self.window is not None:
            m["sessa.attention"] = "sliding_window"
            m["sessa.window"] = str(self.window)
        return m

    @staticmethod
    def from_metadata(m: Dict[str, str]) -> "Config":
        def flag(key):
            v = m[key]
            if v not in ("true", "false"):
                raise ValueError(f"{key}={v!r} must be 'true' or 'false'")
            return v == "true"

        c = Config(d_model=int(m["sessa.d_model"]), n_heads=int(m["sessa.n_heads"]),
                   n_kv_heads=int(m["sessa.n_kv_heads"]), use_rope=flag("sessa.use_rope"),
                   gamma_max=float(m["sessa.gamma_max"]), ln_eps=float(m["sessa.ln_eps"]),
                   arch=m.get("sessa.arch", "layer"))
        if c.arch == "decoder":
            c.vocab_size = int(m["sessa.vocab_size"])
            c.n_layers = int(m["sessa.n_layers"])
            c.tie_embeddings = flag("sessa.tie_embeddings")
        attn = m.get("sessa.attention", "causal")
        if attn == "sliding_window":
            c.window = int(m["sessa.window"])
        elif attn != "causal":
            raise ValueError(f"unknown sessa.attention={attn!r}")
        return c.check()

    # --- JSON sidecar (for bare state dicts): plain JSON types
    def to_json_dict(self) -> dict:
        d = {"d_model": self.d_model, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
             "use_rope": self.use_rope, "gamma_max": self.gamma_max, "ln_eps": self.ln_eps}
        if self.arch == "decoder":
            d.update(vocab_size=self.vocab_size, n_layers=self.n_layers, tie_embeddings=self.tie_embeddings)
        return d

    @staticmethod
    def from_json_dict(d: dict, arch: str = "layer") -> "Config":
        c = Config(d_model=int(d["d_model"]), n_heads=int(d["n_heads"]), n_kv_heads=int(d["n_kv_heads"]),
                   use_rope=bool(d.get("use_rope", True)), gamma_max=float(d.get("gamma_max", 0.999)),
                   ln_eps=float(d.get("ln_eps", 1e-5)), arch=arch)
        if "vocab_size" in d:
            c.arch = "decoder"
            c.vocab_size, c.n_layers = int(d["vocab_size"]), int(d["n_layers"])
            c.tie_embeddings = bool(d.get("tie_embeddings", True))
        return c.check()


# =============================================================================== safetensors

# dtype name -> (numpy little-endian dtype, torch dtype). BF16 travels through uint16 bits.
_ST_TYPES = {
    "F64": ("<f8", torch.float64),
    "F32": ("<f4", torch.float32),
    "F16": ("<f2", torch.float16),
    "BF16": ("<u2", torch.bfloat16),
    "I64": ("<i8", torch.int64),
    "I32": ("<i4", torch.int32),
    "I16": ("<i2", torch.int16),
    "I8": ("i1", torch.int8),
    "U8": ("u1", torch.uint8),
    "BOOL": ("?", torch.bool),
}
_TORCH_TO_ST = {tt: name for name, (_, tt) in _ST_TYPES.items()}


def _bf16_from_bits(bits: np.ndarray) -> torch.Tensor:
    """uint16 bit patterns -> torch.bfloat16 tensor with exactly those bits."""
    return torch.from_numpy(bits.astype("<u2").view(np.int16).copy()).view(torch.bfloat16)


def read_safetensors(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Reads a safetensors file into ({name: tensor}, metadata). Checks the header strictly."""
    with open(path, "rb") as fh:
        blob = fh.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        raise ValueError(f"{path}: header length {n} runs past the end of the file")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = memoryview(blob)[8 + n:]
    meta = header.pop("__metadata__", None) or {}
    for k, v in meta.items():
        if not isinstance(v, str):
            raise ValueError(f"{path}: metadata {k!r} is not a string")
    out: Dict[str, torch.Tensor] = {}
    for name, e in header.items():
        if e["dtype"] not in _ST_TYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {e['dtype']}")
        npt, tt = _ST_TYPES[e["dtype"]]
        shape = [int(s) for s in e["shape"]]
        lo, hi = (int(o) for o in e["data_offsets"])
        count = int(np.prod(shape)) if shape else 1
        if not 0 <= lo <= hi <= len(data) or hi - lo != count * np.dtype(npt).itemsize:
            raise ValueError(f"{path}: tensor {name!r} has bad data_offsets {[lo, hi]} for shape {shape}")
        arr = np.frombuffer(data[lo:hi], dtype=npt, count=count).reshape(shape)
        if e["dtype"] == "BF16":
            out[name] = _bf16_from_bits(arr)
        else:
            out[name] = torch.from_numpy(arr.astype(arr.dtype.newbyteorder("=")).copy())
    return out, dict(meta)


def _tensor_bytes(t: torch.Tensor) -> Tuple[str, List[int], bytes]:
    t = t.detach().cpu().contiguous()
    if t.dtype not in _TORCH_TO_ST:
        raise ValueError(f"cannot store dtype {t.dtype}")
    name = _TORCH_TO_ST[t.dtype]
    if t.dtype == torch.bfloat16:
        raw = t.view(torch.int16).numpy().astype("<i2").tobytes()
    else:
        raw = t.numpy().astype(_ST_TYPES[name][0]).tobytes()
    return name, list(t.shape), raw


def write_safetensors(path: str, tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None):
    """Writes tensors (data in sorted-name order) and optional string metadata. The JSON header has its
    keys sorted, no spaces, and is padded with spaces so that the data starts at a multiple of 8."""
    header, chunks, off = {}, [], 0
    for name in sorted(tensors):
        if name == "__metadata__":
            raise ValueError("'__metadata__' is reserved")
        dt, shape, raw = _tensor_bytes(tensors[name])
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ValueError(f"metadata must map strings to strings: {k!r}: {v!r}")
        header["__metadata__"] = dict(metadata)
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)))
        fh.write(text)
        for raw in chunks:
            fh.write(raw)


# =============================================================================== parameters

_BUFFERS = ("mixer.rope_inv_freq", "mixer.causal_mask_f_full", "mixer.causal_mask_fb_full")


def layer_param_shapes(cfg: Config) -> Dict[str, Tuple[int, ...]]:
    """The parameters of one layer, with their shapes (SPEC.md table)."""
    D, kv = cfg.d_model, cfg.n_kv_heads * cfg.head_dim
    s = {
        "ln.weight": (D,), "ln.bias": (D,),
        "W_in.weight": (2 * D, D), "W_in.bias": (2 * D,),
        "mixer.q_proj.weight": (D, D), "mixer.q_proj.bias": (D,),
        "mixer.k_proj.weight": (kv, D), "mixer.k_proj.bias": (kv,),
        "mixer.v_proj.weight": (kv, D), "mixer.v_proj.bias": (kv,),
        "mixer.proj_fb.weight": (2 * D, D), "mixer.proj_fb.bias": (2 * D,),
        "mixer.gamma_bias": (),
        "mixer.gamma_ctx.weight": (1, D),
        "W_out.weight": (D, D), "W_out.bias": (D,),
    }
    if cfg.n_heads > 1:
        s["mixer.out_proj.weight"] = (D, D)
    return s


def param_shapes(cfg: Config) -> Dict[str, Tuple[int, ...]]:
    """All parameters of a layer or decoder, in a fixed order (the order used to draw them at random)."""
    if cfg.arch == "layer":
        return layer_param_shapes(cfg)
    out = {"embedding.weight": (cfg.vocab_size, cfg.d_model)}
    for i in range(cfg.n_layers):
        out.update({f"layers.{i}.{k}": v for k, v in layer_param_shapes(cfg).items()})
    out["norm_f.weight"] = (cfg.d_model,)
    out["norm_f.bias"] = (cfg.d_model,)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = (cfg.vocab_size, cfg.d_model)
    return out


def check_params(p: Dict[str, torch.Tensor], cfg: Config):
    """Raises naming the first missing, unknown or mis-shaped tensor. Public-module buffers are accepted."""
    want = param_shapes(cfg)
    prefixes = [""] if cfg.arch == "layer" else [f"layers.{i}." for i in range(cfg.n_layers)]
    buffers = {pre + b for pre in prefixes for b in _BUFFERS}
    for name in sorted(p):
        if name not in want and name not in buffers:
            raise KeyError(f"unknown tensor {name!r}")
    for name, shape in want.items():
        if name not in p:
            raise KeyError(f"missing tensor {name!r}")
        if tuple(p[name].shape) != shape:
            raise ValueError(f"tensor {name!r} has shape {tuple(p[name].shape)}, expected {shape}")
    for pre in prefixes:
        name = pre + "mixer.rope_inv_freq"
        if name in p and cfg.use_rope and not torch.equal(p[name].float(), rope_inv_freq(cfg.head_dim)):
            raise ValueError(f"{name!r} differs from 10000^(-2i/d) rounded to float32")


def params_as(p: Dict[str, torch.Tensor], dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    """Floating tensors converted (exactly, when widening) to dtype; others (bool masks) unchanged."""
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in p.items()}


def load_model(path: str, cfg: Optional[Config] = None, dtype=torch.float64):
    """Reads a weight file; the configuration comes from its metadata unless given. Returns (params, cfg)."""
    p, meta = read_safetensors(path)
    if cfg is None:
        if "sessa.d_model" not in meta:
            raise ValueError(f"{path}: no sessa.* metadata; give the configuration")
        cfg = Config.from_metadata(meta)
    check_params(p, cfg)
    return params_as(p, dtype), cfg


# =============================================================================== building blocks

def dense(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x @ w.T (+ b): w stored (out, in)."""
    y = torch.matmul(x, w.transpose(0, 1))
    return y if b is None else y + b


def layer_norm(x, w, b, eps):
    """Biased variance, eps inside the square root."""
    mu = x.mean(dim=-1, keepdim=True)
    xc = x - mu
    var = (xc * xc).mean(dim=-1, keepdim=True)
    return xc / torch.sqrt(var + eps) * w + b


def gelu(x):
    """Exact GELU: 0.5 x (1 + erf(x / sqrt 2))."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def softmax(x, dim=-1):
    """Max-subtracted softmax; -inf entries get weight exactly 0 (each row needs one finite entry)."""
    m = x.max(dim=dim, keepdim=True).values
    e = torch.exp(x - m)
    return e / e.sum(dim=dim, keepdim=True)


def rope_inv_freq(head_dim: int) -> torch.Tensor:
    """omega_i = 10000^(-2i/d), i in [0, d/2), as the public modules and include/sessa/attention/rope.hpp form it:
    the exponent -2i/d in float32, the power in double, rounded once to float32. (Where -2i/d is not exact in
    float32, e.g. d = 28, an exponent formed in double gives a different float32 omega for some i.)"""
    exps = [np.float32(-2.0 * i) / np.float32(head_dim) for i in range(head_dim // 2)]
    return torch.tensor([float(np.float32(10000.0 ** float(e))) for e in exps], dtype=torch.float32)


def rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotates (even, odd) pairs of the last axis. x: (..., n, d); positions: (n,) absolute positions.
    theta = position * omega formed in x's dtype from the float32 omega."""
    theta = positions.to(x.dtype)[:, None] * inv_freq.to(x.dtype)[None, :]      # (n, d/2)
    c, s = torch.cos(theta), torch.sin(theta)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)


def feedback_gain(p, pre, a, gamma_max):
    """gamma_t = gamma_max * tanh(gamma_bias + gamma_ctx . a_t): a (..., D) -> (...)."""
    return gamma_max * torch.tanh(p[pre + "gamma_bias"] + dense(a, p[pre + "gamma_ctx.weight"])[..., 0])


def first_key(t: int, window: Optional[int]) -> int:
    """First key position the forward branch of query t reads."""
    return 0 if window is None else max(0, t - window + 1)


def _projections(p, pre, a, cfg: Config, pos0: int):
    """q (B,n,H,d), k/v (B,n,Hkv,d) with RoPE at positions pos0.., and q_b/k_b (B,n,D)."""
    B, n, D = a.shape
    H, Hkv, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    q = dense(a, p[pre + "q_proj.weight"], p[pre + "q_proj.bias"]).reshape(B, n, H, d)
    k = dense(a, p[pre + "k_proj.weight"], p[pre + "k_proj.bias"]).reshape(B, n, Hkv, d)
    v = dense(a, p[pre + "v_proj.weight"], p[pre + "v_proj.bias"]).reshape(B, n, Hkv, d)
    if cfg.use_rope:
        pos = torch.arange(pos0, pos0 + n)
        inv = rope_inv_freq(d)
        q = rope(q.transpose(1, 2), pos, inv).transpose(1, 2)      # rotate along the token axis
        k = rope(k.transpose(1, 2), pos, inv).transpose(1, 2)
    fb = dense(a, p[pre + "proj_fb.weight"], p[pre + "proj_fb.bias"])
    return q, k, v, fb[..., :D], fb[..., D:]


def _key_mask(n_q: int, pos0: int, n_k: int, window: Optional[int]) -> torch.Tensor:
    """(n_q, n_k) bool, True where query pos0+i may read key j: first_key(pos0+i) <= j <= pos0+i."""
    t = torch.arange(pos0, pos0 + n_q)[:, None]
    j = torch.arange(n_k)[None, :]
    ok = j <= t
    if window is not None:
        ok = ok & (j >= t - window + 1)
    return ok


# =============================================================================== prefill form

def mixer_prefill(p, a, cfg: Config, pre="mixer."):
    """a: (B,T,D) GELU'd activations -> s: (B,T,D). Matrix form + forward substitution."""
    B, T, D = a.shape
    H, d, g = cfg.n_heads, cfg.head_dim, cfg.group
    q, k, v, qb, kb = _projections(p, pre, a, cfg, 0)

    # forward branch, head by head: query head h reads kv head h // g
    allowed = _key_mask(T, 0, T, cfg.window)                           # (T,T)
    heads = []
    for h in range(H):
        kvh = h // g
        sc = torch.matmul(q[:, :, h], k[:, :, kvh].transpose(1, 2)) / math.sqrt(d)   # (B,T,T)
        w = softmax(sc.masked_fill(~allowed, float("-inf")))
        heads.append(torch.matmul(w, v[:, :, kvh]))                     # (B,T,d)
    f = torch.cat(heads, dim=-1)                                        # (B,T,D)
    if H > 1:
        f = dense(f, p[pre + "out_proj.weight"])
    if T == 1:
        return f

    # feedback routing over the strict past. Rows t = 1..T-1 against columns 0..T-2: in that
    # (T-1, T-1) block "s < t" is the lower triangle including the diagonal, so no row is empty.
    lg = torch.matmul(qb[:, 1:], kb[:, :-1].transpose(1, 2)) / math.sqrt(D)          # (B,T-1,T-1)
    lower = torch.ones(T - 1, T - 1, dtype=torch.bool).tril()
    A = softmax(lg.masked_fill(~lower, float("-inf")))                                  # rows sum to 1
    M = feedback_gain(p, pre, a, cfg.gamma_max)[:, 1:, None] * A                       # (B,T-1,T-1)

    # (I - M) s = f, unit lower triangular: s_0 = f_0, s_t = f_t + sum_{s<t} M[t,s] s_s
    rows = [f[:, 0]]
    for t in range(1, T):
        past = torch.stack(rows, dim=1)                                                 # (B,t,D)
        rows.append(f[:, t] + torch.matmul(M[:, t - 1, :t].unsqueeze(1), past).squeeze(1))
    return torch.stack(rows, dim=1)


def layer_prefill(p, x, cfg: Config, pre=""):
    """x: (B,T,D) -> y: (B,T,D)."""
    D = cfg.d_model
    u = layer_norm(x, p[pre + "ln.weight"], p[pre + "ln.bias"], cfg.ln_eps)
    az = dense(u, p[pre + "W_in.weight"], p[pre + "W_in.bias"])
    s = mixer_prefill(p, gelu(az[..., :D]), cfg, pre + "mixer.")
    return x + dense(s * az[..., D:], p[pre + "W_out.weight"], p[pre + "W_out.bias"])


def decoder_head(p, h, cfg: Config):
    h = layer_norm(h, p["norm_f.weight"], p["norm_f.bias"], cfg.ln_eps)
    return dense(h, p["embedding.weight"] if cfg.tie_embeddings else p["lm_head.weight"])


def embed(p, tokens):
    return p["embedding.weight"][tokens]


def decoder_prefill(p, tokens, cfg: Config):
    """tokens: (B,T) int64 -> logits (B,T,V)."""
    h = embed(p, tokens)
    for i in range(cfg.n_layers):
        h = layer_prefill(p, h, cfg, f"layers.{i}.")
    return decoder_head(p, h, cfg)


# =============================================================================== the cache

class LayerCache:
    """Per-sequence state of one layer for B batch rows, grown token by token:
    k, v: (B, Hkv, t, d) forward-branch keys (after RoPE) and values; kb: (B, t, D) feedback keys;
    s: (B, t, D) mixer outputs. Position of the next token = t."""

    def __init__(self, B: int, cfg: Config, dtype=torch.float64):
        Hkv, d, D = cfg.n_kv_heads, cfg.head_dim, cfg.d_model
        self.k = torch.zeros(B, Hkv, 0, d, dtype=dtype)
        self.v = torch.zeros(B, Hkv, 0, d, dtype=dtype)
        self.kb = torch.zeros(B, 0, D, dtype=dtype)
        self.s = torch.zeros(B, 0, D, dtype=dtype)

    @property
    def length(self) -> int:
        return self.s.shape[1]

    def values_per_token(self) -> int:
        return 2 * self.k.shape[1] * self.k.shape[3] + 2 * self.s.shape[2]


def new_cache(cfg: Config, B: int, dtype=torch.float64):
    """A LayerCache for a layer, a list of them for a decoder."""
    if cfg.arch == "decoder":
        return [LayerCache(B, cfg, dtype) for _ in range(cfg.n_layers)]
    return LayerCache(B, cfg, dtype)


# =============================================================================== decode form

def mixer_step(p, a, cache: LayerCache, cfg: Config, pre="mixer."):
    """One token: a (B,D) -> s_t (B,D); appends k, v, k_b, s_t to the cache. Loops over rows and heads."""
    B, D = a.shape
    H, Hkv, d, g = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.group
    t = cache.length
    inv = rope_inv_freq(d) if cfg.use_rope else None
    q = dense(a, p[pre + "q_proj.weight"], p[pre + "q_proj.bias"])         # (B,D)
    k = dense(a, p[pre + "k_proj.weight"], p[pre + "k_proj.bias"])         # (B,Hkv*d)
    v = dense(a, p[pre + "v_proj.weight"], p[pre + "v_proj.bias"])
    fb = dense(a, p[pre + "proj_fb.weight"], p[pre + "proj_fb.bias"])      # (B,2D)
    gam = feedback_gain(p, pre, a, cfg.gamma_max)                          # (B,)
    pos = torch.tensor([t])

    def rot(x):  # one head vector (d,) at position t
        return rope(x[None, :], pos, inv)[0] if inv is not None else x

    new_k = torch.stack([torch.stack([rot(k[b, j * d:(j + 1) * d]) for j in range(Hkv)]) for b in range(B)])
    new_v = v.reshape(B, Hkv, d)
    cache.k = torch.cat([cache.k, new_k[:, :, None]], dim=2)
    cache.v = torch.cat([cache.v, new_v[:, :, None]], dim=2)
    lo = first_key(t, cfg.window)

    out = []
    for b in range(B):
        heads = []
        for h in range(H):
            j = h // g
            qh = rot(q[b, h * d:(h + 1) * d])
            K, V = cache.k[b, j, lo:t + 1], cache.v[b, j, lo:t + 1]         # (n,d)
            w = softmax(torch.mv(K, qh) / math.sqrt(d))
            heads.append(torch.mv(V.transpose(0, 1), w))
        f = torch.cat(heads)
        if H > 1:
            f = torch.mv(p[pre + "out_proj.weight"], f)
        if t == 0:
            s = f
        else:
            alpha = softmax(torch.mv(cache.kb[b], fb[b, :D]) / math.sqrt(D))    # (t,)
            s = f + gam[b] * torch.mv(cache.s[b].transpose(0, 1), alpha)
        out.append(s)
    s_t = torch.stack(out)
    cache.kb = torch.cat([cache.kb, fb[:, None, D:]], dim=1)
    cache.s = torch.cat([cache.s, s_t[:, None]], dim=1)
    return s_t


def layer_step(p, x, cache: LayerCache, cfg: Config, pre=""):
    """x: (B,D) one token -> y (B,D)."""
    D = cfg.d_model
    u = layer_norm(x, p[pre + "ln.weight"], p[pre + "ln.bias"], cfg.ln_eps)
    az = dense(u, p[pre + "W_in.weight"], p[pre + "W_in.bias"])
    s = mixer_step(p, gelu(az[..., :D]), cache, cfg, pre + "mixer.")
    return x + dense(s * az[..., D:], p[pre + "W_out.weight"], p[pre + "W_out.bias"])


def decoder_step(p, tok, caches: List[LayerCache], cfg: Config):
    """tok: (B,) int64 -> logits (B,V)."""
    h = embed(p, tok)
    for i in range(cfg.n_layers):
        h = layer_step(p, h, caches[i], cfg, f"layers.{i}.")
    return decoder_head(p, h, cfg)


def layer_decode(p, x, cfg: Config, pre="", cache=None):
    """x: (B,T,D) fed token by token -> y (B,T,D)."""
    cache = cache if cache is not None else LayerCache(x.shape[0], cfg, x.dtype)
    return torch.stack([layer_step(p, x[:, t], cache, cfg, pre) for t in range(x.shape[1])], dim=1)


def decoder_decode(p, tokens, cfg: Config, caches=None):
    caches = caches if caches is not None else new_cache(cfg, tokens.shape[0], p["embedding.weight"].dtype)
    return torch.stack([decoder_step(p, tokens[:, t], caches, cfg) for t in range(tokens.shape[1])], dim=1)


# =============================================================================== chunked prefill

def mixer_chunk(p, a, cache: LayerCache, cfg: Config, pre="mixer."):
    """A chunk a (B,N,D) at positions P..P+N-1 (P = cache.length) -> s (B,N,D); extends the cache."""
    B, N, D = a.shape
    H, d, g = cfg.n_heads, cfg.head_dim, cfg.group
    P = cache.length
    q, k, v, qb, kb = _projections(p, pre, a, cfg, P)
    cache.k = torch.cat([cache.k, k.transpose(1, 2)], dim=2)          # (B,Hkv,P+N,d)
    cache.v = torch.cat([cache.v, v.transpose(1, 2)], dim=2)
    allowed = _key_mask(N, P, P + N, cfg.window)                      # (N,P+N)
    heads = []
    for h in range(H):
        K, V = cache.k[:, h // g], cache.v[:, h // g]                  # (B,P+N,d)
        sc = torch.matmul(q[:, :, h], K.transpose(1, 2)) / math.sqrt(d)
        heads.append(torch.matmul(softmax(sc.masked_fill(~allowed, float("-inf"))), V))
    f = torch.cat(heads, dim=-1)
    if H > 1:
        f = dense(f, p[pre + "out_proj.weight"])

    cache.kb = torch.cat([cache.kb, kb], dim=1)                        # (B,P+N,D)
    lg = torch.matmul(qb, cache.kb.transpose(1, 2)) / math.sqrt(D)     # (B,N,P+N)
    gam = feedback_gain(p, pre, a, cfg.gamma_max)                      # (B,N)
    s_all = cache.s
    for i in range(N):
        t = P + i
        if t == 0:
            s_i = f[:, i]
        else:
            alpha = softmax(lg[:, i, :t])                              # (B,t)
            ctx = torch.matmul(alpha.unsqueeze(1), s_all).squeeze(1)  # (B,D)
            s_i = f[:, i] + gam[:, i, None] * ctx
        s_all = torch.cat([s_all, s_i[:, None]], dim=1)
    cache.s = s_all
    return s_all[:, P:]


def layer_chunk(p, x, cache: LayerCache, cfg: Config, pre=""):
    D = cfg.d_model
    u = layer_norm(x, p[pre + "ln.weight"], p[pre + "ln.bias"], cfg.ln_eps)
    az = dense(u, p[pre + "W_in.weight"], p[pre + "W_in.bias"])
    s = mixer_chunk(p, gelu(az[..., :D]), cache, cfg, pre + "mixer.")
    return x + dense(s * az[..., D:], p[pre + "W_out.weight"], p[pre + "W_out.bias"])


def decoder_chunk(p, tokens, caches: List[LayerCache], cfg: Config):
    h = embed(p, tokens)
    for i in range(cfg.n_layers):
        h = layer_chunk(p, h, caches[i], cfg, f"layers.{i}.")
    return decoder_head(p, h, cfg)


def layer_chunked(p, x, cfg: Config, chunk: int, pre=""):
    """x (B,T,D) fed in chunks of `chunk` tokens (the last may be shorter) -> y (B,T,D)."""
    cache = LayerCache(x.shape[0], cfg, x.dtype)
    return torch.cat([layer_chunk(p, x[:, t:t + chunk], cache, cfg, pre)
                      for t in range(0, x.shape[1], chunk)], dim=1)


def decoder_chunked(p, tokens, cfg: Config, chunk: int):
    caches = new_cache(cfg, tokens.shape[0], p["embedding.weight"].dtype)
    return torch.cat([decoder_chunk(p, tokens[:, t:t + chunk], caches, cfg)
                      for t in range(0, tokens.shape[1], chunk)], dim=1)


# =============================================================================== conveniences

def run(p, inp, cfg: Config, mode: str = "prefill"):
    """mode: 'prefill' | 'decode' | 'chunked:N'. inp: x (B,T,D) for a layer, tokens (B,T) for a decoder."""
    dec = cfg.arch == "decoder"
    if mode == "prefill":
        return decoder_prefill(p, inp, cfg) if dec else layer_prefill(p, inp, cfg)
    if mode == "decode":
        return decoder_decode(p, inp, cfg) if dec else layer_decode(p, inp, cfg)
    if mode.startswith("chunked:"):
        n = int(mode.split(":", 1)[1])
        return decoder_chunked(p, inp, cfg, n) if dec else layer_chunked(p, inp, cfg, n)
    raise ValueError(f"unknown mode {mode!r}")


# An uppercase character vocabulary: token i <-> ASCII byte 32 + i (' '..'_'). The shipped demo model used it
# until it was retrained on the King James Bible; a model's own vocabulary is its file's `sessa.vocab`.
CHARSET = "".join(chr(c) for c in range(32, 96))


def encode_text(text: str, vocab: Optional[str] = None) -> List[int]:
    """Tokens of text. With vocab (a `sessa.vocab` string), token i is the character vocab[i] and a character
    outside it is a ValueError; without, CHARSET after uppercasing, characters outside ' '..'_' becoming spaces."""
    if vocab is not None:
        return [vocab.index(c) for c in text]
    return [ord(c) - 32 if 32 <= ord(c) < 96 else 0 for c in text.upper()]


def decode_text(tokens, vocab: Optional[str] = None) -> str:
    return "".join((CHARSET if vocab is None else vocab)[int(t)] for t in tokens)


def greedy_generate(p, cfg: Config, prompt: str, n_new: int, vocab: Optional[str] = None) -> str:
    """Greedy continuation with the decode form (batch 1): prompt fed token by token, then argmax. vocab as in
    encode_text."""
    caches = new_cache(cfg, 1, p["embedding.weight"].dtype)
    toks = encode_text(prompt, vocab)
    logits = None
    for tk in toks:
        logits = decoder_step(p, torch.tensor([tk]), caches, cfg)
    out = []
    for _ in range(n_new):
        nxt = int(torch.argmax(logits[0]))
        out.append(nxt)
        logits = decoder_step(p, torch.tensor([nxt]), caches, cfg)
    return decode_text(out, vocab)
