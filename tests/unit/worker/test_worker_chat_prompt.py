"""Prompt building: the free system prompt is prepended and counted apart; chat formats without
a system role get the system text at the start of the first user turn."""

from __future__ import annotations

from regio_worker.engine.base import ChatMessage
from regio_worker.engine.chat_prompt import ChatPromptBuilder, FormattedChat


def word_tokens(text: str, add_bos: bool) -> list[int]:
    """One token per word (and one for BOS): enough to check the arithmetic."""
    return ([0] if add_bos else []) + [1 + sum(word.encode()) % 997 for word in text.split()]


def with_system_role(messages: list[dict[str, str]]) -> FormattedChat:
    text = " ".join(f"<{m['role']}> {m['content']}" for m in messages) + " <assistant>"
    return FormattedChat(text, has_special_tokens=False, stop_strings=("<end>",))


def without_system_role(messages: list[dict[str, str]]) -> FormattedChat:
    """Like llama-cpp-python's "gemma" format: system messages are dropped."""
    return with_system_role([m for m in messages if m["role"] != "system"])


USER = ChatMessage("user", "what is two plus two")


def test_prompt_without_free_prompt_counts_every_token_as_billable() -> None:
    builder = ChatPromptBuilder(with_system_role, word_tokens)
    prompt = builder.build([USER])
    assert prompt.free_prompt_tokens == 0
    assert prompt.billable_tokens == len(prompt.tokens) == 1 + 1 + 5 + 1  # BOS, roles, words
    assert prompt.stop_strings == ("<end>",)


def test_free_prompt_is_prepended_as_system_message_and_not_billed() -> None:
    builder = ChatPromptBuilder(with_system_role, word_tokens)
    assert builder.keeps_system_text
    plain = builder.build([USER])
    prompt = builder.build([USER], free_system_prompt="answer in French")
    assert prompt.free_prompt_tokens == 1 + 3  # "<system>" and the three words
    assert prompt.billable_tokens == len(plain.tokens)


def test_free_and_user_system_prompts_merge_into_one_leading_system_message() -> None:
    seen: list[list[dict[str, str]]] = []

    def recording(messages: list[dict[str, str]]) -> FormattedChat:
        seen.append(messages)
        return with_system_role(messages)

    builder = ChatPromptBuilder(recording, word_tokens)
    builder.build([USER, ChatMessage("developer", "be terse")], free_system_prompt="free part")
    assert seen[1] == [
        {"role": "system", "content": "free part\n\nbe terse"},
        {"role": "user", "content": USER.content},
    ]
    # Without the free prompt, only the user's own system prompt remains.
    assert seen[2][0] == {"role": "system", "content": "be terse"}


def test_format_without_system_role_gets_system_text_in_the_first_user_turn() -> None:
    seen: list[list[dict[str, str]]] = []

    def recording(messages: list[dict[str, str]]) -> FormattedChat:
        seen.append(messages)
        return without_system_role(messages)

    builder = ChatPromptBuilder(recording, word_tokens)
    assert not builder.keeps_system_text
    messages = [
        ChatMessage("assistant", "hi"),
        ChatMessage("user", "first"),
        ChatMessage("user", "second"),
    ]
    prompt = builder.build(messages, free_system_prompt="free words here")
    assert seen[1] == [
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "free words here\n\nfirst"},
        {"role": "user", "content": "second"},
    ]
    assert prompt.free_prompt_tokens == 3


def test_system_text_without_any_user_turn_becomes_one() -> None:
    seen: list[list[dict[str, str]]] = []

    def recording(messages: list[dict[str, str]]) -> FormattedChat:
        seen.append(messages)
        return without_system_role(messages)

    ChatPromptBuilder(recording, word_tokens).build([ChatMessage("system", "only this")])
    assert seen[1] == [{"role": "user", "content": "only this"}]


def test_template_raising_on_system_role_counts_as_without_system_role() -> None:
    def strict(messages: list[dict[str, str]]) -> FormattedChat:
        if any(m["role"] == "system" for m in messages):
            raise ValueError("System role not supported")
        return with_system_role(messages)

    builder = ChatPromptBuilder(strict, word_tokens)
    assert not builder.keeps_system_text
    assert builder.build([USER], free_system_prompt="x y").free_prompt_tokens == 2


def test_formats_that_hold_bos_are_tokenized_without_adding_another() -> None:
    def with_bos(messages: list[dict[str, str]]) -> FormattedChat:
        return FormattedChat("<bos> " + with_system_role(messages).text, has_special_tokens=True)

    prompt = ChatPromptBuilder(with_bos, word_tokens).build([USER])
    assert 0 not in prompt.tokens  # the tokenizer added no BOS (id 0) of its own
