"""llama-cpp-python's chat formatters, adapted to `FormatChat`: a named one (e.g. "gemma") or
the GGUF's own Jinja2 chat template."""

from __future__ import annotations

import inspect
from typing import Any

import llama_cpp
from llama_cpp import Llama, llama_chat_format

from regio_worker.engine.chat_prompt import FormatChat, FormattedChat


def named_chat_format(name: str) -> FormatChat:
    """The formatter registered under `name` with llama-cpp-python's @register_chat_format."""
    try:
        handler = llama_chat_format.get_chat_completion_handler(name)
    except llama_chat_format.LlamaChatCompletionHandlerNotFoundException as error:
        raise ValueError(f"Unknown chat_format {name!r}: {error}") from error
    # The registry keeps only a completion handler, which closes over the formatter
    # (llama_chat_format.chat_formatter_to_chat_completion_handler); the worker needs the
    # formatter itself to count tokens before generating.
    formatter = inspect.getclosurevars(handler).nonlocals.get("chat_formatter")
    if formatter is None:
        raise ValueError(
            f"chat_format {name!r} is a complete chat handler, not a prompt formatter; "
            "the worker supports the formats registered with @register_chat_format."
        )
    return _adapt(formatter)


def gguf_chat_format(llm: Llama) -> FormatChat:
    """The model's embedded `tokenizer.chat_template`, rendered like llama-cpp-python does."""
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise ValueError(
            "The GGUF has no chat template and the route names no chat_format; "
            "set `chat_format` (e.g. 'gemma', 'chatml') in the catalogue."
        )
    eos_id, bos_id = llm.token_eos(), llm.token_bos()
    formatter = llama_chat_format.Jinja2ChatFormatter(
        template=template,
        eos_token=_token_text(llm, eos_id),
        bos_token=_token_text(llm, bos_id),
        stop_token_ids=[eos_id],
    )
    return _adapt(formatter)


def _token_text(llm: Llama, token: int) -> str:
    if token == -1:
        return ""
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    text: bytes = llama_cpp.llama_vocab_get_text(vocab, token)
    return text.decode("utf-8")


def _adapt(formatter: Any) -> FormatChat:
    def format_chat(messages: list[dict[str, str]]) -> FormattedChat:
        result: llama_chat_format.ChatFormatterResponse = formatter(messages=messages)
        stop = result.stop
        stop_strings = (stop,) if isinstance(stop, str) else tuple(stop or ())
        return FormattedChat(result.prompt, bool(result.added_special), stop_strings)

    return format_chat
