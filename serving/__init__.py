"""TF-Serving-compatible serving of the project's SavedModels (REST and gRPC), and export conventions.

Run the server with ``python -m serving serve`` (or ``ssl-serving serve``); see ``serving/__main__.py``.

The export directory convention both halves write with: ``export`` (atomic, versioned export
dirs). The project-wide helpers (environment, configs, atomic files, the training loop) live in
``core``.

The server: ``model_config`` (ModelServerConfig files, version policies) -> ``manager`` (polls
base paths, loads / swaps / unloads versions) -> ``servable`` (one loaded SavedModel, custom-op
registration) and ``signature`` (specs and input validation); ``batcher`` with
``batching_config`` (merging concurrent requests), ``predictor`` (the shared predict path),
``json_codec`` and ``rest`` (REST API on aiohttp), ``grpc_service`` and ``responses`` (gRPC API),
``stats`` (latency statistics), ``server`` (both APIs in one event loop), ``errors`` (status
codes). ``standins`` builds contract-following stand-in exports for tests and benchmarks.
"""

from core.env import ensure_legacy_keras

ensure_legacy_keras()
