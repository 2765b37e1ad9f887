"""Redirect policy and Retry-After parsing of the shared HTTP layer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from modelfetch._net import is_loopback_url
from modelfetch.errors import HTTPStatus, InsecureRedirect
from modelfetch.sources.http import backoff_delay, redirect_target, retry_after


def test_relative_and_absolute_redirects() -> None:
    assert redirect_target("https://hub.example/a/b", "/cdn/x") == "https://hub.example/cdn/x"
    assert redirect_target("https://hub.example/a/b", "c") == "https://hub.example/a/c"
    assert redirect_target("http://h/a", "https://cdn.example/x") == "https://cdn.example/x"


@pytest.mark.parametrize("target", ["http://cdn.example/x", "ftp://cdn.example/x", "file:///etc"])
def test_downgrades_and_other_schemes_refused(target: str) -> None:
    with pytest.raises(InsecureRedirect):
        redirect_target("https://hub.example/a", target)


def test_https_to_http_allowed_on_loopback_only() -> None:
    assert redirect_target("https://127.0.0.1:1/a", "http://127.0.0.1:2/b").startswith("http:")
    assert redirect_target("https://x.example/a", "http://localhost:2/b").startswith("http:")
    assert is_loopback_url("http://[::1]:8/") and not is_loopback_url("http://10.0.0.1/")


def test_retry_after_forms() -> None:
    assert retry_after("7") == 7.0
    assert retry_after("0.5") == 0.5
    assert retry_after(None) is None and retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    value = retry_after(later)
    assert value is not None and 25 < value <= 30


def test_backoff_doubles_and_honours_retry_after_within_cap() -> None:
    plain = HTTPStatus(503, "busy")
    assert [backoff_delay(i, plain, base=1, cap=60) for i in range(4)] == [1, 2, 4, 8]
    assert backoff_delay(0, HTTPStatus(429, "slow", retry_after=9), base=1, cap=60) == 9
    assert backoff_delay(0, HTTPStatus(429, "slow", retry_after=900), base=1, cap=60) == 60
