"""The demo's web server: the page, its static files and a JSON API (FastAPI, OpenAPI at /docs).

- `GET /`: the page; `GET /static/...`: its script and style sheet.
- `GET /api/info`: the model, its ways and the request limits.
- `GET /api/examples`: shipped Omniglot drawings (pen strokes, MIT-licensed) to fill the boxes.
- `POST /api/render`: drawings -> the 28x28 images the network sees.
- `POST /api/fine-tune`: support drawings (N classes x K) -> the fine-tuning losses; the
  fine-tuned weights are kept for the predictions that follow (the page calls it as soon as
  every support box is drawn, so the query's strokes are answered by a forward pass alone).
- `POST /api/predict`: support drawings and a query -> class probabilities, the fine-tuning
  losses and the images.

A drawing is a list of strokes, a stroke a list of [x, y] points in canvas pixels (y downward).
A bad request gets a 4xx whose JSON body is `{"detail": "<one line>"}` and changes nothing;
bodies over `MAX_BODY` bytes are refused (413) before they are parsed.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, model_validator

from reptorch.demo.engine import MAX_SHOTS, Engine
from reptorch.demo.render import RenderCache
from reptorch.demo.strokes import EXAMPLES, load_examples  # noqa: F401 (re-exported)
from reptorch.errors import ReptorchError

HERE = Path(__file__).parent
STATIC = HERE / "static"
MAX_BODY = 1 << 20  # bytes of one request body
MAX_STROKES = 64  # strokes in one drawing
MAX_POINTS = 4000  # points in one drawing, all strokes together

Coordinate = Annotated[float, Field(allow_inf_nan=False, ge=-1e6, le=1e6)]
Point = tuple[Coordinate, Coordinate]
Stroke = Annotated[list[Point], Field(min_length=1, max_length=MAX_POINTS)]
Drawing = Annotated[
    list[Stroke],
    Field(
        min_length=1,
        max_length=MAX_STROKES,
        description="strokes, each a list of [x, y] points in canvas pixels (y downward)",
    ),
]


def _check_points(drawings: list[list[list[Point]]], where: str) -> None:
    for i, drawing in enumerate(drawings):
        points = sum(len(stroke) for stroke in drawing)
        if points > MAX_POINTS:
            raise ValueError(f"{where}[{i}] has {points} points: at most {MAX_POINTS} a drawing")


class RenderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    drawings: list[Drawing] = Field(min_length=1, max_length=101)

    @model_validator(mode="after")
    def _points(self) -> RenderRequest:
        _check_points(self.drawings, "drawings")
        return self


class FineTuneRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    support: list[list[Drawing]] = Field(
        min_length=2,
        max_length=100,
        description="support[c][k]: drawing k of class c; every class has the same K (1 to 5)",
    )

    @model_validator(mode="after")
    def _shape(self) -> FineTuneRequest:
        shots = {len(drawings) for drawings in self.support}
        if len(shots) > 1:
            raise ValueError(f"classes have {sorted(shots)} drawings: give each the same number")
        if not 1 <= shots.pop() <= MAX_SHOTS:
            raise ValueError(f"give 1 to {MAX_SHOTS} drawings per class")
        for c, drawings in enumerate(self.support):
            _check_points(drawings, f"support[{c}]")
        return self


class PredictRequest(FineTuneRequest):
    query: Drawing

    @model_validator(mode="after")
    def _query(self) -> PredictRequest:
        _check_points([self.query], "query")
        return self


class Images(BaseModel):
    support: list[list[str]] = Field(description="per class and shot, as `image` strings")
    query: str


class RenderResponse(BaseModel):
    images: list[str] = Field(
        description="28x28 images, row-major strings of 784 characters: '1' ink, '0' paper"
    )


class PredictResponse(BaseModel):
    probabilities: list[float] = Field(description="P(query in class c), c = 0..N-1")
    predicted: int
    losses: list[float] = Field(description="fine-tuning loss of each inner step")
    images: Images
    milliseconds: float = Field(description="fine-tuning and prediction time")
    fine_tuned: bool = Field(
        description="false when the weights fine-tuned on the same support images were reused"
    )


class FineTuneResponse(BaseModel):
    losses: list[float] = Field(description="fine-tuning loss of each inner step")
    support: list[list[str]] = Field(description="the support images, as `image` strings")
    milliseconds: float = Field(description="fine-tuning time")
    fine_tuned: bool = Field(description="false when these support images were tuned on already")


def encode(image: np.ndarray) -> str:
    """A 28x28 network input (ink 0) as 784 characters, '1' where there is ink."""
    return ((image.reshape(-1) < 0.5).astype(np.uint8) + ord("0")).tobytes().decode("ascii")


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text or "body"


class BodyLimit:
    """ASGI middleware: refuses request bodies over `limit` bytes (413) before any parsing."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _too_large(self.limit, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)  # disconnect: let the app see it
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await _too_large(self.limit, send)
                return
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _too_large(limit: int, send: Any) -> None:
    body = json.dumps({"detail": f"request body over {limit} bytes: send fewer points"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(engine: Engine) -> FastAPI:
    """The demo app serving `engine`'s model."""
    app = FastAPI(
        title="reptorch demo",
        summary="Few-shot classification of drawn symbols with a Reptile-trained network",
        version="1",
    )
    model = engine.model
    spec = engine.evaluator(min(3, model.ways), 1).spec
    render_cached = RenderCache()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        if first.get("type") == "json_invalid":
            reason = first.get("ctx", {}).get("error", "")
            return JSONResponse({"detail": f"malformed JSON: {reason}".strip()}, status_code=400)
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        detail = f"{_location(tuple(first.get('loc', ())))}: {message}".replace("\n", " ")
        return JSONResponse({"detail": detail}, status_code=422)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        """The model and the limits a request must keep."""
        return {
            "model": model.name,
            "ways": model.ways,
            "max_shots": MAX_SHOTS,
            "inner_steps": spec.inner_iters,
            "inner_batch": spec.inner_batch,
            "learning_rate": model.config.learning_rate,
            "limits": {"body_bytes": MAX_BODY, "strokes": MAX_STROKES, "points": MAX_POINTS},
        }

    @app.get("/api/examples")
    def examples() -> dict[str, Any]:
        """Omniglot drawings (Lake et al. 2015, MIT license): `classes[c].drawings[i]`."""
        return load_examples()

    @app.post("/api/render")
    def render_drawings(request: RenderRequest) -> RenderResponse:
        """The 28x28 image the network sees for each drawing."""
        return RenderResponse(images=[encode(render_cached(d)) for d in request.drawings])

    def support_images(request: FineTuneRequest) -> np.ndarray:
        ways = len(request.support)
        if ways > model.ways:
            raise HTTPException(
                422, f"support has {ways} classes: this model classifies 2 to {model.ways}"
            )
        return np.stack([np.stack([render_cached(d) for d in shots]) for shots in request.support])

    @app.post("/api/fine-tune")
    def fine_tune(request: FineTuneRequest) -> FineTuneResponse:
        """Fine-tunes on the support drawings ahead of the query and keeps the weights, so that
        `/api/predict` with the same support then only classifies (one forward pass)."""
        support = support_images(request)
        try:
            result = engine.fine_tune(support)
        except ReptorchError as error:
            raise HTTPException(422, str(error)) from None
        return FineTuneResponse(
            losses=result.losses,
            support=[[encode(i) for i in shots] for shots in support],
            milliseconds=result.milliseconds,
            fine_tuned=result.fine_tuned,
        )

    @app.post("/api/predict")
    def predict(request: PredictRequest) -> PredictResponse:
        """Fine-tunes on the support drawings (unless `/api/fine-tune` or an earlier prediction
        did for the same images) and classifies the query (non-transductive)."""
        support = support_images(request)
        query = render_cached(request.query)
        try:
            result = engine.predict(support, query)
        except ReptorchError as error:
            raise HTTPException(422, str(error)) from None
        images = Images(
            support=[[encode(i) for i in shots] for shots in support], query=encode(query)
        )
        return PredictResponse(
            probabilities=result.probabilities,
            predicted=result.predicted,
            losses=result.losses,
            images=images,
            milliseconds=result.milliseconds,
            fine_tuned=result.fine_tuned,
        )

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodyLimit, limit=MAX_BODY)
    return app


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket for uvicorn's `sockets=`, declared IPPROTO_TCP.

    asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets whose `proto` says TCP;
    `socket.create_server` leaves it 0. With Nagle on, uvicorn's response body, written after its
    headers, waits for the client's delayed ACK: every answer took 40 ms longer (measured).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class BackgroundServer:
    """An ASGI app under uvicorn in a background thread on a free localhost port (`url`): for
    tests and benchmarks that talk to the demo through a real socket, as a browser does."""

    def __init__(self, app: Any) -> None:
        import threading

        import uvicorn

        self.sock = listen("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> BackgroundServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.server.started:
            raise RuntimeError("uvicorn did not start within 30 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
