"""The shipped deployment files agree with each other (issue 15): compose puts nginx in front with the tested
site file, publishes nothing but the proxy's ports, and keeps metrics on the bot's internal listener."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from keyturn.bot.config import Settings

ROOT = Path(__file__).resolve().parent.parent
yaml = pytest.importorskip("yaml", reason="PyYAML reads deploy/compose.yaml")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    return data


def test_compose_fronts_the_bot_with_the_tested_nginx_site() -> None:
    services = compose()["services"]
    proxy, bot = services["proxy"], services["bot"]
    assert proxy["network_mode"] == "service:bot"  # so the site file's upstream 127.0.0.1:8000 is the bot
    assert any(v.startswith("./nginx/keyturn.conf:") for v in proxy["volumes"])
    assert sorted(bot["ports"]) == ["443:443", "80:80"]  # the proxy's, nothing of the bot's own
    env = bot["environment"]
    assert env["KEYTURN_HOST"] == "127.0.0.1"
    assert env["KEYTURN_INTERNAL_PORT"] == "9091"
    assert "ports" not in services["signer"]
    assert services["signer"]["network_mode"] == "none"
    site = (ROOT / "deploy" / "nginx" / "keyturn.conf").read_text()
    assert f"server 127.0.0.1:{env['KEYTURN_PORT']};" in site


def test_the_internal_listener_needs_its_own_port() -> None:
    with pytest.raises(ValidationError, match="KEYTURN_INTERNAL_PORT must differ"):
        Settings(slack_bot_token="xoxb-1-real-token", port=8000, internal_port=8000)
    assert Settings(slack_bot_token="xoxb-1-real-token", port=8000, internal_port=9091).internal_port == 9091
