"""Minimal safetensors writer and reader (no dependency on the `safetensors` package).

File layout (the safetensors format):
  8 bytes   little-endian u64 N = length of the JSON header
  N bytes   JSON object {name: {"dtype": "F32"|"BF16"|..., "shape": [...], "data_offsets": [begin, end]},
                         optional "__metadata__": {str: str}}, padded with spaces to a multiple of 8
  rest      the raw little-endian tensor bytes; offsets are relative to the start of this buffer.
The buffer is indexed without holes (each tensor starts where the previous one ends), as the format
requires.
"""

import json
import struct
from collections import OrderedDict

import numpy as np
import torch

_DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_NAME_DTYPES = {v: k for k, v in _DTYPE_NAMES.items()}


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        # numpy has no bfloat16: reinterpret the 16-bit patterns.
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    arr = t.numpy()
    return arr.astype(arr.dtype.newbyteorder("<")).tobytes()


def save_file(tensors, path, metadata=None):
    """Writes an ordered mapping name -> torch.Tensor. metadata: dict str -> str (or None)."""
    header = OrderedDict()
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"metadata must map str -> str, got {k!r}: {type(v).__name__}")
        header["__metadata__"] = dict(metadata)
    blobs = []
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in _DTYPE_NAMES:
            raise TypeError(f"{name}: unsupported dtype {t.dtype}")
        b = _tensor_bytes(t)
        header[name] = {
            "dtype": _DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(b)],
        }
        blobs.append(b)
        offset += len(b)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((8 - len(hjson) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)


def load_file(path):
    """Returns (OrderedDict name -> torch.Tensor, metadata dict)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n].decode("utf-8"), object_pairs_hook=OrderedDict)
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    out = OrderedDict()
    for name, info in header.items():
        b, e = info["data_offsets"]
        raw = data[base + b : base + e]
        dt = _NAME_DTYPES[info["dtype"]]
        if dt == torch.bfloat16:
            t = torch.from_numpy(np.frombuffer(raw, dtype="<i2").copy()).view(torch.bfloat16)
        else:
            np_dt = torch.empty(0, dtype=dt).numpy().dtype.newbyteorder("<")
            t = torch.from_numpy(np.frombuffer(raw, dtype=np_dt).astype(np_dt.newbyteorder("=")).copy())
        out[name] = t.reshape(info["shape"])
    return out, meta
