"""A Python client of a running emulator's control API, for tests and for ``keyturn dev``.

Uses httpx (a development dependency). :class:`EmulatorClient` is synchronous; :class:`AsyncEmulatorClient`
runs the same methods in a worker thread, as coroutines, for tests whose bot shares the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, Unpack

import httpx

if TYPE_CHECKING:
    from keyturn.emulator.faults import FaultFields

P = ParamSpec("P")
R = TypeVar("R")


class EmulatorClientError(Exception):
    """The emulator refused a control request; ``code`` is its stable error code."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code}: {message} (HTTP {status})")
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Delivery:
    """What the emulator sent to the bot (``request``) and what the bot answered (``status``, ``body``).

    ``status`` is None when the request was built but not sent, or the bot timed out / was unreachable
    (then ``error`` says which)."""

    raw: dict[str, Any]

    @property
    def ok(self) -> bool:
        """True if the request was delivered (whatever the bot answered)."""
        return bool(self.raw.get("ok"))

    @property
    def error(self) -> str | None:
        """``bot_timeout`` or ``bot_unreachable`` when the bot did not answer."""
        err = self.raw.get("error")
        return str(err) if err is not None else None

    @property
    def request(self) -> dict[str, Any]:
        """The request as sent: ``url``, ``headers``, ``body`` (exact signed string)."""
        req: dict[str, Any] = self.raw["request"]
        return req

    @property
    def status(self) -> int | None:
        """The bot's HTTP status."""
        resp = self.raw.get("response")
        return int(resp["status"]) if resp else None

    @property
    def body(self) -> str:
        """The bot's response body as text ("" if none)."""
        resp = self.raw.get("response")
        return str(resp["body"]) if resp else ""

    @property
    def json(self) -> Any:
        """The bot's response body parsed as JSON (None if it was not JSON)."""
        resp = self.raw.get("response")
        return resp.get("json") if resp else None

    @property
    def headers(self) -> dict[str, str]:
        """The bot's response headers."""
        resp = self.raw.get("response")
        return dict(resp["headers"]) if resp else {}

    @property
    def trigger_id(self) -> str | None:
        """The trigger id the emulator issued with this interaction."""
        tid = self.raw.get("trigger_id")
        return str(tid) if tid is not None else None

    @property
    def view(self) -> dict[str, Any] | None:
        """For a view submission: the view afterwards (``is_open``, ``errors``)."""
        view = self.raw.get("view")
        return dict(view) if view is not None else None


def _check(resp: httpx.Response) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        raise EmulatorClientError("invalid_response", resp.text[:200], resp.status_code) from None
    if not isinstance(data, dict):
        raise EmulatorClientError("invalid_response", "not a JSON object", resp.status_code)
    if resp.status_code >= 400 and not ("request" in data and resp.status_code == 502):
        raise EmulatorClientError(
            str(data.get("error", "http_error")), str(data.get("message", "")), resp.status_code
        )
    return data


def _send_options(send: bool, timestamp: int | None, tamper_signature: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"send": send, "tamper_signature": tamper_signature}
    if timestamp is not None:
        out["timestamp"] = timestamp
    return out


def _wait_params(method: str, timeout: float, since: int, filters: dict[str, Any]) -> dict[str, Any]:
    return {"method": method, "timeout": timeout, "since": since, **{k: str(v) for k, v in filters.items()}}


class EmulatorClient:
    """Synchronous client: ``EmulatorClient("http://127.0.0.1:3000")``."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    @property
    def api_url(self) -> str:
        """The ``base_url`` to give ``slack_sdk`` clients."""
        return self.base_url + "/api/"

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> EmulatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, path: str, **params: Any) -> dict[str, Any]:
        return _check(self._http.get(path, params={k: v for k, v in params.items() if v is not None}))

    def _post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return _check(self._http.post(path, json=body or {}))

    def click(
        self,
        user: str,
        channel: str,
        ts: str,
        action_id: str,
        value: str | None = None,
        *,
        send: bool = True,
        timestamp: int | None = None,
        tamper_signature: bool = False,
    ) -> Delivery:
        """``user`` clicks the element ``action_id`` on the stored message ``(channel, ts)``."""
        body = {"user": user, "channel": channel, "ts": ts, "action_id": action_id, "value": value}
        return Delivery(
            self._post("/_emulator/click", body | _send_options(send, timestamp, tamper_signature))
        )

    def submit_view(
        self,
        user: str,
        view_id: str,
        values: dict[str, dict[str, Any]] | None = None,
        *,
        send: bool = True,
        timestamp: int | None = None,
        tamper_signature: bool = False,
    ) -> Delivery:
        """``user`` submits the open view with ``values`` ``{block_id: {action_id: value}}``."""
        body = {"user": user, "view_id": view_id, "values": values or {}}
        return Delivery(
            self._post("/_emulator/submit_view", body | _send_options(send, timestamp, tamper_signature))
        )

    def close_view(self, user: str, view_id: str) -> None:
        """``user`` dismisses the modal."""
        self._post("/_emulator/close_view", {"user": user, "view_id": view_id})

    def command(
        self,
        user: str,
        channel: str,
        command: str,
        text: str = "",
        *,
        send: bool = True,
        timestamp: int | None = None,
        tamper_signature: bool = False,
    ) -> Delivery:
        """``user`` runs ``command text`` in ``channel``."""
        body = {"user": user, "channel": channel, "command": command, "text": text}
        return Delivery(
            self._post("/_emulator/command", body | _send_options(send, timestamp, tamper_signature))
        )

    def calls(self, method: str | None = None, since: int = 0) -> list[dict[str, Any]]:
        """Recorded Web API calls (and ``response_url`` posts) after ``since``, oldest first."""
        calls: list[dict[str, Any]] = self._get("/_emulator/calls", method=method, since=since)["calls"]
        return calls

    def wait_for(self, /, method: str, timeout: float = 5.0, since: int = 0, **params: Any) -> dict[str, Any]:
        """The first call of ``method`` after ``since`` whose params equal ``params``; waits up to ``timeout``
        seconds for it. Raises :class:`TimeoutError` if none comes."""
        resp = self._http.get(
            "/_emulator/wait", params=_wait_params(method, timeout, since, params), timeout=timeout + 10
        )
        if resp.status_code == 408:
            raise TimeoutError(f"no {method} call matching {params} within {timeout}s")
        call: dict[str, Any] = _check(resp)["call"]
        return call

    def state(self, user: str | None = None) -> dict[str, Any]:
        """The whole state (for ``user``: with their ephemeral messages and open views)."""
        return self._get("/_emulator/state", user=user)

    def messages(self, channel: str) -> list[dict[str, Any]]:
        """Top-level messages of a channel (by id or name) or DM, each with ``replies``."""
        st = self.state()
        for conv in st["channels"] + st["ims"]:
            if channel in (conv["id"], conv["name"], "#" + conv["name"]):
                msgs: list[dict[str, Any]] = conv["messages"]
                return msgs
        raise EmulatorClientError("channel_not_found", channel, 404)

    def message(self, channel: str, ts: str) -> dict[str, Any]:
        """One message (top-level or reply) by ``ts``."""
        for msg in self.messages(channel):
            for m in [msg, *msg["replies"]]:
                if m["ts"] == ts:
                    return dict(m)
        raise EmulatorClientError("message_not_found", f"{channel} {ts}", 404)

    def views(self, user: str | None = None) -> list[dict[str, Any]]:
        """Open views (of ``user``)."""
        views: list[dict[str, Any]] = self.state(user)["views"]
        return views

    def ephemerals(self, user: str) -> list[dict[str, Any]]:
        """Ephemeral messages shown to ``user``."""
        eph: list[dict[str, Any]] = self.state(user)["ephemerals"]
        return eph

    def fault(self, method: str, **fields: Unpack[FaultFields]) -> dict[str, Any]:
        """Inject a fault (see ``docs/emulator.md``; an absent field takes the emulator's default); returns it
        with its id."""
        fault: dict[str, Any] = self._post("/_emulator/faults", {"method": method, **fields})["fault"]
        return fault

    def faults(self) -> list[dict[str, Any]]:
        """Active faults."""
        faults: list[dict[str, Any]] = self._get("/_emulator/faults")["faults"]
        return faults

    def clear_faults(self, method: str | None = None) -> int:
        """Remove faults (of ``method``, or all); returns how many."""
        params = {"method": method} if method else {}
        return int(_check(self._http.delete("/_emulator/faults", params=params))["removed"])

    def deliveries(self) -> list[dict[str, Any]]:
        """Requests sent to the bot and its answers."""
        deliveries: list[dict[str, Any]] = self._get("/_emulator/deliveries")["deliveries"]
        return deliveries

    def set_bot_url(self, url: str | None) -> None:
        """Point the emulator at the bot's Slack request URL."""
        self._post("/_emulator/config", {"bot_url": url})

    def reset(self) -> None:
        """Forget messages, views, calls, deliveries and faults."""
        self._post("/_emulator/reset")


def _in_thread(
    method: Callable[Concatenate[EmulatorClient, P], R],
) -> Callable[Concatenate[AsyncEmulatorClient, P], Coroutine[Any, Any, R]]:
    """``method`` of :class:`EmulatorClient` as a coroutine that runs it in a worker thread."""

    async def call(self: AsyncEmulatorClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(method, self.sync, *args, **kwargs)

    call.__name__, call.__doc__ = method.__name__, method.__doc__
    return call


class AsyncEmulatorClient:
    """:class:`EmulatorClient`'s methods as coroutines, for tests whose bot shares the event loop.

    Each call runs the synchronous client's method in a worker thread (httpx's client is thread-safe), so the
    event loop keeps serving the bot while the emulator delivers to it and waits for its answer."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.sync = EmulatorClient(base_url, timeout)
        self.base_url = self.sync.base_url

    @property
    def api_url(self) -> str:
        """The ``base_url`` to give ``slack_sdk`` clients."""
        return self.sync.api_url

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        self.sync.close()

    async def __aenter__(self) -> AsyncEmulatorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    click = _in_thread(EmulatorClient.click)
    submit_view = _in_thread(EmulatorClient.submit_view)
    close_view = _in_thread(EmulatorClient.close_view)
    command = _in_thread(EmulatorClient.command)
    calls = _in_thread(EmulatorClient.calls)
    wait_for = _in_thread(EmulatorClient.wait_for)
    state = _in_thread(EmulatorClient.state)
    fault = _in_thread(EmulatorClient.fault)
    faults = _in_thread(EmulatorClient.faults)
    clear_faults = _in_thread(EmulatorClient.clear_faults)
    deliveries = _in_thread(EmulatorClient.deliveries)
    set_bot_url = _in_thread(EmulatorClient.set_bot_url)
    reset = _in_thread(EmulatorClient.reset)
