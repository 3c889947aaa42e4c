"""One error model (issue 10): an error carries a code and facts; the words for people come from one
module."""

from __future__ import annotations

import ast
import string
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

import keyturn.signer.words as words_module
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


# --- every refusal the migrated signer modules raise has words, and the facts its sentence needs ----------

ROOT = Path(__file__).resolve().parents[2]
# The modules whose raise sites say code + facts (issue 10): a bare name is a signer module, else a path
# under the repository. And how each error class takes its code and reason: (position of the code or a
# fixed code, position of the reason or None for a keyword).
MIGRATED = (
    "receipt",
    "verify",
    "keyset",
    "evidence",
    "card",
    "wire",
    "gate",
    "service",
    "oidc",
    "bot/store",
    "keys",
)
RAISERS: dict[str, tuple[int | str, int | None]] = {
    "VerificationError": (0, None),
    "EvidenceError": (0, None),
    "_malformed": ("malformed", 0),
    "_Refused": ("malformed", 0),
    "CardMismatch": ("card_mismatch", 0),
    "WireError": (0, 1),
    "GateError": (0, 1),
    "ServiceError": (0, 1),
    "OidcError": (0, 1),
    "Refused": (0, None),
    "LimitExceeded": (0, None),
    "KeyFileError": ("key_file", None),
    "_bad": ("bad_checkpoint", 0),
    "ConfigError": ("config", None),
    "AuditError": ("audit_log", None),
    "GitHubError": (0, None),
    "GitHubUnavailable": ("github_unavailable", None),
    "_error": (1, None),
    "PinError": ("error", None),
    "KeysetError": ("bad_keyset", None),
    "BadJob": ("bad_job", 0),
    "Exit": ("request_refused", 1),  # the code follows the exit status; the reasons are shared
    "StaleLeader": ("stale_leader", 0),
    "broken": ("audit_chain_broken", 0),
    "KeyturnError": ("error", None),
}


@dataclass(frozen=True)
class RaiseSite:
    where: str
    code: str | None  # None: the code is a variable (a helper raising for its caller's code)
    reason: str | None
    facts: frozenset[str] | None  # None: passed through (``facts=...`` or ``**``), not checked here
    prose: bool  # a sentence written at the raise site


def _literal(node: ast.expr | None, names: Mapping[str, str] | None = None) -> str | None:
    """A string the code spells out: a literal, a module constant, or an f-string of the gate's documents
    (``f"{what}_unavailable"``, said of a keyset)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and names:
        return names.get(node.id)
    if isinstance(node, ast.JoinedStr):
        return "".join(_literal(v) or "keyset" for v in node.values)
    return None


def raise_sites(module: str) -> list[RaiseSite]:
    """Every construction of a refusal in ``module`` (``signer/<module>.py`` or ``<module>.py``), with its
    literal code, reason and facts."""
    where = module if "/" in module else f"signer/{module}"
    path = ROOT / f"{where}.py"
    tree = ast.parse(path.read_text())
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name) and isinstance(node.value.value, str)
    }
    sites = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name not in RAISERS or (module == "receipt" and name == "_malformed" and not node.args):
            continue
        code_at, reason_at = RAISERS[name]
        keywords = {k.arg: k.value for k in node.keywords}
        code = (
            _literal(keywords["code"], constants)
            if "code" in keywords  # a class's own code, overridden at the raise site
            else code_at
            if isinstance(code_at, str)
            else _literal(node.args[0], constants)
            if node.args
            else None
        )
        reason_node = node.args[reason_at] if reason_at is not None and len(node.args) > reason_at else None
        reason_node = reason_node or keywords.get("reason")
        reason = _literal(reason_node)
        passed_through = "facts" in keywords or None in keywords
        facts = (
            None
            if passed_through
            else frozenset(k for k in keywords if k and k not in ("reason", "fields", "code"))
        )
        # A positional argument after the code (or any, for a class with a fixed code) is a sentence.
        given = reason_at is None and len(node.args) > (1 if isinstance(code_at, int) else 0)
        prose = given or (reason_node is not None and reason is None and not passed_through)
        if reason is not None and not reason.isidentifier():
            prose = True
        sites.append(RaiseSite(f"{where}.py:{node.lineno}", code, reason, facts, prose))
    return sites


def _needed_facts(code: str, reason: str | None) -> set[str] | None:
    """The facts a code's sentence (for ``reason``) fills in; None when a function renders it."""
    sentence = words_module._sentence(code)
    if isinstance(sentence, Mapping):
        sentence = sentence.get(reason)
    if not isinstance(sentence, str):
        return None
    return {field for _, field, _, _ in string.Formatter().parse(sentence) if field}


@pytest.mark.parametrize("module", MIGRATED)
def test_every_refusal_a_migrated_signer_module_raises_has_words(module: str) -> None:
    sites = raise_sites(module)
    assert sites, f"no raise sites found in {module}: is RAISERS out of date?"
    literal_codes = {s.code for s in sites if s.code is not None}
    problems = []
    for site in sites:
        if site.prose:
            problems.append(f"{site.where}: writes its own sentence; say a code, a reason and facts")
            continue
        codes = [site.code] if site.code is not None else sorted(literal_codes)
        if site.reason == words_module.RELAYED:
            continue  # another part's sentence, rendered from its own code and facts
        said = [c for c in codes if has_words(c, site.reason)]
        if not said and (site.facts is not None or site.reason is not None):
            problems.append(f"{site.where}: {site.code or codes} (reason {site.reason}) has no words")
            continue
        needed = _needed_facts(said[0], site.reason) if said and site.code is not None else None
        if needed is not None and site.facts is not None and not needed <= site.facts:
            problems.append(f"{site.where}: the sentence needs {sorted(needed - site.facts)}")
    assert not problems, "\n".join(problems)


def test_the_verifier_loads_no_words_until_it_renders_a_refusal() -> None:
    """`keyturn verify` imports signer.errors on every deploy; raising and catching a refusal loads no
    words."""
    import subprocess

    code = (
        "import sys\n"
        "from keyturn.signer.errors import VerificationError\n"
        "e = VerificationError('expired', at='2026-01-01T00:00:00Z')\n"
        "before = 'keyturn.signer.words' in sys.modules\n"
        "print(before, str(e))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False expired at 2026-01-01T00:00:00Z"
