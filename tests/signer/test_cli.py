"""The ``keyturn`` trust-core commands verify (in subprocesses), receipt, keygen, keys, audit."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyturn.signer.audit import AuditLog
from keyturn.signer.cli import audit_main, keygen_main, keys_main, receipt_main, verify_main
from tests.vectors import load

ROOT = Path(__file__).resolve().parents[2]
VALID = load.vector("valid_basic")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GITHUB_WORKSPACE", "CI_PROJECT_DIR")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _verify_args(vec: load.LoadedVector, receipt: str, keys: str) -> list[str]:
    args = [
        "verify", receipt, "--keys", keys, "--repo", vec.scope.repo, "--sha", vec.scope.sha,
        "--env", vec.scope.environment, "--workflow", vec.scope.workflow, "--at", vec.at,
    ]  # fmt: skip
    args += ["--require-oidc"] if vec.require_oidc else []
    return [*args, "--allow-dev-keys"] if vec.allow_dev_keys else args


def keyturn(
    args: list[str], cwd: Path, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``keyturn ARGS`` as CI would: a fresh Python process."""
    proc = subprocess.run(
        [sys.executable, "-m", "keyturn", *args],
        input=stdin,
        capture_output=True,
        cwd=cwd,
        env=env or _env(),
        timeout=60,
    )
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


# Runs each vector's argv through the real ``keyturn`` entry point inside one fresh interpreter (one process
# per vector would cost seconds), recording exit code, stdout and stderr per vector.
_DRIVER = """
import contextlib, io, json, sys
import keyturn.cli
results = []
for argv in json.loads(sys.stdin.read()):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = keyturn.cli.main(argv)
    results.append([rc, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def _check_outcome(vec: load.LoadedVector, rc: int, out: str, err: str) -> str | None:
    if vec.code is None:
        ok = rc == 0 and out.startswith("OK req_") and out.count("\n") == 1 and err == ""
    else:
        ok = rc == 1 and err.startswith(f"REJECTED {vec.code}: ") and err.count("\n") == 1 and out == ""
        # The CI log says what was wrong in words: never the bare code again, never an unfilled template.
        sentence = err.removeprefix(f"REJECTED {vec.code}: ").strip()
        ok = ok and sentence not in ("", vec.code, vec.code.partition(":")[0]) and "{" not in sentence
    return None if ok else f"{vec.name}: rc={rc} out={out!r} err={err[-300:]!r}"


def test_every_vector_through_the_cli(tmp_path: Path) -> None:
    """Every vector through the ``keyturn verify`` command: exit code and output exactly as documented."""
    vectors = load.vectors()
    argvs = [_verify_args(v, str(v.path), str(load.keyset_path())) for v in vectors]
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER],
        input=json.dumps(argvs),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    failures = [f for v, r in zip(vectors, results, strict=True) if (f := _check_outcome(v, *r))]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    "name", ["valid_basic", "valid_dsse_envelope", "status_edited_after_signing", "changed_commit", "expired"]
)
def test_vectors_in_their_own_keyturn_process(tmp_path: Path, name: str) -> None:
    vec = load.vector(name)
    p = keyturn(_verify_args(vec, str(vec.path), str(load.keyset_path())), cwd=tmp_path)
    assert _check_outcome(vec, p.returncode, p.stdout, p.stderr) is None


def test_verify_success_line_and_json(tmp_path: Path) -> None:
    p = keyturn(_verify_args(VALID, str(VALID.path), str(load.keyset_path())), cwd=tmp_path)
    assert p.returncode == 0
    assert p.stdout == (
        "OK req_01JV7Q4M4T7Z9X4P9G8N2D6R1A approved by oncall@example.com expires 2026-02-28T18:00:00Z\n"
    )
    p = keyturn(
        [*_verify_args(VALID, "-", str(load.keyset_path())), "--json"], cwd=tmp_path, stdin=VALID.data
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["ok"] is True
    assert out["requestId"] == "req_01JV7Q4M4T7Z9X4P9G8N2D6R1A"
    assert out["scope"]["sha"] == VALID.scope.sha


def test_verify_rejection_json(tmp_path: Path) -> None:
    vec = load.vector("signed_denied_accepted")
    p = keyturn([*_verify_args(vec, str(vec.path), str(load.keyset_path())), "--json"], cwd=tmp_path)
    assert p.returncode == 1
    assert p.stderr.startswith("REJECTED not_approved: ")
    assert json.loads(p.stdout) == {"ok": False, "code": "not_approved", "detail": "status is DENIED"}


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["verify"],
        ["verify", "r.json", "--keys", "k.json", "--repo", "a/b", "--sha", "x", "--env", "p"],
        ["verify", "r.json", "--keys", "k", "--repo", "a", "--sha", "x", "--env", "p", "--workflow", "w",
         "--at", "yesterday"],
        ["verify", "r.json", "--keys", "http://keys.example.com/v1/keys", "--repo", "a", "--sha", "x",
         "--env", "p", "--workflow", "w"],
        ["verify", "r.json", "--keys", "ftp://keys.example.com/k", "--repo", "a", "--sha", "x",
         "--env", "p", "--workflow", "w"],
    ],
)  # fmt: skip
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    p = keyturn(args, cwd=tmp_path)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr


def test_verify_refuses_a_keyset_from_the_checkout_being_deployed(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    keys = checkout / "keys.json"
    keys.write_bytes(load.keyset_path().read_bytes())
    args = _verify_args(VALID, str(VALID.path), "keys.json")
    p = keyturn(args, cwd=checkout)
    assert p.returncode == 1
    assert p.stderr.startswith("REJECTED untrusted_keyset: ")
    env = {**_env(), "GITHUB_WORKSPACE": str(checkout)}
    p = keyturn(_verify_args(VALID, str(VALID.path), str(keys)), cwd=tmp_path, env=env)
    assert p.stderr.startswith("REJECTED untrusted_keyset: ")
    p = keyturn([*args, "--trust-keys-in-checkout"], cwd=checkout)
    assert p.returncode == 0, p.stderr


@pytest.fixture
def keys_server() -> Iterator[str]:
    """A loopback HTTP server: /keys serves the vectors' JWKS, /redirect points to a plain-http host."""
    jwks = load.keyset_path().read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/keys":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(jwks)
            elif self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "http://keys.example.com/keys")
                self.end_headers()
            elif self.path == "/huge":
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b" " * (1024 * 1024 + 10))
            else:
                self.send_response(404)
                self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("path", "rc", "prefix"),
    [
        ("/keys", 0, ""),
        ("/missing", 1, "REJECTED keyset_unavailable: keyset URL answered HTTP 404"),
        ("/redirect", 1, "REJECTED untrusted_keyset: refusing redirect"),
        ("/huge", 1, "REJECTED bad_keyset: keyset larger than"),
    ],
)
def test_verify_fetches_keys_from_a_url(
    keys_server: str, tmp_path: Path, path: str, rc: int, prefix: str
) -> None:
    p = keyturn(_verify_args(VALID, str(VALID.path), keys_server + path), cwd=tmp_path)
    assert p.returncode == rc, p.stderr
    assert p.stderr.startswith(prefix)


@pytest.mark.parametrize(
    ("keyset", "receipt", "prefix"),
    [
        (b"not json", None, "REJECTED bad_keyset: "),
        (b'{"keys": []}', None, "REJECTED bad_keyset: "),
        (None, "missing.json", "REJECTED unreadable: "),
    ],
)
def test_verify_refuses_unusable_inputs(
    tmp_path: Path, keyset: bytes | None, receipt: str | None, prefix: str
) -> None:
    keys = load.keyset_path()
    if keyset is not None:
        keys = tmp_path / "bad.json"
        keys.write_bytes(keyset)
    p = keyturn(_verify_args(VALID, receipt or str(VALID.path), str(keys)), cwd=tmp_path)
    assert p.returncode == 1
    assert p.stderr.startswith(prefix)


def test_verify_import_path_stays_light(tmp_path: Path) -> None:
    code = (
        "import sys, keyturn.cli\n"
        f"rc = keyturn.cli.main({_verify_args(VALID, str(VALID.path), str(load.keyset_path()))!r})\n"
        "heavy = {'pydantic', 'slack_sdk', 'slack_bolt', 'redis', 'aiohttp', 'starlette', 'uvicorn',\n"
        "         'apscheduler', 'ulid', 'ssl', 'http', 'email', 'asyncio'}\n"
        "words = 'keyturn.signer.words' in sys.modules\n"
        "print(rc, sorted({m.split('.')[0] for m in sys.modules} & heavy), words)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=60
    )
    # An accepted receipt renders no refusal, so the words module is not even loaded.
    assert p.stdout.strip().endswith("0 [] False"), p.stdout + p.stderr


# --- in-process commands ----------------------------------------------------------------------


def test_keygen_keys_and_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "signer-keys.json"
    assert keygen_main(["--out", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    kid = out[0].removeprefix("kid: ")
    assert json.loads(out[1])["kid"] == kid
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keygen_main(["--out", str(path)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err

    assert keys_main(["--key-file", str(path), "rotate"]) == 0
    new_kid = capsys.readouterr().out.strip().removeprefix("active kid: ")
    assert new_kid != kid
    assert keys_main(["--key-file", str(path), "revoke", kid]) == 0
    capsys.readouterr()
    out_file = tmp_path / "jwks.json"
    assert keys_main(["--key-file", str(path), "export", "--out", str(out_file)]) == 0
    statuses = {k["kid"]: k["status"] for k in json.loads(out_file.read_text())["keys"]}
    assert statuses == {kid: "revoked", new_kid: "active"}
    assert '"d"' not in out_file.read_text()

    os.chmod(path, 0o644)
    assert keys_main(["--key-file", str(path), "export"]) == 1
    assert "chmod 600" in capsys.readouterr().err


def test_keys_requires_a_key_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KEYTURN_SIGNER_KEYSET", raising=False)
    assert keys_main(["export"]) == 2
    assert "--key-file" in capsys.readouterr().err


def test_receipt_dsse_conversion_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert receipt_main(["to-dsse", str(VALID.path)]) == 0
    env = capsys.readouterr().out
    (tmp_path / "env.json").write_text(env)
    assert json.loads(env)["payloadType"] == "application/vnd.keyturn.receipt+json"
    assert receipt_main(["from-dsse", str(tmp_path / "env.json")]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(VALID.data)
    assert receipt_main(["to-dsse", str(tmp_path / "env.json")]) == 1
    assert "already a DSSE envelope" in capsys.readouterr().err


def test_audit_verify_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog.open(path) as log:
        for i in range(3):
            log.append({"requestId": f"req_{i}"})
    assert audit_main(["verify", str(path)]) == 0
    out = capsys.readouterr()
    assert (
        out.out.strip()
        == f"OK 3 entries, head {hashlib.sha256(path.read_bytes().splitlines()[2]).hexdigest()}"
    )
    assert "no --checkpoint given" in out.err  # the chain alone is not an anchor: say so
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[1].replace(b"req_1", b"req_9") + lines[2])
    assert audit_main(["verify", str(path)]) == 1
    assert capsys.readouterr().err.startswith("REJECTED audit_chain_broken: entry seq 3 (line 3)")
    assert audit_main(["verify", str(tmp_path / "missing.jsonl")]) == 1
    assert capsys.readouterr().err.startswith("REJECTED audit_unreadable: ")
    assert audit_main(["verify", str(path), "--checkpoint", str(path)]) == 2  # no --keys to verify it with
    assert "--checkpoint needs --keys" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("changed_commit", "receipt is for sha '"),
        ("expired", "expired at 20"),
        ("signed_denied_accepted", "status is DENIED"),
        ("duplicate_status_member", "duplicate member name 'status'"),
        ("unknown_scope_member", "scope has unknown member "),
        ("alg_none", "signature algorithm 'none' is not Ed25519"),
        ("signature_truncated", "signature.value is not a 64-byte Ed25519 signature"),
        ("issued_before_key_created", "was not valid at 20"),
        ("requester_not_proven", "the requester was proven by an OIDC token"),
    ],
)
def test_verify_refusals_name_what_was_wrong(
    name: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sentences come from the words module now (issue 10); the CI log still names the wrong thing."""
    vec = load.vector(name)
    args = _verify_args(vec, str(vec.path), str(load.keyset_path()))[1:]
    assert verify_main([*args, "--trust-keys-in-checkout"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"REJECTED {vec.code}: ")
    assert says in err, err


def test_verify_main_in_process_never_raises(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert verify_main(["--help"]) == 0
    assert verify_main([]) == 2
    capsys.readouterr()
    bad = tmp_path / "r.json"
    bad.write_bytes(b"\x00" * 10)
    args = _verify_args(VALID, str(bad), str(load.keyset_path()))[1:]
    assert verify_main([*args, "--trust-keys-in-checkout"]) == 1
    assert capsys.readouterr().err.startswith("REJECTED malformed: ")


def test_a_base_command_missing_its_own_library_says_reinstall_not_an_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broken base install (PyNaCl gone) fails closed, names the library, and asks for a reinstall.

    No extra brings the verifier's libraries, so pointing at ``keyturn[all]`` would send an operator the
    wrong way while the gate stays shut.
    """
    import importlib

    import keyturn.cli

    real_import = importlib.import_module

    def without_nacl(name: str, package: str | None = None) -> object:
        if name == "keyturn.signer.cli":
            raise ModuleNotFoundError("No module named 'nacl'", name="nacl")
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", without_nacl)
    rc = keyturn.cli.main(["verify", "r.json", "--keys", "k.json"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "'nacl' is not installed" in err
    assert "pip install --force-reinstall keyturn" in err
    assert "keyturn[" not in err
