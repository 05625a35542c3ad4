"""The compiled loop behind `worker.pooling` (numba): imported only where numba is installed and wanted.

It adds rows in token order into a float32 accumulator, with one float32 multiply by the token's weight where
the model has weights: the same operations, in the same order, as scipy's CSR product over float32 rows, hence
the same bits. Without fastmath, LLVM neither contracts the multiply and add into an FMA nor reorders the sums.
"""

# mypy: ignore-errors
# (numba compiles these functions from their Python source; an intrinsic's call signature is not Python's)
from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload


@intrinsic
def half_to_float(typingctx, bits):
    """float16 (given as its uint16 bits: numba has no float16 type) -> float32, exactly. LLVM's `fpext` from
    `half`, which the loop vectorizer turns into F16C's vcvtph2ps (8 values per instruction)."""
    sig = types.float32(types.uint16)

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return sig, codegen


def as_float32(value):
    """A table element as float32 (a pure-Python stand-in; numba compiles the overload below)."""
    return np.float32(value)


@overload(as_float32, inline="always")
def _as_float32(value):
    if value == types.uint16:  # the bits of a float16 table (the only uint16 table `worker.pooling` passes)
        return lambda value: half_to_float(value)
    return lambda value: np.float32(value)


@nb.njit(nogil=True, cache=True, boundscheck=False)
def sum_rows(table, rows, weights, counts, weighted, out):
    """`out[i]` = sum of (weights[k] x) rows `table[rows[k]]` as float32 over text i's tokens: float16 tables as
    uint16 bits, float32, int8 and float64 tables, column slices too."""
    dim = table.shape[1]
    acc = np.empty(dim, np.float32)
    pos = 0
    for i in range(counts.shape[0]):
        acc[:] = 0.0
        end = pos + counts[i]
        if weighted:
            for k in range(pos, end):
                r = rows[k]
                w = weights[k]
                for d in range(dim):
                    acc[d] += w * as_float32(table[r, d])
        else:
            for k in range(pos, end):
                r = rows[k]
                for d in range(dim):
                    acc[d] += as_float32(table[r, d])
        pos = end
        out[i, :] = acc
    return out
