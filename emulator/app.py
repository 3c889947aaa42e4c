"""The emulator's ASGI app (Starlette): the Slack Web API at ``/api/<method>``, response URLs, the control
API under ``/_emulator/`` (documented in ``docs/emulator.md``), and the web page at ``/``.

Bad input is a clear 4xx; nothing here lets an exception escape as a stack trace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from keyturn.emulator.clock import Clock
from keyturn.emulator.core import Emulator, EmulatorSettings
from keyturn.emulator.errors import EmulatorError

log = logging.getLogger("keyturn.emulator")

M = TypeVar("M", bound=BaseModel)

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY = 1024 * 1024
MAX_WAIT = 60.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _SendOptions(_Strict):
    send: bool = True
    timestamp: int | None = Field(default=None, ge=0, le=10**11)
    tamper_signature: bool = False


class ClickIn(_SendOptions):
    """``POST /_emulator/click``."""

    user: str
    channel: str
    ts: str
    action_id: str
    value: str | None = None


class SubmitViewIn(_SendOptions):
    """``POST /_emulator/submit_view``."""

    user: str
    view_id: str
    values: dict[str, dict[str, Any]] = Field(default_factory=dict)


class CloseViewIn(_Strict):
    """``POST /_emulator/close_view``."""

    user: str
    view_id: str


class CommandIn(_SendOptions):
    """``POST /_emulator/command``."""

    user: str
    channel: str
    command: str
    text: str = ""


class FaultIn(_Strict):
    """``POST /_emulator/faults``."""

    method: str
    error: str | None = None
    status: int = 200
    retry_after: int = 1
    latency: float = 0.0
    times: int | None = None


class ConfigIn(_Strict):
    """``POST /_emulator/config``."""

    bot_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")


def emulator_of(app: Starlette) -> Emulator:
    """The :class:`Emulator` behind an app made by :func:`create_app`."""
    emu: Emulator = app.state.emulator
    return emu


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


async def _read_body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise EmulatorError("body_too_large", f"request bodies are limited to {MAX_BODY} bytes", 413)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise EmulatorError("body_too_large", f"request bodies are limited to {MAX_BODY} bytes", 413)
    return body


async def _control_body(request: Request, model: type[M]) -> M:
    raw = await _read_body(request)
    try:
        data = json.loads(raw) if raw.strip() else {}
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, or nested too deep
        raise EmulatorError("invalid_json", "the body must be a JSON object", 400) from None
    if not isinstance(data, dict):
        raise EmulatorError("invalid_json", "the body must be a JSON object", 400)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise EmulatorError("invalid_request", f"{where}: {first['msg']}", 400) from None


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def create_app(settings: EmulatorSettings, clock: Clock | None = None) -> Starlette:
    """The emulator as an ASGI app; ``app.state.emulator`` is its :class:`Emulator` (for in-process use)."""
    emu = Emulator(settings, clock)

    def guarded(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except EmulatorError as exc:
                return _json(exc.body(), exc.status)
            except Exception:  # the emulator stays up and never shows a stack trace to its caller
                log.exception("emulator: unexpected error on %s %s", request.method, request.url.path)
                return _json({"ok": False, "error": "internal_error", "message": "see the emulator log"}, 500)

        return endpoint

    async def web_api(request: Request) -> Response:
        method = request.path_params["method"]
        params: dict[str, Any] = dict(request.query_params)
        raw = await _read_body(request)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if raw.strip():
            if content_type == "application/json":
                try:
                    data = json.loads(raw)
                except (ValueError, RecursionError):  # bad JSON, bad UTF-8, or nested too deep
                    data = None
                if not isinstance(data, dict):
                    return _json({"ok": False, "error": "invalid_json"})
                params.update(data)
            else:
                try:
                    params.update(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
                except UnicodeDecodeError:
                    return _json({"ok": False, "error": "invalid_form_data"})
        token: str | None = None
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        body_token = params.pop("token", None)
        if token is None and isinstance(body_token, str):
            token = body_token
        answer = await emu.call_api(method, params, token, base_url=_base_url(request))
        return _json(answer.body, answer.status, answer.headers)

    async def response_url(request: Request) -> Response:
        raw = await _read_body(request)
        try:
            params: Any = json.loads(raw) if raw.strip() else None
        except (ValueError, RecursionError):  # bad JSON, bad UTF-8, or nested too deep
            params = None
        status, text = await emu.post_response(request.path_params["target"], params)
        return PlainTextResponse(text, status_code=status)

    async def click(request: Request) -> Response:
        body = await _control_body(request, ClickIn)
        # The control models' fields are the emulator methods' keywords, by design.
        result = await emu.click(**body.model_dump(), base_url=_base_url(request))
        return _json(result, 200 if result["ok"] else 502)

    async def submit_view(request: Request) -> Response:
        body = await _control_body(request, SubmitViewIn)
        result = await emu.submit_view(**body.model_dump())
        view = emu.state.views.get(body.view_id)
        if view is not None:
            result["view"] = {"id": view.id, "is_open": view.is_open, "errors": dict(view.errors)}
        return _json(result, 200 if result["ok"] else 502)

    async def close_view(request: Request) -> Response:
        body = await _control_body(request, CloseViewIn)
        emu.close_view(**body.model_dump())
        return _json({"ok": True})

    async def command(request: Request) -> Response:
        body = await _control_body(request, CommandIn)
        result = await emu.command(**body.model_dump(), base_url=_base_url(request))
        return _json(result, 200 if result["ok"] else 502)

    def _int_query(request: Request, name: str, default: int) -> int:
        raw = request.query_params.get(name)
        if raw is None:
            return default
        if not raw.isdigit():
            raise EmulatorError("invalid_request", f"{name} must be a non-negative integer", 400)
        return int(raw)

    async def calls(request: Request) -> Response:
        method = request.query_params.get("method")
        found = emu.recorder.calls(method, _int_query(request, "since", 0))
        return _json({"ok": True, "calls": [c.to_json() for c in found]})

    async def wait(request: Request) -> Response:
        q = request.query_params
        try:
            timeout = float(q.get("timeout", "5"))
        except ValueError:
            raise EmulatorError("invalid_request", "timeout must be a number of seconds", 400) from None
        if not 0 <= timeout <= MAX_WAIT:
            raise EmulatorError("invalid_request", f"timeout must be 0..{MAX_WAIT:g} seconds", 400)
        filters = {k: v for k, v in q.items() if k not in ("method", "since", "timeout")}
        since = _int_query(request, "since", 0)
        call = await emu.recorder.wait(q.get("method"), filters, since, timeout)
        if call is None:
            return _json({"ok": False, "error": "timeout", "message": "no matching call recorded"}, 408)
        return _json({"ok": True, "call": call.to_json()})

    async def state(request: Request) -> Response:
        user = request.query_params.get("user") or None
        return _json({"ok": True, **emu.state.snapshot(user), "bot_url": emu.bot_url})

    async def reset(request: Request) -> Response:
        emu.reset()
        return _json({"ok": True})

    async def faults(request: Request) -> Response:
        if request.method == "POST":
            body = await _control_body(request, FaultIn)
            fault = emu.faults.add(**body.model_dump())
            return _json({"ok": True, "fault": fault.to_json()})
        if request.method == "DELETE":
            removed = emu.faults.clear(request.query_params.get("method"))
            return _json({"ok": True, "removed": removed})
        return _json({"ok": True, "faults": [f.to_json() for f in emu.faults.list()]})

    async def deliveries(request: Request) -> Response:
        return _json({"ok": True, "deliveries": emu.deliveries})

    async def config(request: Request) -> Response:
        if request.method == "POST":
            body = await _control_body(request, ConfigIn)
            emu.bot_url = body.bot_url
        secret_set = emu.settings.signing_secret is not None
        return _json({"ok": True, "bot_url": emu.bot_url, "signing_secret_set": secret_set})

    async def health(request: Request) -> Response:
        return _json({"ok": True})

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await emu.aclose()

    routes = [
        Route("/", guarded(index), methods=["GET"]),
        Route("/api/{method:str}", guarded(web_api), methods=["GET", "POST"]),
        Route("/_emulator/response/{target:str}", guarded(response_url), methods=["POST"]),
        Route("/_emulator/click", guarded(click), methods=["POST"]),
        Route("/_emulator/submit_view", guarded(submit_view), methods=["POST"]),
        Route("/_emulator/close_view", guarded(close_view), methods=["POST"]),
        Route("/_emulator/command", guarded(command), methods=["POST"]),
        Route("/_emulator/calls", guarded(calls), methods=["GET"]),
        Route("/_emulator/wait", guarded(wait), methods=["GET"]),
        Route("/_emulator/state", guarded(state), methods=["GET"]),
        Route("/_emulator/reset", guarded(reset), methods=["POST"]),
        Route("/_emulator/faults", guarded(faults), methods=["GET", "POST", "DELETE"]),
        Route("/_emulator/deliveries", guarded(deliveries), methods=["GET"]),
        Route("/_emulator/config", guarded(config), methods=["GET", "POST"]),
        Route("/_emulator/health", guarded(health), methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.emulator = emu
    return app
