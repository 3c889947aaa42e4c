"""Issue 14 finding 8: request-time callbackUrl checks refuse every numeric and Unicode spelling of an
internal address that docs/api.md says is refused (property test over spellings)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyturn.bot.callbacks import CallbackPolicy, CallbackRefused
from keyturn.bot.server import DEV_MODE_WARNING

INTERNAL_NETS = [
    "127.0.0.0/8",
    "10.0.0.0/8",
    "169.254.0.0/16",
    "192.168.0.0/16",
    "172.16.0.0/12",
    "0.0.0.0/8",
]
FULLWIDTH = {ord(c): ord(c) + 0xFEE0 for c in "0123456789abcdefx."}  # NFKC folds these back to ASCII
FULLWIDTH[ord(".")] = 0xFF0E


def spellings(ip: ipaddress.IPv4Address, style: int) -> str:
    """One of the spellings a C resolver accepts for ``ip``."""
    n = int(ip)
    a, b, c, d = ip.packed
    forms = [
        str(n),  # 2130706433
        hex(n),  # 0x7f000001
        f"{hex(a)}.{b}.{c}.{d}",  # 0x7f.0.0.1
        f"0{a:o}.{b}.{c}.{d}",  # 0177.0.0.1
        f"{a}.{(b << 16) | (c << 8) | d}",  # 127.1 style (a.24-bit)
        f"{a}.{b}.{(c << 8) | d}",  # a.b.16-bit
        str(ip).translate(FULLWIDTH),  # fullwidth digits and dots
        f"{ip}.",  # trailing dot
        f"[::ffff:{ip}]",  # IPv4-mapped IPv6
    ]
    return forms[style % len(forms)]


@st.composite
def internal_ipv4(draw: st.DrawFn) -> ipaddress.IPv4Address:
    net = ipaddress.IPv4Network(draw(st.sampled_from(INTERNAL_NETS)))
    offset = draw(st.integers(min_value=0, max_value=net.num_addresses - 1))
    return net.network_address + offset


@settings(max_examples=600, deadline=None)
@given(ip=internal_ipv4(), style=st.integers(min_value=0, max_value=8))
def test_every_spelling_of_an_internal_address_is_refused(ip: ipaddress.IPv4Address, style: int) -> None:
    url = f"https://{spellings(ip, style)}/hook"
    with pytest.raises(CallbackRefused):
        CallbackPolicy().check_url(url)


@pytest.mark.parametrize(
    "host",
    ["2130706433", "0x7f.0.0.1", "127.1", "0177.0.0.1", "0x7f000001", "ｌocalhost", "LOCALHOST.",
     "ｌｏｃａｌｈｏｓｔ", "api.ｌocalhost", "１２７.０.０.１", "0", "0x0", "4294967295"],
)  # fmt: skip
def test_the_reported_forms_are_refused(host: str) -> None:
    with pytest.raises(CallbackRefused):
        CallbackPolicy().check_url(f"https://{host}/hook")


@pytest.mark.parametrize("host", ["hooks.example.com", "8.8.8.8", "deadbeef.example", "1a.example"])
def test_public_names_and_addresses_still_pass(host: str) -> None:
    assert CallbackPolicy().check_url(f"https://{host}/hook")[0] == host


def test_dev_mode_warning_names_what_it_turns_off() -> None:
    assert "NOT FOR PRODUCTION" in DEV_MODE_WARNING
    assert "callbackUrl" in DEV_MODE_WARNING
    assert "placeholder" in DEV_MODE_WARNING
