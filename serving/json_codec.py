"""TF Serving's REST predict JSON: request bodies to numpy arrays and output arrays to JSON text.

Follows https://www.tensorflow.org/tfx/serving/api_rest (and ``tensorflow_serving/util/json_tensor.cc``):

- Row format ``{"instances": [...]}``: one list element per example. With a single input, an
  element may be the bare value; otherwise each element is an object naming every input. All
  instances must have the same shape per input (the batch is stacked along a new first axis).
  The answer is ``{"predictions": [...]}``: bare values for a single output, else one object per
  example.
- Columnar format ``{"inputs": ...}``: the bare value (single input) or an object of named
  tensors; the answer is ``{"outputs": ...}``, bare or named in the same way.
- ``"signature_name"`` picks the signature (default ``serving_default``).
- ``DT_STRING`` values may be ``{"b64": "<base64>"}``. Outputs named ``*_bytes`` are always
  written as ``{"b64": ...}`` (TF Serving's rule); other string outputs are written as UTF-8 text,
  falling back to ``{"b64": ...}`` for values that are not valid UTF-8 (raw bytes are not valid
  JSON, so TF Serving's raw write would produce a broken body).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from tensorflow.core.framework import types_pb2

from serving import large_json
from serving.errors import invalid_argument, too_many_rows
from serving.pools import LARGE_BYTES
from serving.signature import DEFAULT_SIGNATURE, SignatureSpec, TensorSpec

BYTES_SUFFIX = "_bytes"
MAX_RANK = 32  # Deepest list nesting accepted for one input (numpy allows 64 dimensions).
Format = Literal["row", "columnar"]


@dataclasses.dataclass
class PredictBody:
    """A parsed predict body before its values are converted (the signature is needed for that)."""

    signature_name: str
    format: Format
    payload: Any


def parse_predict_body(body: bytes, max_rows: int | None = None) -> PredictBody:
    """Parses a ``:predict`` body's JSON envelope.

    Bodies of ``serving.pools.LARGE_BYTES`` (1 MiB) or more are parsed by :func:`serving.large_json.loads`: element
    by element (never holding the GIL for the whole body) and stopping after ``max_rows`` rows.

    Raises:
      ServingError: INVALID_ARGUMENT for malformed JSON (also nesting deeper than the parser's
        recursion limit and integers over 4,300 digits), a non-object body, neither or both of
        ``instances``/``inputs``, a non-string ``signature_name``, or (large bodies) more than
        ``max_rows`` rows.
    """
    try:
        document = large_json.loads(body, max_rows) if len(body) >= LARGE_BYTES else json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise invalid_argument(f"JSON Parse error: {error}") from None
    except RecursionError:
        raise invalid_argument("JSON Parse error: the document is nested too deeply") from None
    except ValueError as error:  # Integers longer than sys.get_int_max_str_digits() digits.
        raise invalid_argument(f"JSON Parse error: {str(error).split(';')[0]}") from None
    if not isinstance(document, dict):
        raise invalid_argument(
            f"the request body must be a JSON object, received JSON {type(document).__name__}"
        )
    signature_name = document.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(signature_name, str):
        raise invalid_argument(f"'signature_name' must be a string, received {signature_name!r}")
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances == has_inputs:
        raise invalid_argument(
            "the request must have exactly one of 'instances' (row format) or 'inputs' "
            f"(columnar format); received keys {sorted(document)}"
        )
    if has_instances:
        return PredictBody(signature_name or DEFAULT_SIGNATURE, "row", document["instances"])
    return PredictBody(signature_name or DEFAULT_SIGNATURE, "columnar", document["inputs"])


def request_arrays(body: PredictBody, signature: SignatureSpec, max_rows: int | None = None) -> dict[str, np.ndarray]:
    """Converts the body's values into one array per input, with the signature's dtypes.

    ``max_rows`` (the batch queue's capacity) is checked on the parsed lists before any value is
    converted: a request that could never run costs no conversion.

    Returns:
      ``{input name: array}``; ``DT_STRING`` inputs are ``object`` arrays of ``bytes``. Shapes are
      checked separately by :meth:`SignatureSpec.validate`.

    Raises:
      ServingError: INVALID_ARGUMENT naming the input for wrong types, ragged lists, bad base64,
        or instances that do not name the signature's inputs.
    """
    if body.format == "row":
        if max_rows and isinstance(body.payload, list) and len(body.payload) > max_rows:
            raise too_many_rows(len(body.payload), max_rows)
        return _row_arrays(body.payload, signature)
    payload = body.payload
    if _is_named_map(payload):
        named = payload
    elif len(signature.inputs) == 1:
        named = {next(iter(signature.inputs)): payload}
    else:
        raise invalid_argument(
            f"'inputs' must be an object naming each input of signature {signature.name!r} "
            f"({signature.describe_inputs()}), received JSON {type(payload).__name__}"
        )
    lengths = {len(value) if isinstance(value, list) else -1 for value in named.values()}
    if max_rows and len(lengths) == 1 and lengths.pop() > max_rows:
        raise too_many_rows(len(next(iter(named.values()))), max_rows)
    return {name: to_array(value, _spec_or_unknown(signature, name)) for name, value in named.items()}


def _row_arrays(instances: Any, signature: SignatureSpec) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise invalid_argument(f"'instances' must be a list, received JSON {type(instances).__name__}")
    if not instances:
        raise invalid_argument("'instances' is an empty list; send at least one instance")
    if all(_is_named_map(item) for item in instances):
        names = list(instances[0])
        for index, item in enumerate(instances):
            if sorted(item) != sorted(names):
                raise invalid_argument(
                    f"instance {index} has inputs {sorted(item)} but instance 0 has {sorted(names)}; "
                    "every instance must name the same inputs"
                )
        columns = {name: [item[name] for item in instances] for name in names}
    elif len(signature.inputs) == 1:
        columns = {next(iter(signature.inputs)): instances}
    else:
        raise invalid_argument(
            f"each instance must be an object naming every input of signature {signature.name!r} "
            f"({signature.describe_inputs()})"
        )
    arrays = {}
    for name, column in columns.items():
        spec = _spec_or_unknown(signature, name)
        array = to_array(column, spec, context="instances")
        arrays[name] = array
    return arrays


def _is_named_map(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _spec_or_unknown(signature: SignatureSpec, name: str) -> TensorSpec:
    spec = signature.inputs.get(name)
    if spec is None:
        raise invalid_argument(
            f"unknown input {name!r} for signature {signature.name!r}; it expects: "
            f"{signature.describe_inputs()}"
        )
    return spec


def to_array(value: Any, spec: TensorSpec, context: str = "inputs") -> np.ndarray:
    """Converts one JSON value (nested lists of scalars) into an array of ``spec``'s dtype.

    Raises:
      ServingError: INVALID_ARGUMENT for ragged lists, lists nested deeper than ``MAX_RANK``,
        values of the wrong JSON type, strings with lone surrogates (``"\\ud800"``), ``b64``
        objects for non-string inputs, bad base64, or integers out of the dtype's range.
    """
    _check_depth(value, spec.name, context)
    if spec.dtype == types_pb2.DT_STRING:
        flat: list[bytes] = []
        shape = _walk_strings(value, spec.name, flat, depth=0)
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    target = spec.numpy_dtype
    try:
        raw = np.asarray(value)
    except (ValueError, OverflowError) as error:
        raise invalid_argument(
            f"{context}: input {spec.name!r} is not a rectangular array of numbers ({error})"
        ) from None
    kind = raw.dtype.kind
    if kind == "O" or kind == "U" or kind == "S":
        raise invalid_argument(
            f"{context}: input {spec.name!r} expects {spec.dtype_name} numbers, received "
            f"{_describe_bad_values(value)}"
        )
    if raw.size == 0 and raw.dtype == np.float64:
        return raw.astype(target)  # [] parses as float64; an empty tensor of any dtype is fine.
    if target.kind == "b":
        if kind != "b":
            raise invalid_argument(f"{context}: input {spec.name!r} expects DT_BOOL (true/false), received {raw.dtype} values")
        return raw
    if kind == "b":
        raise invalid_argument(f"{context}: input {spec.name!r} expects {spec.dtype_name}, received booleans")
    if target.kind in "iu":
        if kind == "f":
            raise invalid_argument(
                f"{context}: input {spec.name!r} expects integers ({spec.dtype_name}), received "
                "floating-point numbers"
            )
        info = np.iinfo(target)
        if raw.size and (raw.min() < info.min or raw.max() > info.max):
            raise invalid_argument(
                f"{context}: input {spec.name!r} has values outside the range of {spec.dtype_name} "
                f"[{info.min}, {info.max}]"
            )
    return raw.astype(target)


def _check_depth(value: Any, name: str, context: str) -> None:
    depth = 0
    while isinstance(value, list) and value:
        value, depth = value[0], depth + 1
        if depth > MAX_RANK:
            raise invalid_argument(
                f"{context}: input {name!r} is nested more than {MAX_RANK} lists deep; tensors of "
                f"rank above {MAX_RANK} are not accepted"
            )


def _walk_strings(value: Any, name: str, out: list[bytes], depth: int) -> tuple[int, ...]:
    if depth > MAX_RANK:
        raise invalid_argument(f"input {name!r} is nested more than {MAX_RANK} lists deep; tensors of "
                               f"rank above {MAX_RANK} are not accepted")
    if isinstance(value, list):
        shapes = {_walk_strings(item, name, out, depth + 1) for item in value}
        if len(shapes) > 1:
            raise invalid_argument(
                f"input {name!r} is ragged: nested lists at depth {depth + 1} have different "
                f"shapes {sorted(shapes)}; pad every row to the same length"
            )
        return (len(value),) + (shapes.pop() if shapes else ())
    if isinstance(value, str):
        try:
            out.append(value.encode("utf-8"))
        except UnicodeEncodeError as error:
            raise invalid_argument(
                f"input {name!r}: a string holds a lone surrogate ({ascii(value[error.start:error.end])}) at "
                f"character {error.start}, which is not valid Unicode; send UTF-8 text or {{\"b64\": ...}}"
            ) from None
        return ()
    if _is_b64(value):
        encoded = value["b64"]
        if not isinstance(encoded, str):
            raise invalid_argument(f"input {name!r}: the 'b64' value must be a string, received {encoded!r}")
        try:
            out.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError) as error:
            raise invalid_argument(f"input {name!r}: invalid base64 in {{'b64': ...}}: {error}") from None
        return ()
    raise invalid_argument(
        f"input {name!r} expects DT_STRING values (JSON strings or {{\"b64\": ...}} objects), "
        f"received {_describe_bad_values(value)}"
    )


def _describe_bad_values(value: Any) -> str:
    while isinstance(value, list) and value:
        non_list = [v for v in value if not isinstance(v, list)]
        value = non_list[0] if non_list else value[0]
    if isinstance(value, dict):
        return f"a JSON object {json.dumps(value)[:80]} (b64 objects are only for DT_STRING inputs)"
    return f"JSON {type(value).__name__} {json.dumps(value)[:80]}"


def render_response(outputs: Mapping[str, np.ndarray], format: Format) -> str:
    """Writes outputs as TF Serving does: ``{"predictions": ...}`` or ``{"outputs": ...}``.

    float32 values are written with 9 significant digits (always reads back to the same float32,
    the precision TF Serving falls back to), whole numbers keep a trailing ``.0``, and NaN /
    Infinity are written as TF Serving writes them.

    Raises:
      ServingError: INVALID_ARGUMENT if the row format is asked for but outputs disagree on the
        batch size (first dimension) or one is a scalar (TF Serving's rule).
    """
    names = sorted(outputs)
    texts = {name: _JsonArray(outputs[name], name.endswith(BYTES_SUFFIX)) for name in names}
    if format == "columnar":
        if len(names) == 1:
            return '{"outputs": ' + texts[names[0]].render(()) + "}"
        return '{"outputs": {' + ", ".join(f"{json.dumps(n)}: {texts[n].render(())}" for n in names) + "}}"
    batch = None
    for name in names:
        shape = outputs[name].shape
        if not shape:
            raise invalid_argument(f"output {name!r} is a scalar; use the columnar 'inputs' format")
        if batch is not None and shape[0] != batch:
            raise invalid_argument(
                f"output {name!r} has batch size {shape[0]} but others have {batch}; use the "
                "columnar 'inputs' format for this signature"
            )
        batch = shape[0]
    if len(names) == 1:
        rows = [texts[names[0]].render((row,)) for row in range(batch)]
    else:
        keys = {name: json.dumps(name) + ": " for name in names}
        rows = ["{" + ", ".join(keys[n] + texts[n].render((row,)) for n in names) + "}" for row in range(batch)]
    return '{"predictions": [' + ", ".join(rows) + "]}"


class _JsonArray:
    """One output array as JSON text: innermost rows in one C-encoder call (or one join of
    pre-formatted floats), outer dimensions by joins."""

    def __init__(self, array: np.ndarray, as_bytes: bool):
        self.shape = array.shape
        self.strides = [int(np.prod(self.shape[i + 1 :], dtype=np.int64)) for i in range(len(self.shape))]
        flat = array.reshape(-1)
        self.preformatted = flat.dtype.kind == "f"
        if self.preformatted:
            self.flat = _float_texts(flat)
        elif flat.dtype == object or flat.dtype.kind in "SU":
            self.flat = _string_values(flat.tolist(), as_bytes)
        else:
            self.flat = flat.tolist()

    def render(self, index: tuple[int, ...]) -> str:
        return self._render(len(index), sum(i * s for i, s in zip(index, self.strides)))

    def _render(self, axis: int, offset: int) -> str:
        if axis == len(self.shape):
            return self.flat[offset] if self.preformatted else json.dumps(self.flat[offset], ensure_ascii=False)
        size, stride = self.shape[axis], self.strides[axis]
        if axis == len(self.shape) - 1:
            values = self.flat[offset : offset + size]
            return "[" + ", ".join(values) + "]" if self.preformatted else json.dumps(values, ensure_ascii=False)
        return "[" + ", ".join(self._render(axis + 1, offset + i * stride) for i in range(size)) + "]"


def _float_texts(flat: np.ndarray) -> list[str]:
    if flat.dtype.itemsize <= 4:
        texts = ["%.9g" % v for v in flat.tolist()]
    else:
        texts = [repr(v) for v in flat.tolist()]  # Shortest text that reads back to the double.
    if not np.isfinite(flat).all():
        texts = [_FLOAT_SPECIALS.get(t, t) for t in texts]
    return [t if ("." in t or "e" in t or "N" in t or "I" in t) else t + ".0" for t in texts]


_FLOAT_SPECIALS = {"nan": "NaN", "-nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _string_values(flat: list, as_bytes: bool) -> list:
    """str for UTF-8 values, ``{"b64": ...}`` for ``*_bytes`` outputs and non-UTF-8 values."""
    if as_bytes:
        return [_b64(v) for v in flat]
    try:
        return [v.decode("utf-8") if isinstance(v, bytes) else v for v in flat]
    except UnicodeDecodeError:
        return [_utf8_or_b64(v) for v in flat]


def _b64(value: Any) -> dict[str, str]:
    if isinstance(value, str):
        value = value.encode("utf-8")
    return {"b64": base64.b64encode(value).decode("ascii")}


def _utf8_or_b64(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return _b64(value)
    return value
