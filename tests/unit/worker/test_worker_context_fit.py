"""Middle-out: a conversation too long for the context keeps its system prompts, its first user
turn and as many of its last turns as fit; whole messages leave the middle, oldest first, a tool
call with its results. Counted with a fake tokenizer of one token per word."""

from __future__ import annotations

from collections.abc import Sequence

from regio.inference.v1 import inference_pb2
from regio_worker.engine.base import ChatMessage, FinishReason, GenerationFinished
from regio_worker.engine.chat_prompt import ChatPromptBuilder, FormattedChat
from regio_worker.engine.context_fit import (
    ANSWER_ROOM,
    answer_room,
    droppable_units,
    fit_messages,
)
from regio_worker.protocol import delta_chunk, final_chunk, generation_request


def word_tokens(text: str, add_bos: bool) -> list[int]:
    return ([0] if add_bos else []) + [1 for _ in text.split()]


def chat_format(messages: list[dict[str, str]]) -> FormattedChat:
    text = " ".join(f"<{m['role']}> {m['content']}" for m in messages) + " <assistant>"
    return FormattedChat(text, has_special_tokens=False)


BUILDER = ChatPromptBuilder(chat_format, word_tokens)
FREE = "free words here"  # the activation's free system prompt: 3 words, 4 tokens with its role


def count(messages: Sequence[ChatMessage]) -> int:
    return BUILDER.count(messages, FREE)


def words(label: str, n: int) -> str:
    return " ".join([label] * n)


SYSTEM = ChatMessage("system", "be brief")
FIRST = ChatMessage("user", words("first", 5))
LAST = ChatMessage("user", words("last", 5))


def conversation(rounds: int, size: int = 10) -> list[ChatMessage]:
    """system, first user turn, `rounds` of (assistant, user), an assistant answer, last turn."""
    middle: list[ChatMessage] = []
    for number in range(rounds):
        middle.append(ChatMessage("assistant", words(f"a{number}", size)))
        middle.append(ChatMessage("user", words(f"u{number}", size)))
    return [SYSTEM, FIRST, *middle, ChatMessage("assistant", words("recent", size)), LAST]


def test_a_conversation_that_fits_is_kept_whole() -> None:
    messages = conversation(3)
    fitted = fit_messages(messages, count, budget=count(messages))
    assert fitted.messages == tuple(messages)
    assert fitted.dropped == 0
    assert fitted.prompt_tokens == count(messages)


def test_the_oldest_middle_rounds_leave_first_and_no_more_than_needed() -> None:
    messages = conversation(4)  # each middle message: 10 words + its role = 11 tokens
    budget = count(messages) - 30  # two rounds (44 tokens) must go, one (22) is not enough
    fitted = fit_messages(messages, count, budget)
    assert fitted.dropped == 4
    assert fitted.messages == (SYSTEM, FIRST, *messages[6:])
    assert fitted.prompt_tokens == count(fitted.messages) <= budget
    assert fitted.fits(budget)
    # One round fewer left out would not fit.
    assert count((SYSTEM, FIRST, *messages[4:])) > budget


def test_system_prompts_first_user_turn_and_last_turn_are_always_kept() -> None:
    middle_instruction = ChatMessage("developer", "answer in French")
    messages = conversation(3)
    messages.insert(4, middle_instruction)
    fitted = fit_messages(messages, count, budget=1)  # nothing fits: drop all that may go
    assert not fitted.fits(1)
    assert fitted.messages == (SYSTEM, FIRST, middle_instruction, LAST)
    assert fitted.dropped == len(messages) - 4


def test_when_even_system_first_and_last_cannot_fit_it_says_so() -> None:
    huge_last = ChatMessage("user", words("huge", 500))
    messages = [*conversation(2)[:-1], huge_last]
    fitted = fit_messages(messages, count, budget=200)
    assert fitted.messages == (SYSTEM, FIRST, huge_last)
    assert not fitted.fits(200)
    assert fitted.prompt_tokens == count(fitted.messages) > 200


def test_a_tool_call_and_its_results_leave_together() -> None:
    call = ChatMessage("assistant", "")  # content empty: the call itself is in tool_calls
    results = [ChatMessage("tool", words("result", 20)), ChatMessage("tool", words("more", 20))]
    messages = [SYSTEM, FIRST, call, *results, ChatMessage("user", "thanks"), LAST]
    assert droppable_units(messages) == [[2, 3, 4, 5]]
    fitted = fit_messages(messages, count, budget=count(messages) - 1)
    assert fitted.messages == (SYSTEM, FIRST, LAST)
    assert fitted.dropped == 4


def test_tool_results_of_the_current_turn_are_kept() -> None:
    call = ChatMessage("assistant", "calling")
    result = ChatMessage("tool", words("result", 10))
    messages = [*conversation(2), call, result]
    fitted = fit_messages(messages, count, budget=1)
    assert fitted.messages == (SYSTEM, FIRST, LAST, call, result)


def test_nothing_can_leave_a_conversation_of_one_user_turn() -> None:
    messages = [SYSTEM, ChatMessage("user", words("long", 100))]
    assert droppable_units(messages) == []
    fitted = fit_messages(messages, count, budget=10)
    assert fitted.messages == tuple(messages)
    assert fitted.dropped == 0
    assert not fitted.fits(10)


def test_the_search_counts_a_few_candidates_not_every_one() -> None:
    messages = conversation(200, size=2)
    counted: list[int] = []

    def counting(candidate: Sequence[ChatMessage]) -> int:
        counted.append(len(candidate))
        return count(candidate)

    fitted = fit_messages(messages, counting, budget=count(messages) // 2)
    assert fitted.fits(count(messages) // 2)
    assert len(counted) <= 12  # the whole, then a binary search over 200 rounds


def test_answer_room_is_max_tokens_up_to_a_cap_and_at_most_half_the_context() -> None:
    assert answer_room(5, 8192) == 5
    assert answer_room(2048, 8192) == ANSWER_ROOM
    assert answer_room(None, 8192) == ANSWER_ROOM
    assert answer_room(2048, 256) == 128


def test_opting_out_travels_to_the_engine_and_the_count_back_to_the_gateway() -> None:
    on = generation_request(inference_pb2.InferenceRequest(transaction_id="t"))
    off = generation_request(inference_pb2.InferenceRequest(transaction_id="t", no_middle_out=True))
    assert on.middle_out and not off.middle_out
    assert delta_chunk("t", 1, "hi", dropped_messages=3).dropped_messages == 3
    assert delta_chunk("t", 2, "there").dropped_messages == 0
    finished = GenerationFinished(FinishReason.STOP)
    assert final_chunk("t", 3, finished, dropped_messages=3).dropped_messages == 3
