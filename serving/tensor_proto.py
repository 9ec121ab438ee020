"""gRPC request tensors (``TensorProto``) to numpy, with every size checked before allocating.

A ``TensorProto`` declares its shape separately from the values it carries, and TensorFlow's
``tf.make_ndarray`` repeats the last value to fill the declared shape: a 31-byte request declaring
``[2**27]`` strings with one ``string_val`` expands to a 2**27-element array (seconds of CPU and
gigabytes of memory). This server refuses that before allocating anything:

- every dimension must be >= 0 and the rank known;
- the values carried (``tensor_content`` bytes / item size, or the length of the dtype's
  repeated ``*_val`` field) must equal the declared element count (the product of the
  dimensions, computed with Python integers, so ``2**40`` cannot overflow). TF Serving's compact
  form (fewer values, the last one repeated) is refused: send every value;
- the element count must not exceed ``max_elements`` (``--max_tensor_elements``).

Only then is ``tf.make_ndarray`` called, which then never repeats a value. Callers run this off
the event loop (it is linear in the request size).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.errors import invalid_argument
from serving.signature import supported_dtype_names

DEFAULT_MAX_TENSOR_ELEMENTS = 1 << 24

# dtype -> the repeated field holding its values (tensor_content is used instead when present).
_VALUE_FIELDS = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_HALF: "half_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
}


def declared_shape(name: str, proto: tensor_pb2.TensorProto) -> tuple[int, ...]:
    """The shape ``proto`` declares.

    Raises:
      ServingError: INVALID_ARGUMENT for an unknown rank or a negative dimension.
    """
    if proto.tensor_shape.unknown_rank:
        raise invalid_argument(f"input {name!r}: the tensor shape has unknown rank; give every dimension")
    shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
    if any(d < 0 for d in shape):
        raise invalid_argument(f"input {name!r}: dimensions must be >= 0, received shape {list(shape)}")
    return shape


def carried_elements(proto: tensor_pb2.TensorProto) -> int:
    """How many elements the proto's values hold (``tensor_content`` or the dtype's ``*_val``)."""
    if proto.tensor_content:
        itemsize = np.dtype(tf.dtypes.as_dtype(proto.dtype).as_numpy_dtype).itemsize
        return len(proto.tensor_content) // itemsize if len(proto.tensor_content) % itemsize == 0 else -1
    return len(getattr(proto, _VALUE_FIELDS[proto.dtype]))


def checked_shape(name: str, proto: tensor_pb2.TensorProto, max_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS) -> tuple[int, ...]:
    """The shape ``proto`` declares, after checking its dtype, dimensions and value count (reads
    no values: constant time per tensor).

    Raises:
      ServingError: INVALID_ARGUMENT naming the input for an unsupported dtype, a bad shape, more
        elements than ``max_elements``, or a value count that differs from the declared shape.
    """
    if proto.dtype not in _VALUE_FIELDS:
        received = types_pb2.DataType.Name(proto.dtype) if proto.dtype in types_pb2.DataType.values() else proto.dtype
        raise invalid_argument(
            f"input {name!r} has dtype {received}, which this server does not support; supported: "
            f"{supported_dtype_names()}"
        )
    shape = declared_shape(name, proto)
    declared = math.prod(shape)
    carried = carried_elements(proto)
    if carried != declared:
        what = ("tensor_content whose size is not a multiple of the item size" if carried < 0
                else f"{carried} value(s)")
        raise invalid_argument(
            f"input {name!r} declares shape {list(shape)} = {declared} elements but carries {what}; send "
            "exactly one value per element (compact tensors that repeat the last value are not accepted)"
        )
    if declared > max_elements:
        raise invalid_argument(
            f"input {name!r} declares shape {list(shape)} = {declared} elements, more than this server's "
            f"limit of {max_elements} per tensor (--max_tensor_elements)"
        )
    return shape


def to_ndarray(name: str, proto: tensor_pb2.TensorProto, max_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS) -> np.ndarray:
    """Converts one request tensor after checking its dtype, shape and value count.

    Args:
      name: the input's name (for messages).
      proto: the request's ``TensorProto``.
      max_elements: the largest element count accepted for one tensor.

    Returns:
      The array, of the declared shape; ``DT_STRING`` gives an ``object`` array of ``bytes``.

    Raises:
      ServingError: INVALID_ARGUMENT naming the input (see :func:`checked_shape`).
    """
    checked_shape(name, proto, max_elements)
    try:
        return tf.make_ndarray(proto)
    except Exception as error:  # noqa: BLE001 - malformed TensorProtos raise various types.
        raise invalid_argument(f"input {name!r} is not a valid TensorProto: {type(error).__name__}: {error}") from None
