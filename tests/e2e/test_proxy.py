"""The network in front (issue 15): the shipped nginx configuration (deploy/nginx/keyturn.conf), run by the
real nginx with a throwaway certificate in front of a real bot that has an internal listener. A CI request
and a signed Slack click go through it over TLS; metrics and health are not reachable through it, and metrics
not on the bot's main port either.

Skips, saying why, where nginx is not installed (``make bootstrap`` installs it when run as root).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests import harness
from tests.e2e.conftest import BOT_TOKEN, Stack, ci_headers, request_body
from tests.harness import Proc, free_port

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "deploy" / "nginx" / "keyturn.conf"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)

pytestmark = pytest.mark.skipif(
    NGINX is None,
    reason="nginx is not installed: `sudo apt-get install nginx` (or `make bootstrap` as root) to run "
    "the reverse-proxy test",
)


def self_signed(workdir: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and its key (PEM files in ``workdir``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyturn.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("keyturn.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = workdir / "cert.pem", workdir / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def site_config(bot_port: int, http_port: int, https_port: int, cert: Path, key: Path) -> str:
    """deploy/nginx/keyturn.conf with only its addresses and certificate paths changed; every replaced piece
    must be found exactly once, so the test and the shipped file cannot drift apart unnoticed."""
    text = SITE.read_text()
    swaps = {
        "server 127.0.0.1:8000;": f"server 127.0.0.1:{bot_port};",
        "    listen 80;\n    listen [::]:80;\n": f"    listen 127.0.0.1:{http_port};\n",
        "    listen 443 ssl;\n    listen [::]:443 ssl;\n": f"    listen 127.0.0.1:{https_port} ssl;\n",
        "/etc/letsencrypt/live/keyturn.example.com/fullchain.pem": str(cert),
        "/etc/letsencrypt/live/keyturn.example.com/privkey.pem": str(key),
    }
    for old, new in swaps.items():
        assert text.count(old) == 1, f"deploy/nginx/keyturn.conf no longer holds {old!r} once"
        text = text.replace(old, new)
    return text


def main_config(workdir: Path, site: Path) -> str:
    """A private nginx.conf around the site file: foreground, every path in ``workdir``."""
    temp = "\n".join(
        f"    {kind}_temp_path {workdir / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, workers would switch to "nobody", who cannot use the private temp directories.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}daemon off;\nworker_processes 1;\npid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'error.log'} warn;\n"
        "events { worker_connections 256; }\n"
        f"http {{\n    access_log off;\n{temp}\n    include {site};\n}}\n"
    )


def tcp_ready(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Front:
    """nginx in front of a bot with an internal listener."""

    url: str  # https://127.0.0.1:<nginx>
    http_url: str  # http://127.0.0.1:<nginx plain>
    bot_url: str  # the bot's main port, direct
    internal_url: str  # the bot's internal listener
    https: httpx.Client  # trusts the throwaway certificate
    procs: dict[str, Proc]


@pytest.fixture(scope="module")
def front(e2e_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    workdir = tmp_path_factory.mktemp("proxy")
    logs = workdir / "logs"
    bot_port, internal_port, http_port, https_port = (free_port() for _ in range(4))
    procs: dict[str, Proc] = {}
    try:
        procs["proxied-bot"] = harness.start_bot(
            logs,
            port=bot_port,
            redis_url=e2e_stack.redis.url,
            signer_socket=e2e_stack.workdir / "signer.sock",
            policy=e2e_stack.workdir / "keyturn.toml",
            emulator_url=e2e_stack.emulator.base_url,
            cwd=workdir,
            name="proxied-bot",
            env={
                "KEYTURN_SLACK_BOT_TOKEN": BOT_TOKEN,
                "KEYTURN_PUBLIC_URL": f"https://127.0.0.1:{https_port}",
                "KEYTURN_INTERNAL_PORT": str(internal_port),
            },
        )
        cert, key = self_signed(workdir)
        site = workdir / "keyturn.conf"
        site.write_text(site_config(bot_port, http_port, https_port, cert, key))
        conf = workdir / "nginx.conf"
        conf.write_text(main_config(workdir, site))
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (workdir / kind).mkdir()
        assert NGINX is not None
        argv = [NGINX, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf)]
        procs["nginx"] = harness.start_process("nginx", argv, logs, ready=lambda: tcp_ready(https_port))
    except Exception:
        for p in procs.values():
            p.stop()
        raise
    context = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(verify=context, timeout=30) as https:
        yield Front(
            f"https://127.0.0.1:{https_port}",
            f"http://127.0.0.1:{http_port}",
            f"http://127.0.0.1:{bot_port}",
            f"http://127.0.0.1:{internal_port}",
            https,
            procs,
        )
    for p in reversed(list(procs.values())):
        p.stop()


def test_a_ci_request_and_a_signed_click_go_through_tls(stack: Stack, front: Front) -> None:
    body = json.dumps(request_body(environment="staging")).encode()  # one approval, by bob
    created = front.https.post(
        front.url + "/v1/requests", content=body, headers=ci_headers("POST", "/v1/requests", body)
    )
    assert created.status_code in (200, 202), created.text
    rid = created.json()["requestId"]
    path = f"/v1/requests/{rid}"

    def status(since: int | None = None) -> dict[str, object]:
        params = {} if since is None else {"wait": 5, "since": since}
        resp = front.https.get(front.url + path, params=params, headers=ci_headers("GET", path, b""))
        assert resp.status_code == 200, resp.text
        data: dict[str, object] = resp.json()
        return data

    req = status()
    deadline = time.monotonic() + 15
    while not req.get("card"):  # long-polls through the proxy (proxy_read_timeout above ?wait=)
        assert time.monotonic() < deadline, req
        req = status(int(str(req["version"])))
    card = req["card"]
    assert isinstance(card, dict)
    # The emulator builds and signs the click exactly as Slack would; it is sent through nginx over TLS.
    delivery = stack.emulator.click("U0BOB", card["channel"], card["ts"], "approve", rid, send=False)
    click = delivery.request
    ack = front.https.post(
        front.url + "/slack/events", content=click["body"].encode(), headers=click["headers"]
    )
    assert ack.status_code == 200, ack.text
    while req["status"] != "APPROVED":
        assert time.monotonic() < deadline, req
        req = status(int(str(req["version"])))
    receipt = front.https.get(
        front.url + path + "/receipt", headers=ci_headers("GET", path + "/receipt", b"")
    )
    assert receipt.status_code == 200
    assert receipt.json()["requestId"] == rid


def test_metrics_and_health_are_not_public(front: Front) -> None:
    for path in ("/metrics", "/healthz", "/readyz", "/", "/slack/other"):
        assert front.https.get(front.url + path).status_code == 404, path
    # Slack's endpoint takes POST only; plain HTTP only redirects.
    assert front.https.get(front.url + "/slack/events").status_code == 403
    redirect = httpx.get(front.http_url + "/v1/keys", follow_redirects=False)
    assert redirect.status_code == 301
    assert redirect.headers["location"].startswith("https://")
    # On the bot itself: metrics only on the internal listener, which serves nothing else.
    assert httpx.get(front.bot_url + "/metrics").status_code == 404
    assert httpx.get(front.bot_url + "/readyz").status_code == 200  # probes may use either port
    metrics = httpx.get(front.internal_url + "/metrics")
    assert metrics.status_code == 200
    assert "keyturn_http_requests_total" in metrics.text
    ready = httpx.get(front.internal_url + "/readyz").json()
    assert (ready["status"], ready["slack"]) == ("ready", "ok")  # the token, checked at start (auth.test)
    assert ready["policySha256"] == ready["botPolicySha256"]  # signer and bot loaded the same policy
    assert httpx.get(front.internal_url + "/v1/keys").status_code == 404


def test_the_edge_bounds_bodies(front: Front) -> None:
    big = b"{" + b" " * (70 * 1024) + b"}"
    too_big = front.https.post(
        front.url + "/v1/requests", content=big, headers=ci_headers("POST", "/v1/requests", big)
    )
    assert too_big.status_code == 413  # refused by nginx before the bot sees a byte
    assert front.https.get(front.url + "/v1/keys").status_code == 200
