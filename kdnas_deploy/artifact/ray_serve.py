"""Scale-out serving: the artifact's HTTP API as a Ray Serve deployment, replicated, batched by `@serve.batch`.

Each replica builds the same FastAPI app as `serve` (`create_app`: routes, request and response schema, limits and
error bodies), with Ray's batching in place of the single-process micro-batcher. Ray's proxy owns the
connections, so its HTTP settings (keep-alive, request timeout) stand in for `serve`'s uvicorn guards.
There is no `/metrics` route: a replica would count only the requests routed to it, and a scrape would reach one
replica at random. Ray Serve's own metrics (`ray_serve_*` on each node's metrics export port) cover the deployment.

From the command line:

    kdnas-deploy serve ARTIFACT --engine ray --replicas 2 --port 8000

or as a Ray Serve application, on a running cluster or in a config file (`import_path` + `args`):

    serve run kdnas_deploy.artifact.ray_serve:build artifact=ARTIFACT replicas=2
"""

from __future__ import annotations

import logging
from typing import Any

from kdnas_deploy.artifact.runtime import Artifact, Row
from kdnas_deploy.artifact.serve import RowRunner, ServeConfig, create_app
from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.util.resources import cpu_budget

log = logging.getLogger(__name__)


class RayBatcher(RowRunner):
    """`Batcher` for a Ray replica: requests meet in `@serve.batch`, sized in rows (not requests) up to
    `max_batch`, waiting at most `max_wait_ms`; `RowRunner` runs them, as it does for `MicroBatcher`."""

    def __init__(self, artifact: Artifact, config: ServeConfig, replica: str = ""):
        from ray import serve

        super().__init__(artifact, config)
        self.replica = replica
        self._batched = serve.batch(max_batch_size=config.max_batch, batch_wait_timeout_s=config.max_wait_ms / 1000,
                                    batch_size_fn=lambda jobs: sum(len(j) for j in jobs))(self._answer)

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def submit(self, rows: list[Row]) -> list[Any]:
        if len(rows) > self.config.max_batch:  # larger than any batch: runs alone, in max_batch slices
            return await self._predict(rows)
        result = await self._batched(rows)
        if isinstance(result, Exception):
            raise result
        return result


def replica_threads(replicas: int, threads: int | None = None) -> int:
    """ONNX Runtime threads per replica: the CPUs this process may use (a container's quota, not the host's cores)
    shared out, so replicas do not fight over them."""
    return threads or max(1, cpu_budget() // replicas)


def deployment(artifact_dir: str, replicas: int = 2, config: ServeConfig | None = None, threads: int | None = None) -> Any:
    """The Ray Serve application: `replicas` copies of the artifact's API."""
    from ray import serve

    if replicas < 1:
        raise KdnasError(f"--replicas must be at least 1, got {replicas}")
    checked = Artifact(artifact_dir)  # a broken folder is one line here, not a replica that fails to start over and over
    if checked.cpu["note"]:
        log.warning("note: %s", checked.cpu["note"])
    config = config or ServeConfig()
    per_replica = replica_threads(replicas, threads)

    def build_app() -> Any:  # runs in each replica
        replica = serve.get_replica_context().replica_id.unique_id
        artifact = Artifact(artifact_dir, threads=per_replica)
        return create_app(artifact, config, RayBatcher(artifact, config, replica), metrics=False)  # Ray has its own

    cpus = min(float(per_replica), cpu_budget() / replicas)

    @serve.deployment(name="kdnas-deploy", num_replicas=replicas, ray_actor_options={"num_cpus": cpus},
                      max_ongoing_requests=max(2 * config.max_batch, 8))
    @serve.ingress(build_app)
    class ArtifactAPI:
        pass

    return ArtifactAPI.bind()


def build(args: dict[str, str]) -> Any:
    """Ray Serve's application builder: `serve run kdnas_deploy.artifact.ray_serve:build artifact=DIR replicas=2`
    (also `max_batch`, `max_wait_ms`, `threads`), or the same `args` under `import_path` in a Serve config file."""
    known = {"artifact", "replicas", "max_batch", "max_wait_ms", "threads"}
    unknown = sorted(set(args) - known)
    if unknown or "artifact" not in args:
        raise KdnasError(f"arguments: artifact=DIR is required; known are {', '.join(sorted(known))}"
                         + (f" (not {', '.join(unknown)})" if unknown else ""))
    try:
        config = ServeConfig(max_batch=int(args.get("max_batch", 32)), max_wait_ms=float(args.get("max_wait_ms", 5.0)))
        return deployment(str(args["artifact"]), int(args.get("replicas", 2)), config,
                          int(args["threads"]) if "threads" in args else None)
    except ValueError as exc:
        raise KdnasError(f"arguments: {exc}") from None


def serve_ray(artifact_dir: str, host: str = "127.0.0.1", port: int = 8000, replicas: int = 2,
              config: ServeConfig | None = None, threads: int | None = None) -> None:
    """Starts Ray on this machine (or joins the cluster RAY_ADDRESS names), deploys, and serves until interrupted."""
    import signal
    import sys

    import ray
    from ray import serve

    app = deployment(artifact_dir, replicas, config, threads)
    # SIGTERM from a supervisor ends like Ctrl-C: through the `finally` below, which stops the replicas and the
    # local Ray processes instead of leaving them to notice their parent is gone.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name="kdnas-deploy", route_prefix="/", blocking=True)
    finally:
        serve.shutdown()
        ray.shutdown()
