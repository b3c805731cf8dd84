"""The one pair of functions that turns a Tensor message into a numpy array and back."""

from __future__ import annotations

from typing import Any

import numpy as np

from .pb.embedlens.v1 import embedlens_pb2 as pb

_TO_NUMPY: dict[Any, np.dtype] = {
    pb.DTYPE_FLOAT32: np.dtype("<f4"),
    pb.DTYPE_FLOAT16: np.dtype("<f2"),
    pb.DTYPE_FLOAT64: np.dtype("<f8"),
    pb.DTYPE_INT64: np.dtype("<i8"),
    pb.DTYPE_INT32: np.dtype("<i4"),
}
_FROM_NUMPY = {dt.newbyteorder("="): code for code, dt in _TO_NUMPY.items()}
MAX_DIMS = 8


def to_numpy(t: pb.Tensor) -> np.ndarray:
    """A read-only array over the message's bytes; ValueError says what is malformed."""
    dtype = _TO_NUMPY.get(t.dtype)
    if dtype is None:
        allowed = ", ".join(pb.Dtype.Name(c) for c in _TO_NUMPY)
        raise ValueError(f"tensor dtype must be one of {allowed}, got {t.dtype}")
    shape = tuple(int(s) for s in t.shape)
    if len(shape) > MAX_DIMS or any(s < 0 for s in shape):
        raise ValueError(
            f"tensor shape must have at most {MAX_DIMS} non-negative sizes, got {shape}"
        )
    count = 1
    for s in shape:
        count *= s
    if count * dtype.itemsize != len(t.data):
        raise ValueError(
            f"tensor of shape {shape} and dtype {pb.Dtype.Name(t.dtype)} needs "
            f"{count * dtype.itemsize} bytes, got {len(t.data)}"
        )
    return np.frombuffer(t.data, dtype=dtype).reshape(shape)


def from_numpy(a: np.ndarray, dtype: Any = None, out: pb.Tensor | None = None) -> pb.Tensor:
    """A Tensor message holding `a` (optionally cast), little-endian, C order.

    With `out` (an empty Tensor field of a message being built), fills it in place and returns
    it, so that no message is built only to be copied in."""
    arr = np.asarray(a, dtype=dtype)
    code = _FROM_NUMPY.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"cannot send arrays of dtype {arr.dtype}")
    data = np.ascontiguousarray(arr, dtype=_TO_NUMPY[code]).tobytes()
    if out is None:
        return pb.Tensor(shape=list(arr.shape), dtype=code, data=data)
    out.shape.extend(arr.shape)
    out.dtype = code
    out.data = data
    return out
