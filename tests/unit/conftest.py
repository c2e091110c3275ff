"""Fixtures of the unit tests; what every group shares is in the harness package (tests/harness)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def envoy_validate():
    from vmesh import envoy

    binary = envoy.binary()

    def check(config: str) -> None:
        ok, message = envoy.validate(config, binary, stub_missing=True)
        assert ok, message

    return check
