"""Borrowed arrays for Numba kernels: views without reference counting.

Every view a Numba kernel takes of an array (a row, a slice, ``as_strided``, ``.view``) adds
one to the array's reference count and takes it away again when the view goes; both are atomic
instructions. A kernel that takes a dozen views of a state row per event spends a large part of
its time on them. A *borrowed* array is the same array without an owner: its views count
nothing. The caller must keep the original alive while the borrowed one is in use, which any
kernel that only borrows from its own arguments and returns none of the views does.
"""

from __future__ import annotations

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def borrowed(typingctx, array):
    """``array`` without its owner (meminfo and parent set to null): same data, shape, strides
    and type; views of it update no reference count. Do not return it or store it anywhere
    that outlives the call that borrowed it."""
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        source = context.make_array(array_type)(context, builder, args[0])
        result = context.make_array(signature.return_type)(context, builder)
        for field in ("nitems", "itemsize", "data", "shape", "strides"):
            setattr(result, field, getattr(source, field))
        result.meminfo = cgutils.get_null_value(result.meminfo.type)
        result.parent = cgutils.get_null_value(result.parent.type)
        return result._getvalue()

    return array(array), codegen
