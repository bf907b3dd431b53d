"""The engine on llama-cpp-python: one generation at a time in a dedicated thread.

Sampling follows the OpenAI defaults (temperature 1, top_p 1) on top of llama.cpp's top-k 40
and min-p 0.05, which keep small models on track; temperature 0 samples greedily."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import llama_cpp
import structlog
from llama_cpp import Llama

from regio_common.errors import CONTEXT_LENGTH_EXCEEDED, GENERATION_FAILED
from regio_worker.engine.base import (
    Engine,
    FinishReason,
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    TextDelta,
    Usage,
)
from regio_worker.engine.chat_prompt import ChatPromptBuilder, PromptTokens
from regio_worker.engine.detokenizer import IncrementalDetokenizer
from regio_worker.engine.llama_chat_formats import gguf_chat_format, named_chat_format
from regio_worker.engine.stop_strings import StopStringFilter
from regio_worker.engine.thread_bridge import EmitEvent, stream_from_thread

log = structlog.get_logger()

DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0
TOP_K = 40
MIN_P = 0.05
SEED_MODULUS = 2**32  # llama.cpp seeds are uint32


@dataclass
class _Progress:
    completion_tokens: int = 0
    reused_prompt_tokens: int = 0


class LlamaCppEngine(Engine):
    def __init__(
        self,
        model_path: Path,
        *,
        chat_format: str | None,
        n_ctx: int,
        n_threads: int,
        n_gpu_layers: int = 0,
    ) -> None:
        """Loads the model (blocking, about a second for a small model)."""
        self._llm = Llama(
            model_path=str(model_path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_gpu_layers=n_gpu_layers,
            verbose=False,
        )
        self._n_ctx = self._llm.n_ctx()
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        format_chat = named_chat_format(chat_format) if chat_format else gguf_chat_format(self._llm)
        self.prompts = ChatPromptBuilder(format_chat, self._tokenize)
        # Recurrent state cannot be cut back to a prefix, so those models always start afresh.
        self._reuses_prefix = not (
            llama_cpp.llama_model_is_recurrent(self._llm.model)
            or llama_cpp.llama_model_is_hybrid(self._llm.model)
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-cpp")
        self._abort_flags: dict[str, threading.Event] = {}

    @property
    def slots_total(self) -> int:
        return 1

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        abort = threading.Event()
        self._abort_flags[request.transaction_id] = abort
        try:
            work = stream_from_thread(
                self._executor, lambda emit: self._generate_blocking(request, abort, emit)
            )
            async for event in work:
                yield event
        finally:
            abort.set()  # a consumer that stops listening stops the thread too
            self._abort_flags.pop(request.transaction_id, None)

    def abort(self, transaction_id: str) -> None:
        flag = self._abort_flags.get(transaction_id)
        if flag is not None:
            flag.set()

    async def close(self) -> None:
        for flag in self._abort_flags.values():
            flag.set()
        self._executor.shutdown(wait=True)
        self._llm.close()

    # --- in the generation thread -----------------------------------------------------------

    def _generate_blocking(
        self, request: GenerationRequest, abort: threading.Event, emit: EmitEvent
    ) -> None:
        usage = Usage()
        progress = _Progress()
        try:
            prompt = self.prompts.build(request.messages, request.free_system_prompt)
            usage = Usage(
                prompt_tokens=prompt.billable_tokens, free_prompt_tokens=prompt.free_prompt_tokens
            )
            room = self._n_ctx - len(prompt.tokens)
            if room <= 0:
                message = (
                    f"The prompt has {len(prompt.tokens)} tokens but the model's context holds "
                    f"{self._n_ctx} tokens for prompt and answer together; shorten the messages."
                )
                emit(
                    GenerationFinished(
                        FinishReason.ERROR, usage, message, error_code=CONTEXT_LENGTH_EXCEEDED
                    )
                )
                return
            # The gateway clamps max_tokens to the route; the context may still be shorter.
            max_tokens = room if request.max_tokens is None else min(request.max_tokens, room)
            finish = self._sample(request, prompt, max_tokens, abort, emit, progress)
            emit(GenerationFinished(finish, _with_progress(usage, prompt, progress)))
        except Exception as error:
            log.exception("generation_failed")
            message = f"The model failed while generating: {error}"
            usage = replace(usage, completion_tokens=progress.completion_tokens)
            emit(
                GenerationFinished(FinishReason.ERROR, usage, message, error_code=GENERATION_FAILED)
            )

    def _sample(
        self,
        request: GenerationRequest,
        prompt: PromptTokens,
        max_tokens: int,
        abort: threading.Event,
        emit: EmitEvent,
        progress: _Progress,
    ) -> FinishReason:
        progress.reused_prompt_tokens = self._reuse_cached_prefix(prompt.tokens)
        # All prompt tokens but the last are evaluated here, batch by batch, so that an abort
        # lands between batches; generate() evaluates the last one and samples from it.
        if not self._evaluate(prompt.tokens[progress.reused_prompt_tokens : -1], abort):
            return FinishReason.CANCELLED
        self._llm.set_seed(
            llama_cpp.LLAMA_DEFAULT_SEED if request.seed is None else request.seed % SEED_MODULUS
        )
        stops = StopStringFilter((*request.stop, *prompt.stop_strings))
        text = IncrementalDetokenizer(self._token_bytes)
        tokens = self._llm.generate(
            prompt.tokens[-1:],
            reset=False,  # the KV cache already holds the prompt (see _reuse_cached_prefix)
            temp=_or(request.temperature, DEFAULT_TEMPERATURE),
            top_p=_or(request.top_p, DEFAULT_TOP_P),
            top_k=TOP_K,
            min_p=MIN_P,
            repeat_penalty=1.0,
            presence_penalty=_or(request.presence_penalty, 0.0),
            frequency_penalty=_or(request.frequency_penalty, 0.0),
        )
        try:
            for token in tokens:
                progress.completion_tokens += 1
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    _emit_text(emit, stops.feed(text.flush()) + stops.flush())
                    return FinishReason.STOP
                _emit_text(emit, stops.feed(text.push(token)))
                if stops.stopped:
                    return FinishReason.STOP
                if abort.is_set():
                    return FinishReason.CANCELLED
                if progress.completion_tokens >= max_tokens:
                    _emit_text(emit, stops.feed(text.flush()) + stops.flush())
                    return FinishReason.LENGTH
        finally:
            tokens.close()
        return FinishReason.STOP  # generate() is endless; kept for the type checker

    def _reuse_cached_prefix(self, prompt_tokens: Sequence[int]) -> int:
        """Keep the KV cache of the longest common prefix with the previous request (as
        Llama.generate does); returns how many prompt tokens need no evaluation."""
        if not self._reuses_prefix:
            self._llm.reset()  # type: ignore[no-untyped-call]  # unannotated upstream
            return 0
        previous = self._llm.input_ids[: self._llm.n_tokens].tolist()
        common = 0
        for cached, new in zip(previous, prompt_tokens, strict=False):
            if cached != new:
                break
            common += 1
        reused = min(common, len(prompt_tokens) - 1)  # the last one is evaluated for its logits
        # Llama.eval drops the cache from n_tokens onwards before decoding.
        self._llm.n_tokens = reused
        return reused

    def _evaluate(self, tokens: Sequence[int], abort: threading.Event) -> bool:
        batch = self._llm.n_batch
        for start in range(0, len(tokens), batch):
            if abort.is_set():
                return False
            self._llm.eval(tokens[start : start + batch])
        return not abort.is_set()

    def _tokenize(self, text: str, add_bos: bool) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def _token_bytes(self, token: int) -> bytes:
        return token_piece(self._vocab, token)


def token_piece(vocab: llama_cpp.llama_vocab_p, token: int) -> bytes:
    """The token's text as bytes, control tokens rendered empty.

    Not Llama.detokenize: in 0.3.36 it uses a fixed 32-byte buffer and returns b"" for longer
    pieces; llama_token_to_piece returns the size it needs, negated, when the buffer is short."""
    size = 64
    while True:
        buffer = ctypes.create_string_buffer(size)
        length = llama_cpp.llama_token_to_piece(vocab, token, buffer, size, 0, False)
        if length >= 0:
            return buffer.raw[:length]
        size = -length


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _emit_text(emit: EmitEvent, text: str) -> None:
    if text:
        emit(TextDelta(text))


def _with_progress(usage: Usage, prompt: PromptTokens, progress: _Progress) -> Usage:
    # The free prompt comes first, so the reused prefix covers its tokens first.
    cached = max(progress.reused_prompt_tokens - prompt.free_prompt_tokens, 0)
    return replace(usage, completion_tokens=progress.completion_tokens, cached_tokens=cached)
