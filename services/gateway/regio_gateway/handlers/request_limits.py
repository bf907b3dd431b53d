"""Counts in a chat completion request that the settings bound (the body size bounds the rest):
messages, content parts of one message, tools. The `stop` list (4) and the `models` fallbacks
(8) are bounded by the request model itself, as OpenAI bounds them."""

from __future__ import annotations

from regio_common.errors import InvalidRequest
from regio_gateway.protocol.chat_completion import ChatCompletionRequest
from regio_gateway.settings import GatewaySettings


def check_request_counts(body: ChatCompletionRequest, settings: GatewaySettings) -> None:
    if len(body.messages) > settings.max_messages:
        raise InvalidRequest(
            f"Too many messages: at most {settings.max_messages} are accepted.",
            param="messages",
        )
    _check_content_parts(body, settings)
    if body.tools is not None and len(body.tools) > settings.max_tools:
        raise InvalidRequest(
            f"Too many tools: at most {settings.max_tools} are accepted.", param="tools"
        )


def _check_content_parts(body: ChatCompletionRequest, settings: GatewaySettings) -> None:
    for index, message in enumerate(body.messages):
        if isinstance(message.content, list) and len(message.content) > settings.max_content_parts:
            raise InvalidRequest(
                f"Too many content parts in one message: at most {settings.max_content_parts} "
                "are accepted.",
                param=f"messages[{index}].content",
            )
