"""Which models to serve: tensorflow_model_server's ``ModelServerConfig`` and version policies.

The config file is the text-format ``ModelServerConfig`` proto TF Serving reads with
``--model_config_file``, parsed with tensorflow-serving-api's own protos, so the same file works
with both servers::

    model_config_list {
      config {
        name: "retrieval"
        base_path: "/models/retrieval"
        model_platform: "tensorflow"
        model_version_policy { latest { num_versions: 2 } }
        version_labels { key: "stable" value: 3 }
      }
    }

Version policies (``FileSystemStoragePathSourceConfig.ServableVersionPolicy``): ``latest`` (the N
highest versions, default N=1; also the policy when none is given), ``all``, ``specific``.
"""

from __future__ import annotations

import os

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

ModelConfig = model_server_config_pb2.ModelConfig


class ModelConfigError(ValueError):
    """A model config that cannot be served (the message names the model and the field)."""


def single_model_config(name: str, base_path: str) -> ModelConfig:
    """The config ``--model_name``/``--model_base_path`` describe (latest version, no labels)."""
    config = ModelConfig(name=name, base_path=base_path, model_platform="tensorflow")
    validate([config])
    return config


def parse_model_config_text(text: str, source: str = "<string>") -> list[ModelConfig]:
    """Parses a text-format ``ModelServerConfig`` into validated model configs.

    Raises:
      ModelConfigError: a syntax error (with line and column), a ``custom_model_config``, or an
        invalid model entry (see :func:`validate`).
    """
    server_config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, server_config)
    except text_format.ParseError as error:
        raise ModelConfigError(f"{source}: not a text-format ModelServerConfig: {error}") from None
    return server_config_models(server_config, source)


def server_config_models(server_config: model_server_config_pb2.ModelServerConfig,
                         source: str = "config") -> list[ModelConfig]:
    """The validated model configs of a ``ModelServerConfig`` (from a file or a reload request).

    Raises:
      ModelConfigError: a ``custom_model_config``, no ``model_config_list`` entries (an empty
        list would unload every model), or an invalid entry (see :func:`validate`).
    """
    if server_config.WhichOneof("config") == "custom_model_config":
        raise ModelConfigError(f"{source}: custom_model_config is not supported; use model_config_list")
    configs = list(server_config.model_config_list.config)
    if not configs:
        raise ModelConfigError(f"{source}: model_config_list has no config entries (that would unload "
                               "every model); list the models to serve")
    validate(configs, source)
    return configs


def load_model_config_file(path: str) -> list[ModelConfig]:
    """Reads and parses ``--model_config_file`` (see :func:`parse_model_config_text`)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as error:
        raise ModelConfigError(f"cannot read model config file {path!r}: {error}") from None
    return parse_model_config_text(text, source=path)


def validate(configs: list[ModelConfig], source: str = "config") -> None:
    """Checks names, base paths, platforms, policies and labels.

    Raises:
      ModelConfigError: an empty or duplicate name, a missing base path, a platform other than
        ``tensorflow``, an empty ``specific`` policy, or a label on a non-positive version.
    """
    seen = set()
    for index, config in enumerate(configs):
        where = f"{source}: model {index} ({config.name!r})"
        if not config.name or "/" in config.name or ":" in config.name:
            raise ModelConfigError(f"{where}: name must be non-empty without '/' or ':'")
        if config.name in seen:
            raise ModelConfigError(f"{where}: duplicate model name {config.name!r}")
        seen.add(config.name)
        if not config.base_path:
            raise ModelConfigError(f"{where}: base_path is required")
        if config.model_platform not in ("", "tensorflow"):
            raise ModelConfigError(
                f"{where}: model_platform {config.model_platform!r} is not supported; use 'tensorflow'"
            )
        policy = config.model_version_policy
        if policy.WhichOneof("policy_choice") == "latest" and policy.latest.num_versions < 0:
            raise ModelConfigError(f"{where}: latest.num_versions must be >= 1")
        if policy.WhichOneof("policy_choice") == "specific" and not policy.specific.versions:
            raise ModelConfigError(f"{where}: a specific version policy needs at least one version")
        for label, version in config.version_labels.items():
            if version <= 0:
                raise ModelConfigError(f"{where}: label {label!r} must name a version >= 1, got {version}")


def resolve_base_path(base_path: str) -> str:
    """Returns ``base_path`` as an absolute path (relative paths are taken from the cwd)."""
    return os.path.abspath(os.path.expanduser(base_path))


def aspired_versions(config: ModelConfig, available: list[int]) -> list[int]:
    """Applies the config's version policy to the complete versions found on disk.

    Args:
      config: the model's config.
      available: complete version numbers found under the base path.

    Returns:
      The versions that should be loaded, ascending.
    """
    policy = config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    ordered = sorted(set(available))
    if choice == "all":
        return ordered
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in ordered if v in wanted]
    num_versions = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions else 1
    return ordered[-num_versions:]


def describe_policy(config: ModelConfig) -> str:
    """A short text for logs: ``latest(1)``, ``all``, ``specific([1, 3])``."""
    policy = config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return "all"
    if choice == "specific":
        return f"specific({sorted(policy.specific.versions)})"
    return f"latest({policy.latest.num_versions or 1})"
