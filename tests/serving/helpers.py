"""Small HTTP helpers for the server tests (standard library only, real sockets)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request


def post_json(url: str, body, timeout: float = 30.0) -> tuple[int, dict, dict]:
    """POSTs ``body`` (bytes, or JSON-encoded) and returns (status, parsed JSON, headers)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def get_json(url: str, timeout: float = 30.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def move_into_place(source_version_dir: str, base_path: str, version: int) -> str:
    """Atomically renames a complete version dir into ``base_path/<version>`` (a 'drop-in')."""
    target = os.path.join(base_path, str(version))
    os.rename(source_version_dir, target)
    return target

