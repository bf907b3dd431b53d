"""Which finished JSON-mode answers are charged: valid JSON, and anything cancelled or failed
(what was delivered is billed as usual); a finished answer that is not valid JSON is not."""

from __future__ import annotations

import pytest

from regio_worker.engine.base import FinishReason, GenerationFinished, Usage
from regio_worker.engine.json_output import INVALID_JSON, checked_json_output
from regio_worker.protocol import is_billable

USAGE = Usage(prompt_tokens=10, completion_tokens=3)


@pytest.mark.parametrize(
    ("reason", "text", "billable"),
    [
        (FinishReason.STOP, '{"a": 1}', True),
        (FinishReason.LENGTH, '{"a": 1}', True),
        (FinishReason.LENGTH, '{"a', False),
        (FinishReason.STOP, "not json", False),
        (FinishReason.CANCELLED, '{"a', True),
    ],
)
def test_only_finished_answers_that_are_not_json_go_unbilled(
    reason: FinishReason, text: str, billable: bool
) -> None:
    checked = checked_json_output(GenerationFinished(reason, USAGE), text)
    assert is_billable(checked) is billable
    assert checked.unbilled_reason == ("" if billable else INVALID_JSON)
