"""Keyturn's error types: every refusal is an exception carrying a stable ``code`` and a few ``facts``.

Callers branch on ``code`` (or the class), never on the message, which is for humans and may change. A raise
site names the code and the facts (``KeyturnError(code="key_mismatch", what="receipt")``); the sentence is
rendered from them by :mod:`keyturn.signer.words`, the one module holding the words. Facts and messages
never contain secrets or private key material.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from keyturn.signer.words import Fact


class KeyturnError(Exception):
    """Base of every Keyturn refusal: ``e.code`` is the stable code, ``e.facts`` the values it concerns, and
    ``str(e)`` / ``e.message`` the sentence for people (rendered by :func:`keyturn.signer.words.words`).

    ``message`` is the pre-migration way: a raise site that still writes its own prose passes it, and it is
    used as given. New raise sites pass none and let the words module say it.
    """

    code: str = "error"

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        facts: Mapping[str, Fact] | None = None,
        **more: Fact,
    ) -> None:
        if code is not None:
            self.code = code
        self.facts: dict[str, Fact] = {**(facts or {}), **more}
        # A given message is the fallback for raise sites not migrated yet: used as given. Otherwise the
        # sentence is rendered when first read, so raising (and catching) a refusal never loads the words:
        # `keyturn verify` imports this module on every deploy and renders only the refusal it prints.
        self._message = message
        super().__init__(self.code, self.facts)

    @property
    def message(self) -> str:
        """The sentence for people: the given one, else the words module's for ``code`` and ``facts``."""
        if self._message is None:
            from keyturn.signer.words import words  # here, not at the top: see __init__

            self._message = words(self.code, self.facts)
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        self._message = value

    def __str__(self) -> str:
        return self.message


class VerificationError(KeyturnError):
    """A receipt was refused. The code names the failed check (``expired``, ``scope_mismatch:sha``, ...)."""

    code = "verification_failed"

    def __init__(self, code: str, message: str | None = None, /, **facts: Fact) -> None:
        super().__init__(message, code=code, facts=facts)


class KeyFileError(KeyturnError):
    """A private key file is missing, unreadable, too permissive or malformed."""

    code = "key_file"


class KeysetError(KeyturnError):
    """A public keyset (JWKS) is malformed or unusable for verification."""

    code = "bad_keyset"


class AuditError(KeyturnError):
    """The audit log cannot be written (code ``audit_log``), or checking it found a problem.

    Codes of the checks (docs/security.md, "Anchoring the audit log"): ``audit_chain_broken`` (an entry does
    not link to the one before it), ``audit_torn_tail`` (the last line has no newline: a torn write),
    ``audit_truncated`` (fewer entries than a signed checkpoint anchors), ``audit_rewritten`` (an anchored
    entry differs from the one the checkpoint signed), ``audit_unreadable``. ``seq`` and ``line`` (1-based)
    name the entry concerned, when there is one.
    """

    code = "audit_log"

    def __init__(
        self,
        message: str | None = None,
        *,
        seq: int | None = None,
        line: int | None = None,
        code: str | None = None,
        facts: Mapping[str, Fact] | None = None,
        **more: Fact,
    ) -> None:
        # ``seq`` and ``line`` are facts too: the sentences name the entry.
        where = {k: v for k, v in (("seq", seq), ("line", line)) if v is not None}
        super().__init__(message, code=code, facts={**where, **(facts or {}), **more})
        self.seq = seq
        self.line = line
        self.anchor: object | None = None  # the checkpoint the log failed, for audit_truncated/_rewritten
