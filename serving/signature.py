"""Signature specs (names, dtypes, shapes from a SavedModel's SignatureDef) and input validation.

The server is generic over signatures: everything it knows about a model's inputs and outputs
comes from the ``SignatureDef`` protos stored in ``saved_model.pb``, exactly what TF Serving reads.
REST and gRPC requests are both turned into ``{input name: numpy array}`` and checked here
against the signature before they reach the model, so a bad request gets a clear
``INVALID_ARGUMENT`` naming the input, the expected dtype/shape and what was received, and never
takes a model call (or a merged batch) down with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from serving.errors import invalid_argument

DEFAULT_SIGNATURE = "serving_default"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One named input or output of a signature.

    Attributes:
      name: the signature's key for the tensor (what clients name in requests and responses).
      dtype: the ``DataType`` enum value (``types_pb2.DT_FLOAT``, ``DT_STRING``, ...).
      shape: ``None`` for unknown rank, else one entry per dimension (``None`` = any size).
    """

    name: str
    dtype: int
    shape: tuple[int | None, ...] | None

    @property
    def dtype_name(self) -> str:
        return types_pb2.DataType.Name(self.dtype)

    @property
    def numpy_dtype(self) -> np.dtype:
        """The numpy dtype the model expects (``object`` holding ``bytes`` for ``DT_STRING``)."""
        if self.dtype == types_pb2.DT_STRING:
            return np.dtype(object)
        try:
            return np.dtype(_NUMPY_DTYPES[self.dtype])
        except KeyError:
            raise invalid_argument(
                f"tensor {self.name!r} has dtype {self.dtype_name}, which this server does not "
                f"support; supported: {supported_dtype_names()}"
            ) from None

    def describe(self) -> str:
        """Returns e.g. ``history: DT_STRING [-1, -1]`` (``?`` rank for unknown rank)."""
        if self.shape is None:
            dims = "<any rank>"
        else:
            dims = "[" + ", ".join("-1" if d is None else str(d) for d in self.shape) + "]"
        return f"{self.name}: {self.dtype_name} {dims}"

    @classmethod
    def from_tensor_info(cls, name: str, info: meta_graph_pb2.TensorInfo) -> TensorSpec:
        if info.tensor_shape.unknown_rank:
            shape = None
        else:
            shape = tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)
        return cls(name=name, dtype=int(info.dtype), shape=shape)


_NUMPY_DTYPES = {
    types_pb2.DT_FLOAT: np.float32,
    types_pb2.DT_DOUBLE: np.float64,
    types_pb2.DT_HALF: np.float16,
    types_pb2.DT_INT8: np.int8,
    types_pb2.DT_INT16: np.int16,
    types_pb2.DT_INT32: np.int32,
    types_pb2.DT_INT64: np.int64,
    types_pb2.DT_UINT8: np.uint8,
    types_pb2.DT_UINT16: np.uint16,
    types_pb2.DT_UINT32: np.uint32,
    types_pb2.DT_UINT64: np.uint64,
    types_pb2.DT_BOOL: np.bool_,
}


def supported_dtype_names() -> list[str]:
    """The ``DataType`` names request tensors may have (numeric types above, and ``DT_STRING``)."""
    return sorted(types_pb2.DataType.Name(d) for d in _NUMPY_DTYPES) + ["DT_STRING"]


@dataclasses.dataclass(frozen=True)
class SignatureSpec:
    """A signature's inputs and outputs, keyed by name (from one ``SignatureDef``)."""

    name: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    method_name: str = ""

    @classmethod
    def from_signature_def(cls, name: str, signature_def: meta_graph_pb2.SignatureDef) -> SignatureSpec:
        inputs = {k: TensorSpec.from_tensor_info(k, v) for k, v in sorted(signature_def.inputs.items())}
        outputs = {k: TensorSpec.from_tensor_info(k, v) for k, v in sorted(signature_def.outputs.items())}
        return cls(name=name, inputs=inputs, outputs=outputs, method_name=signature_def.method_name)

    def describe_inputs(self) -> str:
        return ", ".join(spec.describe() for spec in self.inputs.values())

    def validate(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Checks names, dtypes and shapes of request tensors against this signature.

        Args:
          arrays: one numpy array per input name; numeric arrays must already have the input's
            dtype, ``DT_STRING`` arrays are ``object`` arrays of ``bytes``.

        Returns:
          The same arrays as a new dict.

        Raises:
          ServingError: INVALID_ARGUMENT for a missing or unknown input, a wrong dtype, a wrong
            rank or a wrong fixed dimension; the message names the input and both shapes.
        """
        missing = [name for name in self.inputs if name not in arrays]
        unknown = [name for name in arrays if name not in self.inputs]
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing input(s) {missing}")
            if unknown:
                parts.append(f"unknown input(s) {unknown}")
            raise invalid_argument(
                f"{' and '.join(parts)} for signature {self.name!r}; it expects exactly: "
                f"{self.describe_inputs()}"
            )
        for name, array in arrays.items():
            spec = self.inputs[name]
            if array.dtype != spec.numpy_dtype:
                raise invalid_argument(
                    f"input {name!r} expects {spec.dtype_name}, received {array.dtype} values"
                )
            check_shape(spec, array.shape)
        return dict(arrays)


def check_shape(spec: TensorSpec, shape: tuple[int, ...]) -> None:
    """Raises INVALID_ARGUMENT unless ``shape`` is compatible with ``spec.shape``."""
    if spec.shape is None:
        return
    expected = "[" + ", ".join("-1" if d is None else str(d) for d in spec.shape) + "]"
    if len(shape) != len(spec.shape):
        raise invalid_argument(
            f"input {spec.name!r} expects rank {len(spec.shape)} (shape {expected}), received "
            f"shape {list(shape)} of rank {len(shape)}"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, shape)):
        if want is not None and want != got:
            raise invalid_argument(
                f"input {spec.name!r} expects shape {expected}, received shape {list(shape)} "
                f"(dimension {axis} must be {want})"
            )
