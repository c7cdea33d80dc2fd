"""Vectorizable row max and ``exp`` for the softmax inner loop.

This llvmlite has no SVML, so ``math.exp`` in a loop stays scalar (about 3 ns an element). For
float32 we evaluate ``2**y`` as ``2**round(y) * poly(y - round(y))`` with a degree-6 polynomial on
[-0.5, 0.5] (a few ulp of float32) and build ``2**round(y)`` by adding to the exponent bits, so the
loop compiles to SIMD code. Float64 keeps ``math.exp``: it is the precision dtype and speed matters
less there.

The row max has the same problem: LLVM does not vectorize a float max reduction unless NaN is
ruled out by fast-math, and NaN must propagate here. So float32 rows are compared as integers
(a monotone key on the IEEE bits), a reduction LLVM vectorizes, with NaN counted on the side.
The bit reinterpretations are LLVM ``bitcast``s (free, and they vectorize).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

# no "nnan"/"ninf": -inf (masked) and NaN (propagated) carry meaning in these loops
FASTMATH = {"reassoc", "contract", "arcp"}


@intrinsic
def _f32_bits(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@intrinsic
def _bits_f32(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


def row_max(s, r):  # pragma: no cover - replaced by the overload inside @njit
    """``(max of s[r], whether s[r] holds a NaN)``; -inf for an all -inf row."""
    raise NotImplementedError("row_max runs inside @njit code only")


def exp_shifted_sum(s, r, m):  # pragma: no cover - replaced by the overload inside @njit
    """``s[r] = exp(s[r] - m)`` in place and return the sum; ``m`` is finite, ``s[r] <= m`` or -inf."""
    raise NotImplementedError("exp_shifted_sum runs inside @njit code only")


@njit(cache=True, fastmath=FASTMATH)
def _exp_f32(s, r, m):
    total = np.float32(0.0)
    for c in range(s.shape[1]):
        # clamped so that the exponent arithmetic below can never wrap into the sign bit
        y = max((s[r, c] - m) * np.float32(1.4426950408889634), np.float32(-126.0))
        whole = np.floor(y + np.float32(0.5))
        f = y - whole
        p = np.float32(0.00015403530393381606)
        p = p * f + np.float32(0.0013333558146428443)
        p = p * f + np.float32(0.009618129107628477)
        p = p * f + np.float32(0.05550410866482158)
        p = p * f + np.float32(0.2402265069591007)
        p = p * f + np.float32(0.6931471805599453)
        p = p * f + np.float32(1.0)
        # times 2**whole through the exponent bits; underflow (and -inf) gives exactly 0. A multiply
        # by the 0/1 flag, not a branch: it keeps the loop vectorized
        x = _bits_f32(_f32_bits(p) + (np.int32(whole) << 23)) * np.float32(whole > np.float32(-126.0))
        s[r, c] = x
        total += x
    return total


@njit(cache=True, fastmath=FASTMATH)
def _exp_exact(s, r, m):
    total = 0.0
    for c in range(s.shape[1]):
        p = math.exp(s[r, c] - m)
        s[r, c] = p
        total += p
    return total


@overload(exp_shifted_sum)
def _exp_shifted_sum(s, r, m):
    return (lambda s, r, m: _exp_f32(s, r, m)) if s.dtype == types.float32 else (lambda s, r, m: _exp_exact(s, r, m))


@njit(cache=True)
def _max_f32(s, r):
    key_max = np.int32(-2147483648)
    nans = np.int32(0)
    for c in range(s.shape[1]):
        b = _f32_bits(s[r, c])
        key_max = max(key_max, b ^ ((b >> 31) & np.int32(0x7FFFFFFF)))  # float order as int order
        nans += np.int32((b & np.int32(0x7FFFFFFF)) > np.int32(0x7F800000))
    return _bits_f32(key_max ^ ((key_max >> 31) & np.int32(0x7FFFFFFF))), nans > 0


@njit(cache=True)
def _max_exact(s, r):
    best = -np.inf
    for c in range(s.shape[1]):
        x = s[r, c]
        if x != x:
            return x, True
        best = max(best, x)
    return best, False


@overload(row_max)
def _row_max(s, r):
    return (lambda s, r: _max_f32(s, r)) if s.dtype == types.float32 else (lambda s, r: _max_exact(s, r))
