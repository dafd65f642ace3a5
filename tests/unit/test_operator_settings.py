"""OperatorConfig from the environment: the Deployment's knobs, refused with the variable's name."""

from __future__ import annotations

import pytest

from operators.settings import OperatorConfig


def test_defaults_without_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MOORAGE_HANDLER_THREADS", "MOORAGE_MEMBER_RETRY_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    config = OperatorConfig.from_environment()
    assert config.handler_threads == 16 and config.member_retry == 5.0


def test_handler_threads_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOORAGE_HANDLER_THREADS", "4")
    assert OperatorConfig.from_environment().handler_threads == 4


@pytest.mark.parametrize(
    ("raw", "reason"), [("many", "is not a whole number"), ("0", "must be at least 1"), ("2.5", "whole")]
)
def test_bad_handler_threads_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, raw: str, reason: str
) -> None:
    monkeypatch.setenv("MOORAGE_HANDLER_THREADS", raw)
    with pytest.raises(ValueError, match=f"MOORAGE_HANDLER_THREADS={raw!r}.*{reason}"):
        OperatorConfig.from_environment()


def test_a_bad_interval_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOORAGE_MEMBER_RETRY_SECONDS", "soon")
    with pytest.raises(ValueError, match="MOORAGE_MEMBER_RETRY_SECONDS='soon' is not a number"):
        OperatorConfig.from_environment()
