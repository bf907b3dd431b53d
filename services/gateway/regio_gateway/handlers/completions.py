"""`POST /v1/completions`: the legacy text completions, served by the chat pipeline (see
regio_gateway.protocol.text_completion)."""

from __future__ import annotations

from aiohttp import web

from regio_gateway.handlers.chat_completions import serve_chat
from regio_gateway.protocol.chat_completion import ChatCompletion, ChatCompletionChunk
from regio_gateway.protocol.text_completion import TextCompletion, TextCompletionRequest


class TextAnswers:
    def completion_json(self, completion: ChatCompletion) -> str:
        return TextCompletion.from_chat(completion).to_json()

    def chunk_json(self, chunk: ChatCompletionChunk) -> str | None:
        text_chunk = TextCompletion.from_chat_chunk(chunk)
        return text_chunk.to_json() if text_chunk is not None else None


async def create_completion(request: web.Request) -> web.StreamResponse:
    return await serve_chat(request, TextCompletionRequest.parse, TextAnswers())
