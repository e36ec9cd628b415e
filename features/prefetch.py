"""A software prefetch for Numba kernels: ask the CPU to start loading memory needed soon.

The stream touches a random entity's state per event; each of its first reads of a row is a
cache miss. A kernel that knows which rows the next events touch can start their loads early
(LLVM's ``llvm.prefetch``: ``prefetcht0`` on x86, a hint that never faults), so the misses
overlap instead of stalling one after another.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def prefetch(typingctx, array, row, column):
    """Prefetch the cache line holding ``array[row, column]`` (a 2-D array; no bounds check:
    any address is allowed, a prefetch of unmapped memory does nothing)."""
    if not isinstance(array, types.Array) or array.ndim != 2:
        return None

    def codegen(context, builder, signature, args):
        array_type, row_type, column_type = signature.args
        data = context.make_array(array_type)(context, builder, args[0])
        index = [
            context.cast(builder, args[1], row_type, types.intp),
            context.cast(builder, args[2], column_type, types.intp),
        ]
        address = cgutils.get_item_pointer(
            context, builder, array_type, data, index, wraparound=False
        )
        byte_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        llvm_prefetch = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]),
            "llvm.prefetch.p0i8",
        )
        read, keep_in_every_cache, data = i32(0), i32(3), i32(1)
        builder.call(
            llvm_prefetch, [builder.bitcast(address, byte_pointer), read, keep_in_every_cache, data]
        )
        return context.get_dummy_value()

    return types.void(array, row, column), codegen
