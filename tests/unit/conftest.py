"""Fixtures shared by the gateway unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import responses

from tests.gateways import Sleeps


@pytest.fixture
def http() -> Iterator[responses.RequestsMock]:
    """Stripe's HTTP API played by ``responses``: every call must have been registered,
    and every registered answer must be asked for."""
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def sleeps() -> Sleeps:
    """The waits the gateway's retry policy asked for."""
    return Sleeps()
