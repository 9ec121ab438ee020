"""The model manager: discovers versions under each base path, loads, swaps and unloads them.

Like TF Serving's ``ServerCore`` with a file-system storage path source:

- every ``--file_system_poll_wait_seconds`` the manager lists ``BASE_PATH/<n>/`` (integer names
  only, so the hidden ``.tmp-export-*`` directories of :mod:`serving.export` are ignored, and a
  directory without ``saved_model.pb``, or with a file changed less than ``settle_seconds``
  ago, is treated as still being written, so even a non-atomic copy is never loaded half-done);
- the version policy (latest N, all, specific) picks the aspired versions; new ones are loaded
  first and only then are versions that left the policy unloaded (availability-preserving, as TF
  Serving's default policy), so a swap never leaves a gap;
- a version that fails to load is retried on later polls, up to ``max_load_attempts``; while it
  is retried the versions it would replace keep serving;
- a request resolves a servable (latest loaded, a specific version, or a label) and holds the
  Python object, so unloading a version never fails a request that already resolved it.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable

import grpc
from tensorflow_serving.apis import get_model_status_pb2

from serving.errors import ServingError, not_found
from serving.model_config import ModelConfig, aspired_versions, describe_policy, resolve_base_path
from serving.servable import Servable, ServableLoadError, is_complete_version_dir, load_servable

logger = logging.getLogger(__name__)

State = get_model_status_pb2.ModelVersionStatus.State
Loader = Callable[[str, int, str], Servable]


@dataclasses.dataclass
class VersionStatus:
    """What the manager knows about one version (a snapshot; see :meth:`ModelManager.statuses`)."""

    version: int
    state: int = State.START
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""
    load_attempts: int = 0
    servable: Servable | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass
class _Model:
    config: ModelConfig
    base_path: str
    versions: dict[int, VersionStatus] = dataclasses.field(default_factory=dict)
    warned_empty: bool = False
    settling: bool = False  # A version dir was skipped because files in it are still changing.


def _newest_change(path: str) -> float:
    """The latest modification or inode change time under ``path`` (ctime cannot be faked by
    ``cp -a``/``rsync -t``, which preserve mtimes)."""
    newest = 0.0
    for root, dirs, files in os.walk(path):
        for name in [root] + [os.path.join(root, n) for n in dirs + files]:
            try:
                stat = os.stat(name)
            except OSError:  # Removed while walking: still changing.
                return time.time()
            newest = max(newest, stat.st_mtime, stat.st_ctime)
    return newest


class ModelManager:
    """Keeps each configured model's aspired versions loaded; thread-safe.

    Args:
      configs: the models to serve (see :mod:`serving.model_config`).
      poll_wait_seconds: seconds between polls of the base paths; ``<= 0`` polls once at start
        (TF Serving's meaning of 0).
      max_load_attempts: load attempts per version before it is given up on.
      settle_seconds: a version directory is loaded only once its newest file is this old
        (guards against directories copied in place non-atomically; 0 disables the check).
      loader: ``(name, version, path) -> Servable``; the default loads the SavedModel (with
        ScaNN ops when needed) and runs its warm-up requests.
    """

    def __init__(self, configs: Iterable[ModelConfig], poll_wait_seconds: float = 1.0,
                 max_load_attempts: int = 3, loader: Loader | None = None, settle_seconds: float = 1.0):
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()  # One poll / reconfigure at a time.
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_wait_seconds = poll_wait_seconds
        self._max_load_attempts = max_load_attempts
        self._settle_seconds = settle_seconds
        self._loader = loader or load_servable
        self._models: dict[str, _Model] = {}
        for config in configs:
            self._models[config.name] = _Model(config, resolve_base_path(config.base_path))

    # Lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Runs the first poll (loads the initial versions), then keeps polling in a thread."""
        for model in self._models.values():
            logger.info("serving model %r from %s, version policy %s", model.config.name,
                        model.base_path, describe_policy(model.config))
        self.poll_once()
        deadline = time.monotonic() + 3 * self._settle_seconds + 1
        while any(m.settling for m in self._models.values()) and time.monotonic() < deadline:
            time.sleep(max(self._settle_seconds / 4, 0.05))  # Initial versions still being written.
            self.poll_once()
        if self._poll_wait_seconds > 0:
            self._thread = threading.Thread(target=self._poll_loop, name="model-poller", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stops polling and drops every servable (requests holding one still finish)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            for model in self._models.values():
                for status in model.versions.values():
                    if status.servable is not None:
                        status.servable, status.state = None, State.END

    def _poll_loop(self) -> None:
        while not self._stop.wait(self._poll_wait_seconds):
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - the poller must survive anything and retry.
                logger.exception("polling the model base paths failed; retrying next poll")

    # Version management ---------------------------------------------------------------------

    def poll_once(self) -> None:
        """Lists every base path once and loads/unloads versions to match the policies."""
        with self._sync_lock:
            with self._lock:
                models = list(self._models.values())
            for model in models:
                self._sync_model(model)

    def reconfigure(self, configs: Iterable[ModelConfig]) -> None:
        """Replaces the served model set (new models load, removed ones unload), then polls.

        A model whose base path changed keeps serving from its old path until the new path's
        versions are loaded, then switches over at once (as a version swap does: no gap of 404s).
        One whose policy or labels changed keeps its loaded versions and adapts on this poll.
        """
        configs = list(configs)
        with self._sync_lock:
            with self._lock:
                new = {c.name: c for c in configs}
                moved = {name: _Model(config, resolve_base_path(config.base_path)) for name, config in new.items()
                         if name in self._models and resolve_base_path(config.base_path) != self._models[name].base_path}
                for name in list(self._models):
                    if name not in new:
                        logger.info("model %r removed from the config; unloading it", name)
                        self._drop(self._models.pop(name))
                for name, config in new.items():
                    if name in moved:
                        continue
                    if name in self._models:
                        self._models[name].config = config
                    else:
                        logger.info("model %r added from %s, version policy %s", name,
                                    config.base_path, describe_policy(config))
                        self._models[name] = _Model(config, resolve_base_path(config.base_path))
                models = [m for name, m in self._models.items() if name not in moved]
            for name, model in moved.items():
                logger.info("model %r moves to %s; loading it there before unloading %s", name, model.base_path,
                            self._models[name].base_path)
                self._sync_model(model)  # Loads outside the lock; the old path keeps serving meanwhile.
                with self._lock:
                    self._drop(self._models[name])
                    self._models[name] = model
            for model in models:
                self._sync_model(model)

    @staticmethod
    def _drop(model: _Model) -> None:
        for status in model.versions.values():
            status.servable, status.state = None, State.END

    def _sync_model(self, model: _Model) -> None:
        name = model.config.name
        on_disk = self._complete_versions(model)
        with self._lock:
            for version, status in model.versions.items():
                if version not in on_disk and status.servable is None:
                    status.load_attempts = 0  # Gone from disk: a later re-appearance retries.
            given_up = {v for v, s in model.versions.items() if s.load_attempts >= self._max_load_attempts
                        and s.servable is None}
        aspired = aspired_versions(model.config, [v for v in on_disk if v not in given_up])
        for version in sorted(aspired, reverse=True):
            with self._lock:
                status = model.versions.setdefault(version, VersionStatus(version))
                if status.servable is not None:
                    continue
                status.state, status.load_attempts = State.LOADING, status.load_attempts + 1
            path = os.path.join(model.base_path, str(version))
            try:
                servable = self._loader(name, version, path)
            except (ServableLoadError, ServingError, OSError) as error:
                self._record_failure(model, version, str(error))
                continue
            except Exception as error:  # noqa: BLE001 - any load failure is reported, not fatal.
                logger.exception("unexpected error loading %s", path)
                self._record_failure(model, version, f"{type(error).__name__}: {error}")
                continue
            with self._lock:
                status.servable, status.state = servable, State.AVAILABLE
                status.error_code, status.error_message = grpc.StatusCode.OK, ""
        unloaded = False
        with self._lock:
            all_aspired_available = all(
                model.versions.get(v) is not None and model.versions[v].servable is not None for v in aspired
            )
            for version, status in model.versions.items():
                if status.servable is None or version in aspired:
                    continue
                if all_aspired_available or version not in on_disk:
                    status.state = State.UNLOADING
                    status.servable = None  # In-flight requests keep their own reference.
                    status.state = State.END
                    unloaded = True
                    logger.info("unloaded model %r version %d", name, version)
        if unloaded:
            gc.collect()  # Servables and their batchers form cycles; free the model memory now.

    def _record_failure(self, model: _Model, version: int, message: str) -> None:
        with self._lock:
            status = model.versions[version]
            status.state = State.END
            status.error_code, status.error_message = grpc.StatusCode.UNKNOWN, message
            attempts = status.load_attempts
        final = attempts >= self._max_load_attempts
        logger.error("loading model %r version %d failed (attempt %d of %d%s): %s",
                     model.config.name, version, attempts, self._max_load_attempts,
                     ", giving up" if final else ", retrying next poll", message)

    def _complete_versions(self, model: _Model) -> set[int]:
        try:
            names = os.listdir(model.base_path)
        except OSError as error:
            if not model.warned_empty:
                logger.warning("cannot list base path of model %r: %s", model.config.name, error)
                model.warned_empty = True
            return set()
        with self._lock:
            loaded = {v for v, s in model.versions.items() if s.servable is not None}
        versions = set()
        now = time.time()
        model.settling = False
        for entry in names:
            path = os.path.join(model.base_path, entry)
            if not entry.isdigit() or not os.path.isdir(path):
                continue
            if int(entry) in loaded:
                versions.add(int(entry))
            elif is_complete_version_dir(path):
                if now - _newest_change(path) >= self._settle_seconds:
                    versions.add(int(entry))
                else:
                    model.settling = True
        if not versions and not model.warned_empty:
            logger.warning("no complete versions of model %r under %s yet", model.config.name, model.base_path)
            model.warned_empty = True
        elif versions:
            model.warned_empty = False
        return versions

    # Lookups -------------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def config(self, name: str) -> ModelConfig:
        with self._lock:
            return self._get_model(name).config

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """Returns the servable a request asks for: latest loaded, a specific version, or a label.

        Raises:
          ServingError: NOT_FOUND for an unknown model, label or version, or a version not loaded.
        """
        with self._lock:
            model = self._get_model(name)
            if label is not None:
                version = self._label_version(model, label)
            loaded = {v: s.servable for v, s in model.versions.items() if s.servable is not None}
            if version is None:
                if not loaded:
                    raise not_found(f"Servable not found for request: Latest({name}); no version of "
                                    f"{name!r} is loaded (yet) from {model.base_path}")
                return loaded[max(loaded)]
            if version not in loaded:
                raise not_found(f"Servable not found for request: Specific({name}, {version}); "
                                f"loaded versions: {sorted(loaded)}")
            return loaded[version]

    def statuses(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        """Returns snapshots of the model's version statuses (one version if asked), ascending.

        Raises:
          ServingError: NOT_FOUND for an unknown model or label, or a version the manager has
            never seen.
        """
        with self._lock:
            model = self._get_model(name)
            if label is not None:
                version = self._label_version(model, label)
            if version is not None:
                if version not in model.versions:
                    raise not_found(f"Could not find version {version} of model {name}")
                return [dataclasses.replace(model.versions[version])]
            if not model.versions:
                raise not_found(f"Could not find any versions of model {name}")
            return [dataclasses.replace(model.versions[v]) for v in sorted(model.versions)]

    def _get_model(self, name: str) -> _Model:
        model = self._models.get(name)
        if model is None:
            raise not_found(f"Servable not found for request: Latest({name}); this server serves "
                            f"models {sorted(self._models)}")
        return model

    @staticmethod
    def _label_version(model: _Model, label: str) -> int:
        labels = dict(model.config.version_labels)
        if label not in labels:
            raise not_found(f"Unrecognized servable version label: {label!r} for model "
                            f"{model.config.name!r}; its labels are {sorted(labels)}")
        return labels[label]
