"""`serve`: an artifact behind FastAPI + uvicorn, with requests grouped into micro-batches.

One batcher task owns the ONNX Runtime session: it takes the first waiting request, gathers more until
`max_batch` rows or `max_wait_ms` have passed, runs them as one padded batch in a worker thread (so the event loop
keeps accepting requests), and hands each request its slice. It waits only under load (the previous batch held
more than one row): a lone request on an idle server runs at once instead of paying `max_wait_ms` for company
that is not coming (tools/bench_serve.py: p50 at concurrency 1 went from 8.8 to 2.4 ms). One session run at a time is deliberate:
the session already uses every core given to it, and two concurrent runs would only contend for them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Callable, Protocol, Union

from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from kdnas_deploy.artifact.runtime import Artifact, Row, split_rows
from kdnas_deploy.util.errors import KdnasError

log = logging.getLogger(__name__)


# Module level, not inside create_app: FastAPI resolves the endpoint's string annotations from module globals.
class PredictRequest(BaseModel):
    inputs: list[Union[str, list[str]]] = Field(
        description="Texts, or [text, text_pair] pairs for pair tasks.", examples=[["a delightful film"]])

class Label(BaseModel):
    label: str | None
    score: float
    scores: dict[str, float]


class PredictResponse(BaseModel):
    model: str
    predictions: list[Label]


@dataclass(frozen=True)
class ServeConfig:
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_texts: int = 64
    max_chars: int = 4000
    #: Open connections at most; a request beyond them is answered 503 at once instead of queueing without bound.
    max_connections: int = 256
    #: Seconds a client has to send a request's headers, and then its body: a connection that trickles them (or sends
    #: half and waits) is closed with 408 instead of being held open for ever.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    #: Seconds an idle keep-alive connection stays open.
    keep_alive_s: float = 5.0

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_texts < 1 or self.max_chars < 1 or self.max_connections < 1:
            raise KdnasError("--max-batch, --max-texts, --max-chars and --max-connections must be at least 1")
        if self.max_wait_ms < 0:
            raise KdnasError(f"--max-wait-ms must be zero or more, got {self.max_wait_ms}")
        if min(self.header_timeout_s, self.body_timeout_s, self.keep_alive_s) <= 0:
            raise KdnasError("the header, body and keep-alive timeouts must be positive")

    @property
    def max_body_bytes(self) -> int:
        # Generous: JSON escaping can multiply a text's size (\uXXXX is 6 bytes for 1 character).
        return 64 * 1024 + self.max_texts * self.max_chars * 2 * 6


@dataclass
class _Job:
    rows: list[Row]
    future: asyncio.Future[Any]


class RowRunner:
    """Runs requests' rows through the artifact for a batcher: all of a batch's rows in one pass (in `max_batch`
    slices, in a worker thread, so the event loop keeps accepting requests), each request answered with its slice.
    If the pass fails, each request runs again alone, so only a request that fails by itself gets an error and no
    other request's answer depends on it. Counts what it ran for /health."""

    #: Which replica this is, where there are several (Ray Serve); empty for one process.
    replica: str = ""

    def __init__(self, artifact: Artifact, config: ServeConfig):
        self.artifact, self.config = artifact, config
        self.batches = 0
        self.rows = 0
        self.last_batch = 0
        #: Told each pass's rows and seconds (/metrics).
        self.on_batch: Callable[[int, float], None] | None = None

    async def _predict(self, rows: list[Row]) -> list[Any]:
        loop = asyncio.get_running_loop()
        # Large requests go through in max_batch slices; small ones share one padded batch.
        preds: list[Any] = []
        began = time.perf_counter()
        for start in range(0, len(rows), self.config.max_batch):
            preds += await loop.run_in_executor(None, self.artifact.predict, rows[start:start + self.config.max_batch])
        if self.on_batch is not None:
            self.on_batch(len(rows), time.perf_counter() - began)
        self.batches += 1
        self.rows += len(rows)
        self.last_batch = len(rows)
        return preds

    async def _answer(self, jobs: list[list[Row]]) -> list[Any]:
        """Each job's predictions, or the exception that job raised when run alone."""
        try:
            preds = await self._predict([r for j in jobs for r in j])
        except Exception:  # noqa: BLE001 - one request's failure must not reach its batch-mates' answers
            answers: list[Any] = []
            for j in jobs:
                try:
                    answers.append(await self._predict(j))
                except Exception as exc:  # noqa: BLE001 - handed to that request alone
                    answers.append(exc)
            return answers
        at, answers = 0, []
        for j in jobs:
            answers.append(preds[at:at + len(j)])
            at += len(j)
        return answers


class MicroBatcher(RowRunner):
    def __init__(self, artifact: Artifact, config: ServeConfig):
        super().__init__(artifact, config)
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    async def submit(self, rows: list[Row]) -> list[Any]:
        job = _Job(rows, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.future

    async def _next(self, timeout: float) -> _Job | None:
        """The next waiting job within `timeout` seconds, else None.

        Not `asyncio.wait_for(queue.get())`: before Python 3.12 it can time out after the get has taken an item,
        which would lose that request."""
        if timeout <= 0:
            try:
                return self.queue.get_nowait()
            except asyncio.QueueEmpty:
                return None
        getter = asyncio.ensure_future(self.queue.get())
        done, _ = await asyncio.wait({getter}, timeout=timeout)
        if getter not in done:
            getter.cancel()
            try:
                return await getter  # it may have completed while being cancelled: keep that job
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if me is not None and getattr(me, "cancelling", lambda: 0)():
                    raise  # the batcher itself is being stopped, not just this wait
                return None
        return getter.result()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            size = len(jobs[0].rows)
            wait = self.config.max_wait_ms / 1000 if self.last_batch > 1 else 0.0
            deadline = loop.time() + wait
            while size < self.config.max_batch:
                job = await self._next(deadline - loop.time())
                if job is None:
                    break
                jobs.append(job)
                size += len(job.rows)
            for job, answer in zip(jobs, await self._answer([j.rows for j in jobs])):
                if job.future.done():
                    continue
                if isinstance(answer, Exception):
                    job.future.set_exception(answer)
                else:
                    job.future.set_result(answer)


class BodyLimit:
    """413 for a request body over `limit` bytes: at once for a declared length, and as it streams in for a body
    without one (chunked), so no more than `limit` bytes are ever read. Plain ASGI rather than
    `@app.middleware("http")`, whose per-request task and stream wrapping cost measurable CPU (tools/bench_serve.py)."""

    def __init__(self, app: Any, limit: int, on_refused: Callable[[str], None] | None = None):
        self.app, self.limit, self.on_refused = app, limit, on_refused

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._too_large(scope, receive, send)
            return
        if length is not None:  # the server reads no more than a declared length
            await self.app(scope, receive, send)
            return
        received, started = 0, False

        async def limited() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)  # FastAPI passes HTTP errors through its body parsing
            return message

        async def sending(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, sending)
        except BodyTooLarge:
            if started:
                raise
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Any, receive: Any, send: Any) -> None:
        from fastapi.responses import JSONResponse

        if self.on_refused is not None:
            self.on_refused(scope.get("path", ""))
        await JSONResponse(status_code=413, content={"error": f"request body over {self.limit} bytes"})(scope, receive, send)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body over {limit} bytes")


class Batcher(Protocol):
    """What the app needs of whatever groups requests into session runs: this module's `MicroBatcher`, or Ray Serve's
    `@serve.batch` (`artifact.ray_serve`)."""

    batches: int
    rows: int
    replica: str

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def submit(self, rows: list[Row]) -> list[Any]: ...


def create_app(artifact: Artifact, config: ServeConfig | None = None, batcher: Batcher | None = None,
               metrics: bool = True) -> Any:
    """The HTTP API over `artifact`: the same routes, limits and error bodies whichever `batcher` runs the model.
    `metrics` adds `GET /metrics` (Prometheus text format; what it counts: `kdnas_deploy.artifact.metrics`). Ray
    Serve replicas leave it out, as each would count only its own share of the traffic."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from kdnas_deploy.artifact.metrics import ServeMetrics

    config = config or ServeConfig()
    runner: Batcher = batcher or MicroBatcher(artifact, config)
    started = time.time()
    meter: ServeMetrics | None = None
    if metrics:
        model = {"model": artifact.name, "profile": artifact.profile.name, "arch": str(artifact.card.get("arch", "")),
                 "precision": artifact.profile.model.precision.value}
        meter = ServeMetrics(model, queued=runner.queue.qsize if isinstance(runner, MicroBatcher) else None)
        if isinstance(runner, RowRunner):
            runner.on_batch = meter.batch

    def refused(path: str, status: int) -> None:  # answered before the handler ran: counted, not timed
        if meter is not None and path == "/v1/predict":
            meter.answered(status)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        runner.start()
        yield
        await runner.stop()

    card = public_card(artifact.card)
    app = FastAPI(title=f"kdnas-deploy: {artifact.name}", version=str(card.get("format", 1)), lifespan=lifespan,
                  description="Text classification with a distilled, optimized ONNX student.")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": message})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        refused(request.url.path, exc.status_code)
        return error(exc.status_code, str(exc.detail))  # 400 unparsable body, 404, 405: the same JSON shape

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        refused(request.url.path, 422)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error(422, f"{where or 'body'}: {first.get('msg', 'invalid request')}")

    app.add_middleware(BodyLimit, limit=config.max_body_bytes, on_refused=lambda path: refused(path, 413))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": artifact.name, "uptime_s": round(time.time() - started, 1),
                "batches": runner.batches, "rows": runner.rows,
                **({"replica": runner.replica} if runner.replica else {})}

    @app.get("/v1/metadata")
    async def metadata() -> dict[str, Any]:
        return {**card, "serving": {"max_batch": config.max_batch, "max_wait_ms": config.max_wait_ms,
                                    "max_texts": config.max_texts, "max_chars": config.max_chars},
                "runtime_cpu": artifact.cpu}

    if meter is not None:
        @app.get("/metrics", include_in_schema=False)
        async def scrape() -> Response:
            body, content_type = meter.exposition()
            return Response(body, media_type=content_type)

    @app.post("/v1/predict", response_model=PredictResponse, responses={413: {}, 422: {}})
    async def predict(request: PredictRequest) -> Any:
        began = time.perf_counter()
        response = await answer(request)
        if meter is not None:
            meter.answered(response.status_code, time.perf_counter() - began)
        return response

    async def answer(request: PredictRequest) -> Response:
        rows = request.inputs
        if not rows:
            return error(422, "inputs: give at least one text")
        if len(rows) > config.max_texts:
            return error(413, f"inputs: {len(rows)} texts, the limit is {config.max_texts} per request")
        for i, row in enumerate(rows):
            texts = [row] if isinstance(row, str) else row
            if any(len(t) > config.max_chars for t in texts):
                return error(413, f"inputs.{i}: a text is over {config.max_chars} characters")
            if any(not t.strip() for t in texts):
                return error(422, f"inputs.{i}: empty text")
        try:
            split_rows(rows, artifact.pair)
        except KdnasError as exc:
            return error(422, f"inputs: {exc}")
        try:
            preds = await runner.submit(list(rows))
        except Exception:  # noqa: BLE001 - failed alone (see MicroBatcher): this request's own, and no detail leaks
            log.exception("prediction failed")
            return error(500, "prediction failed for this request")
        # Serialized here rather than through the response model (which still documents the schema): validating
        # our own output again cost CPU per request that the 2-core machine's session needs.
        body = json.dumps({"model": artifact.name, "predictions": [p.to_dict() for p in preds]})
        return Response(body, media_type="application/json")

    return app


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/-])(?:~|[A-Za-z]:)?[/\\][^\s,;'\"()]+")


def public_card(value: Any) -> Any:
    """The card as a client may see it: every absolute local path (teacher, data files, source folder) cut to its last
    part, which names the thing without telling a client how the serving machine's disk is laid out."""
    if isinstance(value, dict):
        return {k: public_card(v) for k, v in value.items()}
    if isinstance(value, list):
        return [public_card(v) for v in value]
    if isinstance(value, str):
        return _ABSOLUTE_PATH.sub(lambda m: PurePath(m.group(0).replace("\\", "/")).name or "/", value)
    return value


def serve(artifact_dir: str, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          threads: int | None = None, log_level: str = "warning", spinning: bool | None = None) -> None:
    """Runs the server until SIGINT/SIGTERM; uvicorn finishes in-flight requests before it exits."""
    import signal
    import sys

    import uvicorn

    # `spinning` overrides the profile's spin-waiting: on a small machine idle spinning threads compete with the
    # event loop (tools/bench_serve.py measured no clear difference either way on 2 cores).
    config = config or ServeConfig()
    artifact = Artifact(artifact_dir, threads=threads, spinning=spinning)
    if artifact.cpu["note"]:  # also in GET /v1/metadata, for whoever did not read the log
        log.warning("note: %s", artifact.cpu["note"])
    app = create_app(artifact, config)
    # uvicorn shuts down gracefully, then re-raises the signal it caught to the handler found at start: make
    # that handler a clean exit, so SIGTERM from a supervisor (systemd, Kubernetes) ends with status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    uvicorn.run(app, **uvicorn_settings(config), host=host, port=port, log_level=log_level)


def uvicorn_settings(config: ServeConfig) -> dict[str, Any]:
    """The uvicorn options that bound what clients can hold: connections, and time to send a request."""
    from kdnas_deploy.artifact.http_guard import guarded_protocol

    return {"http": guarded_protocol(config.header_timeout_s, config.body_timeout_s),
            "limit_concurrency": config.max_connections, "timeout_keep_alive": config.keep_alive_s,
            "timeout_graceful_shutdown": 10}
