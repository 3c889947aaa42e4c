"""The Slack app manifest (deploy/slack-app-manifest.yaml) is valid and matches what the bot serves."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "slack-app-manifest.yaml"
# shared/ sits beside the clone (in CI too); the schema is Slack's published app-manifest schema.
SCHEMA_CANDIDATES = [
    ROOT.parent / "shared" / "schemas" / "slack-app-manifest.schema.json",
    Path("/work/shared/schemas/slack-app-manifest.schema.json"),
]


def load_manifest() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(MANIFEST.read_text())
    return data


def test_manifest_validates_against_slack_schema() -> None:
    schema_path = next((p for p in SCHEMA_CANDIDATES if p.is_file()), None)
    if schema_path is None:
        pytest.skip("shared/schemas/slack-app-manifest.schema.json is not beside this checkout")
    schema = json.loads(schema_path.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(load_manifest()), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_manifest_points_everything_at_the_events_endpoint() -> None:
    m = load_manifest()
    (cmd,) = m["features"]["slash_commands"]
    assert cmd["url"].endswith("/slack/events")
    assert m["settings"]["interactivity"]["is_enabled"] is True
    assert m["settings"]["interactivity"]["request_url"] == cmd["url"]
    assert m["settings"]["socket_mode_enabled"] is False  # clicks must arrive signed, for the signer


def test_manifest_command_matches_the_example_policy() -> None:
    policy = tomllib.loads((ROOT / "deploy" / "keyturn.example.toml").read_text())
    (cmd,) = load_manifest()["features"]["slash_commands"]
    assert cmd["command"] == policy.get("slack", {}).get("command", "/keyturn")


def test_manifest_requests_exactly_the_scopes_the_bot_uses() -> None:
    scopes = set(load_manifest()["oauth_config"]["scopes"]["bot"])
    assert scopes == {
        "commands",
        "chat:write",
        "chat:write.public",
        "im:write",
        "users:read",
        "users:read.email",
        "usergroups:read",
    }
