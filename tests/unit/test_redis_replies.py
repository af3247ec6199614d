from __future__ import annotations

import pytest
from redis.exceptions import NoScriptError, ResponseError

from orchestrator.core.redis_replies import error_code, text


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ResponseError("BUSYGROUP Consumer Group name already exists"), "BUSYGROUP"),
        (ResponseError("NOGROUP No such key 'q' or consumer group 'g'"), "NOGROUP"),
        (NoScriptError("No matching script.", status_code="NOSCRIPT"), "NOSCRIPT"),
        (ResponseError(), ""),
    ],
)
def test_error_code_is_the_first_word_of_the_reply(exc: ResponseError, code: str) -> None:
    assert error_code(exc) == code


def test_a_message_mentioning_a_code_is_not_that_code() -> None:
    assert error_code(ResponseError("ERR user script mentions NOGROUP")) == "ERR"


@pytest.mark.parametrize(("value", "expected"), [(b"x", "x"), ("x", "x"), (3, "3")])
def test_text(value: object, expected: str) -> None:
    assert text(value) == expected
