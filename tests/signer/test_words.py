"""One error model (issue 10): an error carries a code and facts; the words for people come from one
module."""

from __future__ import annotations

from keyturn.signer.errors import KeyturnError, VerificationError
from keyturn.signer.words import Fact, field_words, has_words, words


def test_an_error_says_its_code_and_facts_in_the_words_of_the_module() -> None:
    exc = KeyturnError(code="key_mismatch", what="receipt")
    assert exc.code == "key_mismatch"
    assert exc.facts == {"what": "receipt"}
    assert str(exc) == exc.message == "receipt names a key other than the active key"


def test_a_raise_site_not_migrated_keeps_its_own_sentence() -> None:
    exc = VerificationError("expired", "the receipt expired at 12:00")
    assert (exc.code, str(exc), exc.facts) == ("expired", "the receipt expired at 12:00", {})


def test_a_sentence_branches_on_its_facts() -> None:
    assert (
        words("not_pending", {"status": "approved"})
        == "This request is already approved; nothing was changed."
    )
    assert words("not_pending", {"status": "expired"}) == "This request is expired; nothing was changed."
    assert "already received" in words("replayed_request")
    assert "(create of req_1)" in words("replayed_request", {"action": "create", "request_id": "req_1"})


def test_words_never_fail_a_refusal() -> None:
    """A missing fact or an unknown code still yields text (the code), never an exception."""
    assert words("not_an_approver") == "not_an_approver"
    assert words("no_such_code_yet", {"x": 1}) == "no_such_code_yet"
    assert not has_words("no_such_code_yet")
    assert str(KeyturnError(code="no_such_code_yet")) == "no_such_code_yet"


def test_field_sentences_use_the_same_facts() -> None:
    facts: dict[str, Fact] = {"name": "wait", "low": 0, "high": 60}
    assert words("invalid_parameter", facts) == "wait must be an integer from 0 to 60"
    assert field_words("invalid_parameter", facts) == "must be an integer from 0 to 60"


def test_the_words_module_is_standard_library_only() -> None:
    """The base install and the signer load it: nothing but the standard library may come in."""
    import ast
    import sys
    from pathlib import Path

    import keyturn.signer.words as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {
        (node.module or "").split(".")[0] if isinstance(node, ast.ImportFrom) else alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}
