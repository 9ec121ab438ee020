"""Status and metadata responses as TF Serving's protos, shared by the gRPC and REST APIs.

The REST API returns the same protos printed as JSON the way tensorflow_model_server prints them
(``http_rest_api_util.cc``: primitive fields always printed; metadata with proto field names), so
REST and gRPC answers carry identical content.
"""

from __future__ import annotations

import json

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from serving.errors import invalid_argument
from serving.manager import ModelManager
from serving.servable import Servable

SIGNATURE_DEF_FIELD = "signature_def"


def model_status(manager: ModelManager, name: str, version: int | None = None,
                 label: str | None = None) -> get_model_status_pb2.GetModelStatusResponse:
    """Builds a ``GetModelStatusResponse`` (every known version, or the one asked for).

    Raises:
      ServingError: NOT_FOUND for an unknown model, label or version.
    """
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in manager.statuses(name, version, label):
        entry = response.model_version_status.add(version=status.version, state=status.state)
        entry.status.error_code = status.error_code.value[0]
        entry.status.error_message = status.error_message
    return response


def model_metadata(servable: Servable, fields: list[str] | None = None) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """Builds a ``GetModelMetadataResponse`` holding the servable's ``SignatureDefMap``.

    Raises:
      ServingError: INVALID_ARGUMENT when no field or a field other than ``signature_def`` is asked.
    """
    fields = [SIGNATURE_DEF_FIELD] if fields is None else list(fields)
    if not fields:
        raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    for field in fields:
        if field != SIGNATURE_DEF_FIELD:
            raise invalid_argument(f"Metadata field {field} is not supported; supported: [{SIGNATURE_DEF_FIELD!r}]")
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.CopyFrom(model_spec(servable))
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature_def in servable.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature_def)
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
    return response


def model_spec(servable: Servable, signature_name: str = "") -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=servable.name, signature_name=signature_name)
    spec.version.value = servable.version
    return spec


def status_json(response: get_model_status_pb2.GetModelStatusResponse) -> str:
    """Prints a status response as TF Serving's REST API does."""
    return json_format.MessageToJson(response, always_print_fields_with_no_presence=True, indent=1)


def metadata_json(response: get_model_metadata_pb2.GetModelMetadataResponse) -> str:
    """Prints a metadata response as TF Serving's REST API does (``signature_def`` unpacked)."""
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_map)
    options = dict(always_print_fields_with_no_presence=True, preserving_proto_field_name=True)
    document = {
        "model_spec": json_format.MessageToDict(response.model_spec, **options),
        "metadata": {SIGNATURE_DEF_FIELD: json_format.MessageToDict(signature_map, **options)},
    }
    return json.dumps(document, indent=1)
