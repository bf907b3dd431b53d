"""Chat messages to prompt tokens, with the activation's free system prompt prepended and its
tokens counted apart (reported, never billed).

Tool calls and results travel as text turns every chat format accepts (tools/markup.py): an
assistant's calls follow its text; `tool` results become user turns, a run of them (and a user
message right after it) one turn, so that roles keep alternating for templates that insist."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from regio_worker.engine.base import ChatMessage
from regio_worker.engine.tools.markup import assistant_text, tool_response

SYSTEM_ROLES = frozenset({"system", "developer"})  # "developer" is OpenAI's newer name
TOOL_ROLE = "tool"
USER_ROLE = "user"
SYSTEM_PROBE = "regio-system-probe-4f1c9a"
PARAGRAPH = "\n\n"


@dataclass(frozen=True)
class FormattedChat:
    text: str
    has_special_tokens: bool  # the text already holds BOS etc.: tokenize without adding BOS
    stop_strings: tuple[str, ...] = ()


@dataclass(frozen=True)
class PromptTokens:
    tokens: list[int]
    free_prompt_tokens: int
    stop_strings: tuple[str, ...]

    @property
    def billable_tokens(self) -> int:
        return len(self.tokens) - self.free_prompt_tokens


FormatChat = Callable[[list[dict[str, str]]], FormattedChat]
Tokenize = Callable[[str, bool], list[int]]  # (text, add_bos) -> tokens, special tokens parsed


class ChatPromptBuilder:
    def __init__(self, format_chat: FormatChat, tokenize: Tokenize) -> None:
        self._format_chat = format_chat
        self._tokenize = tokenize
        self.keeps_system_text = self._format_keeps_system_text()

    def build(
        self,
        messages: Sequence[ChatMessage],
        free_system_prompt: str = "",
        tools_section: str = "",
    ) -> PromptTokens:
        """`tools_section`: the text describing the request's tools (tools/markup.py), last in
        the system text; billable like the messages."""
        formatted = self._format(messages, free_system_prompt, tools_section)
        tokens = self._tokens(formatted)
        free_tokens = 0
        if free_system_prompt:
            # Counted as the difference, so the free prompt's share of the chat format's
            # separators is free too and billing sees exactly what the user sent.
            without_free = self._tokens(self._format(messages, "", tools_section))
            free_tokens = min(max(len(tokens) - len(without_free), 0), len(tokens))
        return PromptTokens(tokens, free_tokens, formatted.stop_strings)

    def count(
        self,
        messages: Sequence[ChatMessage],
        free_system_prompt: str = "",
        tools_section: str = "",
    ) -> int:
        """Tokens of the whole prompt, the free system prompt's included."""
        return len(self._tokens(self._format(messages, free_system_prompt, tools_section)))

    def _tokens(self, formatted: FormattedChat) -> list[int]:
        return self._tokenize(formatted.text, not formatted.has_special_tokens)

    def _format(
        self, messages: Sequence[ChatMessage], free_system_prompt: str, tools_section: str
    ) -> FormattedChat:
        return self._format_chat(self._normalized(messages, free_system_prompt, tools_section))

    def _normalized(
        self, messages: Sequence[ChatMessage], free_system_prompt: str, tools_section: str = ""
    ) -> list[dict[str, str]]:
        """One leading system message (free prompt first, tools last), or, for chat formats
        without a system role, the system text at the start of the first user turn.

        Most formats keep only the first system message, and some (Gemma) drop it: merging
        keeps every instruction; folding is what Gemma's own chat template does."""
        system_parts = [free_system_prompt] if free_system_prompt else []
        system_parts += [m.content for m in messages if m.role in SYSTEM_ROLES and m.content]
        system_parts += [tools_section] if tools_section else []
        turns = _conversation_turns([m for m in messages if m.role not in SYSTEM_ROLES])
        if not system_parts:
            return turns
        system_text = PARAGRAPH.join(system_parts)
        if self.keeps_system_text:
            return [{"role": "system", "content": system_text}, *turns]
        return _fold_into_first_user_turn(system_text, turns)

    def _format_keeps_system_text(self) -> bool:
        probe = [{"role": "system", "content": SYSTEM_PROBE}, {"role": "user", "content": "hi"}]
        try:
            return SYSTEM_PROBE in self._format_chat(probe).text
        except ValueError:  # a template may raise_exception() on a system role
            return False


def _conversation_turns(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """The turns of the conversation, tool calls and results written as text."""
    names = {call.id: call.name for message in messages for call in message.tool_calls}
    turns: list[dict[str, str]] = []
    after_results = False  # the last turn holds tool results
    for message in messages:
        if message.role == TOOL_ROLE:
            name = message.name or names.get(message.tool_call_id, "")
            text, separator = tool_response(message.content, name), "\n"
        else:
            text = assistant_text(message) if message.tool_calls else message.content
            separator = PARAGRAPH
        if after_results and message.role in (TOOL_ROLE, USER_ROLE):
            turns[-1]["content"] += separator + text
        else:
            role = USER_ROLE if message.role == TOOL_ROLE else message.role
            turns.append({"role": role, "content": text})
        after_results = message.role == TOOL_ROLE
    return turns


def _fold_into_first_user_turn(
    system_text: str, turns: list[dict[str, str]]
) -> list[dict[str, str]]:
    for index, turn in enumerate(turns):
        if turn["role"] == "user":
            folded = {"role": "user", "content": system_text + PARAGRAPH + turn["content"]}
            return [*turns[:index], folded, *turns[index + 1 :]]
    return [{"role": "user", "content": system_text}, *turns]
