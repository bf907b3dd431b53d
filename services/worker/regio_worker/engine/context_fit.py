"""Middle-out: which messages of a conversation too long for the context are left out.

Kept always: every system (or developer) message, the conversation up to and including the
first user message, and the current turn (the last user message and whatever follows it, e.g.
tool results). Left out: whole messages from the middle, oldest first, until the prompt leaves
the answer its room. Tool results stay with the assistant message before them (its tool call),
so a call and its results are dropped together or not at all.

The caller counts tokens (with the chat format and the free system prompt); the search builds
O(log n) candidate prompts, not one per message."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from regio_worker.engine.base import ChatMessage
from regio_worker.engine.chat_prompt import SYSTEM_ROLES

CountTokens = Callable[[Sequence[ChatMessage]], int]  # prompt tokens of these messages
ASSISTANT_ROLE = "assistant"
TOOL_ROLE = "tool"
USER_ROLE = "user"
# Tokens a prompt leaves for the answer at least (fewer when max_tokens asks for fewer).
ANSWER_ROOM = 256


@dataclass(frozen=True)
class FittedMessages:
    messages: tuple[ChatMessage, ...]
    dropped: int  # messages left out of the middle
    prompt_tokens: int  # as counted for `messages`

    def fits(self, budget: int) -> bool:
        return self.prompt_tokens <= budget


def fit_messages(
    messages: Sequence[ChatMessage], count_tokens: CountTokens, budget: int
) -> FittedMessages:
    """The conversation with the fewest middle messages left out whose prompt has at most
    `budget` tokens; when none does, the one with every droppable message left out (check
    `fits`)."""
    whole = tuple(messages)
    whole_tokens = count_tokens(whole)
    if whole_tokens <= budget:
        return FittedMessages(whole, 0, whole_tokens)
    units = droppable_units(whole)
    best: FittedMessages | None = None
    low, high = 1, len(units)  # how many of the oldest units to leave out
    while low <= high:
        middle = (low + high) // 2
        candidate = _without(whole, units[:middle], count_tokens)
        if candidate.fits(budget):
            best, high = candidate, middle - 1
        else:
            low = middle + 1
    if best is not None:
        return best
    if not units:
        return FittedMessages(whole, 0, whole_tokens)
    return _without(whole, units, count_tokens)


def droppable_units(messages: Sequence[ChatMessage]) -> list[list[int]]:
    """Indices of the middle messages that may be left out, oldest first, in groups left out
    together: an assistant message with what follows it up to the next assistant message (its
    tool results, the user's reply). Dropping such rounds keeps user and assistant turns
    alternating, which some chat templates insist on."""
    users = [index for index, message in enumerate(messages) if message.role == USER_ROLE]
    head_end = users[0] + 1 if users else 0  # the first user turn and what precedes it
    tail_start = users[-1] if users else _last_unit_start(messages)
    units: list[list[int]] = []
    for index in range(head_end, tail_start):
        role = messages[index].role
        if role in SYSTEM_ROLES:
            continue  # instructions are kept wherever they stand
        if role == ASSISTANT_ROLE or not units:
            units.append([index])
        else:
            units[-1].append(index)
    return units


def _last_unit_start(messages: Sequence[ChatMessage]) -> int:
    start = len(messages) - 1
    while start > 0 and messages[start].role == TOOL_ROLE:
        start -= 1
    return max(start, 0)


def _without(
    messages: tuple[ChatMessage, ...], units: Sequence[list[int]], count_tokens: CountTokens
) -> FittedMessages:
    left_out = {index for unit in units for index in unit}
    kept = tuple(message for index, message in enumerate(messages) if index not in left_out)
    return FittedMessages(kept, len(left_out), count_tokens(kept))


def answer_room(max_tokens: int | None, n_ctx: int) -> int:
    """The room a prompt must leave for the answer before middle-out compresses it: the
    requested max_tokens up to ANSWER_ROOM (a longer answer still gets whatever room is
    left), never more than half the context."""
    wanted = ANSWER_ROOM if max_tokens is None else min(max_tokens, ANSWER_ROOM)
    return max(1, min(wanted, n_ctx // 2))
