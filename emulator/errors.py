"""Errors of the Slack emulator, each with a stable ``code``.

Two families, because the emulator speaks two protocols: :class:`SlackError` is what the emulated Slack Web
API answers (``{"ok": false, "error": code}``, HTTP 200 like Slack), and :class:`EmulatorError` is a
refusal of the emulator's own control API under ``/_emulator/`` (a 4xx with ``{"ok": false, "error": code}``).
"""

from __future__ import annotations

from typing import Any


class SlackError(Exception):
    """A Slack Web API error: becomes ``{"ok": false, "error": code, ...}``."""

    def __init__(self, code: str, messages: list[str] | None = None, **extra: Any) -> None:
        super().__init__(code)
        self.code = code
        self.messages = list(messages or [])
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The JSON body Slack would answer with."""
        out: dict[str, Any] = {"ok": False, "error": self.code, **self.extra}
        if self.messages:
            out["response_metadata"] = {"messages": list(self.messages)}
        return out


class EmulatorError(Exception):
    """A refusal of the emulator's control API (``/_emulator/...``)."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status

    def body(self) -> dict[str, Any]:
        """The JSON body of the refusal."""
        return {"ok": False, "error": self.code, "message": self.message}


class WorkspaceError(Exception):
    """The workspace TOML file is missing, malformed or inconsistent."""

    code = "invalid_workspace"
