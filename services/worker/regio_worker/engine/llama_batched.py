"""The engine on llama.cpp with continuous batching: `slots` generations decode together in one
llama context (see batch_scheduler.py for how a step is built).

Sampling follows the OpenAI defaults (temperature 1, top_p 1) on top of llama.cpp's top-k 40
and min-p 0.05, which keep small models on track; temperature 0 samples greedily. `logit_bias`
is applied first (in llama.cpp's sampler chain, and in the greedy argmax); log-probabilities,
when asked for, are those of the biased logits before any other sampling step (logprobs.py).

A model with reasoning markers (the catalogue's thinking_start / thinking_end) reasons at the
request's effort: the prompt's end sets it (reasoning_prompt.py) and the scheduler splits the
reasoning from the answer and rescues reasoning that runs over its budget or loops
(reasoning.py)."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import llama_cpp
import structlog
from llama_cpp import Llama

from regio_common.errors import (
    CONTEXT_LENGTH_EXCEEDED,
    GENERATION_FAILED,
    INVALID_LOGIT_BIAS,
    INVALID_RESPONSE_FORMAT,
    INVALID_TOOLS,
)
from regio_worker.engine.base import (
    ContextCompressed,
    Engine,
    FinishReason,
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    ReasoningEffort,
    Usage,
)
from regio_worker.engine.batch_scheduler import BatchScheduler, Job, SamplingSettings, token_piece
from regio_worker.engine.chat_prompt import ChatPromptBuilder, PromptTokens
from regio_worker.engine.context_fit import answer_room, fit_messages
from regio_worker.engine.llama_chat_formats import gguf_chat_format, named_chat_format
from regio_worker.engine.multimodal import (
    MediaMarkers,
    MediaPrompt,
    MediaPrompts,
    MediaRefused,
    MediaTokenBounds,
    load_projector,
)
from regio_worker.engine.reasoning import ReasoningMarkers, ReasoningPhase, reasoning_budget
from regio_worker.engine.reasoning_prompt import ReasoningPrompt
from regio_worker.engine.tools.grammar import (
    AnswerGrammar,
    InvalidToolsError,
    answer_grammar,
)
from regio_worker.engine.tools.markup import tools_section
from regio_worker.engine.tools.parser import ToolCallParser

log = structlog.get_logger()

DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0
TOP_K = 40
MIN_P = 0.05
SEED_MODULUS = 2**32  # llama.cpp seeds are uint32
# The loader's own context only serves tokenization and chat-template discovery.
LOADER_N_CTX = 256


SPLIT_MODES = {
    "none": llama_cpp.LLAMA_SPLIT_MODE_NONE,
    "layer": llama_cpp.LLAMA_SPLIT_MODE_LAYER,
    "row": llama_cpp.LLAMA_SPLIT_MODE_ROW,
}


@dataclass(frozen=True)
class GpuPlacement:
    """Where the model runs. The defaults are the CPU; a CPU build ignores GPU layers."""

    n_gpu_layers: int = 0  # -1: all
    split_mode: str = "layer"  # a key of SPLIT_MODES
    main_gpu: int = 0
    tensor_split: list[float] | None = None
    flash_attention: bool | None = None  # None: llama.cpp decides


class BatchedLlamaEngine(Engine):
    def __init__(
        self,
        model_path: Path,
        *,
        chat_format: str | None,
        n_ctx: int,
        n_threads: int,
        slots: int = 1,
        n_batch: int = 512,
        gpu: GpuPlacement | None = None,
        reasoning_markers: ReasoningMarkers | None = None,
        mmproj_path: Path | None = None,
        media_bounds: MediaTokenBounds | None = None,
    ) -> None:
        """Loads the model (blocking, about a second for a small model). `n_ctx` is the context
        of one generation; the KV cache holds `slots` of them. `reasoning_markers`: how a
        thinking model marks its reasoning; None: the model does not reason (an effort asked
        for is ignored)."""
        gpu = gpu or GpuPlacement()
        self._llm = Llama(
            model_path=str(model_path),
            n_ctx=LOADER_N_CTX,
            n_threads=n_threads,
            n_gpu_layers=gpu.n_gpu_layers,
            split_mode=SPLIT_MODES[gpu.split_mode],
            main_gpu=gpu.main_gpu,
            tensor_split=gpu.tensor_split,
            verbose=False,
        )
        self._n_ctx: int = min(n_ctx, llama_cpp.llama_model_n_ctx_train(self._llm.model))
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        self._n_vocab: int = llama_cpp.llama_vocab_n_tokens(self._vocab)
        format_chat = named_chat_format(chat_format) if chat_format else gguf_chat_format(self._llm)
        # Images and audio (multimodal.py): the projector, when the route has one, reads them;
        # prompts are tokenized through it when they hold media.
        media_bounds = media_bounds or MediaTokenBounds(per_image=1024, per_audio_clip=1500)
        markers = MediaMarkers()
        projector = (
            load_projector(
                mmproj_path,
                self._llm.model,
                markers=markers,
                n_threads=n_threads,
                use_gpu=gpu.n_gpu_layers != 0,
                bounds=media_bounds,
            )
            if mmproj_path is not None
            else None
        )
        self._media = MediaPrompts(projector, self._tokenize, media_bounds, markers)
        self.prompts = ChatPromptBuilder(format_chat, self._media.tokenize)
        self._reasoning = (
            ReasoningPrompt(reasoning_markers, self._tokenize_plain, self._render)
            if reasoning_markers is not None
            else None
        )
        # Banned while a model reasons: its turn cannot end before its reasoning does.
        self._end_of_generation = (
            _end_of_generation_tokens(self._vocab) if reasoning_markers is not None else ()
        )
        self._context = _new_context(
            self._llm,
            n_ctx=self._n_ctx * slots,
            n_batch=n_batch,
            slots=slots,
            n_threads=n_threads,
            flash_attention=gpu.flash_attention,
        )
        # Recurrent state cannot be cut back to a prefix, so those models always start afresh.
        reuses_prefix = not (
            llama_cpp.llama_model_is_recurrent(self._llm.model)
            or llama_cpp.llama_model_is_hybrid(self._llm.model)
        )
        self._scheduler = BatchScheduler(
            self._context,
            self._vocab,
            slots=slots,
            n_batch=n_batch,
            token_bytes=lambda token: token_piece(self._vocab, token),
            reuses_prefix=reuses_prefix,
        )
        self._jobs: dict[str, Job] = {}

    @property
    def slots_total(self) -> int:
        return self._scheduler.slots_total

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        media: MediaPrompt | None = None
        try:
            # Media become markers in the messages and chunks of the projector (multimodal.py).
            with self._media.prepare(request) as preparation:
                prompt, dropped = self._prompt(preparation.request)
                media = preparation.prompt(prompt.tokens)
        except MediaRefused as refused:
            yield GenerationFinished(
                FinishReason.ERROR, error_message=str(refused), error_code=refused.code
            )
            return
        except Exception as error:
            log.exception("prompt_failed")
            yield GenerationFinished(
                FinishReason.ERROR,
                error_message=f"The prompt could not be prepared: {error}",
                error_code=GENERATION_FAILED,
            )
            return
        usage = Usage(
            prompt_tokens=prompt.billable_tokens, free_prompt_tokens=prompt.free_prompt_tokens
        )
        room = self._n_ctx - len(prompt.tokens)
        if room <= 0:
            message = (
                f"The prompt has {len(prompt.tokens)} tokens but the model's context holds "
                f"{self._n_ctx} tokens for prompt and answer together; shorten the messages."
            )
            if dropped:
                message = (
                    f"The prompt has {len(prompt.tokens)} tokens even with {dropped} messages "
                    f"left out of the middle of the conversation, but the model's context "
                    f"holds {self._n_ctx} tokens for prompt and answer together; shorten the "
                    "system prompt, the first or the last user message."
                )
            yield GenerationFinished(
                FinishReason.ERROR, usage, message, error_code=CONTEXT_LENGTH_EXCEEDED
            )
            return
        try:
            grammar = answer_grammar(request)
        except InvalidToolsError as error:
            yield GenerationFinished(
                FinishReason.ERROR, usage, str(error), error_code=INVALID_TOOLS
            )
            return
        except ValueError as error:
            yield GenerationFinished(
                FinishReason.ERROR, usage, str(error), error_code=INVALID_RESPONSE_FORMAT
            )
            return
        unknown = sorted(token for token, _ in request.logit_bias if not 0 <= token < self._n_vocab)
        if unknown:
            yield GenerationFinished(
                FinishReason.ERROR,
                usage,
                f"logit_bias: token id {unknown[0]} is not in the model's vocabulary "
                f"(ids 0 to {self._n_vocab - 1}).",
                error_code=INVALID_LOGIT_BIAS,
            )
            return
        events: asyncio.Queue[GenerationEvent | None] = asyncio.Queue()
        job = self._job(request, prompt, room, usage, events, grammar)
        job.media = media
        self._jobs[request.transaction_id] = job
        self._scheduler.submit(job)
        # Requests without tools skip the parser: no cost per token for them.
        tool_calls = _tool_call_parser(request)
        try:
            if dropped:
                yield ContextCompressed(dropped)
            while (event := await events.get()) is not None:
                if tool_calls is None:
                    yield event
                    continue
                for parsed in tool_calls.events(event):
                    yield parsed
                if tool_calls.complete:
                    job.abort.set()  # the rest would be dropped: stop generating it
        finally:
            job.abort.set()  # a consumer that stops listening frees the slot too
            self._jobs.pop(request.transaction_id, None)

    def _prompt(self, request: GenerationRequest) -> tuple[PromptTokens, int]:
        """The prompt's tokens, and how many messages middle-out left out to make it fit."""
        free = self._system_prompt(request)
        tools = tools_section(request)
        prompt = self.prompts.build(request.messages, free, tools)
        room = answer_room(request.max_tokens, self._n_ctx)
        if not request.middle_out or len(prompt.tokens) + room <= self._n_ctx:
            return prompt, 0
        fitted = fit_messages(
            request.messages,
            lambda messages: self.prompts.count(messages, free, tools),
            self._n_ctx - room,
        )
        if not fitted.dropped:
            return prompt, 0
        compressed = self.prompts.build(fitted.messages, free, tools)
        log.info(
            "context_compressed",
            dropped_messages=fitted.dropped,
            kept_messages=len(fitted.messages),
            prompt_tokens_before=len(prompt.tokens),
            prompt_tokens=len(compressed.tokens),
            n_ctx=self._n_ctx,
            fits=len(compressed.tokens) < self._n_ctx,
        )
        return compressed, fitted.dropped

    def abort(self, transaction_id: str) -> None:
        job = self._jobs.get(transaction_id)
        if job is not None:
            job.abort.set()

    async def close(self) -> None:
        for job in self._jobs.values():
            job.abort.set()
        await asyncio.to_thread(self._scheduler.close)
        llama_cpp.llama_free(self._context)
        self._media.close()  # the projector refers to the model
        self._llm.close()

    def _job(
        self,
        request: GenerationRequest,
        prompt: PromptTokens,
        room: int,
        usage: Usage,
        events: asyncio.Queue[GenerationEvent | None],
        grammar: AnswerGrammar,
    ) -> Job:
        loop = asyncio.get_running_loop()
        # The reasoning block that ends the prompt (free tokens), and a rescue's end marker,
        # which takes context positions without being a completion token.
        prefill = self._prefill(request, prompt.tokens)
        reasoning = self._reasoning if request.reasoning_effort is not ReasoningEffort.OFF else None
        rescue_room = len(reasoning.forced_end) if reasoning is not None else 0

        def emit(event: GenerationEvent | None) -> None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody listens any more
                loop.call_soon_threadsafe(events.put_nowait, event)

        def on_finish(job: Job, reason: FinishReason, detail: str) -> None:
            # The free prompt comes first, so the reused prefix covers its tokens first; the
            # reasoning prefill comes last and is free too.
            cached = min(max(job.reused - prompt.free_prompt_tokens, 0), usage.prompt_tokens)
            phase = job.reasoning
            final = Usage(
                prompt_tokens=usage.prompt_tokens,
                free_prompt_tokens=usage.free_prompt_tokens + len(prefill),
                completion_tokens=job.completion_tokens,
                cached_tokens=cached,
                reasoning_tokens=phase.tokens if phase is not None else 0,
            )
            code = GENERATION_FAILED if reason is FinishReason.ERROR else ""
            message = f"The model failed while generating: {detail}" if detail else ""
            rescued = phase.rescued if phase is not None else ""
            emit(GenerationFinished(reason, final, message, code, thinking_rescued=rescued))

        # The gateway clamps max_tokens to the route; the context may still be shorter.
        room = max(room - len(prefill) - rescue_room, 1)
        max_tokens = room if request.max_tokens is None else min(request.max_tokens, room)
        sampling = _sampling(request, grammar)
        phase = self._reasoning_phase(request, max_tokens) if reasoning is not None else None
        return Job(
            prompt=prompt.tokens + prefill,
            max_tokens=max_tokens,
            sampling=(
                _reasoning_sampling(sampling, self._end_of_generation) if phase else sampling
            ),
            answer_sampling=sampling if phase else None,
            reasoning=phase,
            stop_strings=(*request.stop, *prompt.stop_strings),
            emit=emit,
            on_finish=on_finish,
            top_logprobs=request.top_logprobs,
        )

    def _system_prompt(self, request: GenerationRequest) -> str:
        """The free system prompt, with the instruction of a deep reasoning effort after it."""
        if self._reasoning is None:
            return request.free_system_prompt
        return self._reasoning.system_prompt(request.free_system_prompt, request.reasoning_effort)

    def _prefill(self, request: GenerationRequest, prompt: Sequence[int]) -> list[int]:
        """The tokens that open (or, effort OFF, open and close) the reasoning block."""
        if self._reasoning is None:
            return []
        return self._reasoning.prefill(prompt, request.reasoning_effort)

    def _reasoning_phase(self, request: GenerationRequest, max_tokens: int) -> ReasoningPhase:
        assert self._reasoning is not None
        return ReasoningPhase(
            self._reasoning.markers,
            budget=reasoning_budget(request.reasoning_effort, request.reasoning_budget, max_tokens),
            forced_end=self._reasoning.forced_end,
            end_token=self._reasoning.end_token,
        )

    def _tokenize(self, text: str, add_bos: bool) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def _tokenize_plain(self, text: str) -> list[int]:
        return self._tokenize(text, False)

    def _render(self, tokens: Sequence[int]) -> str:
        """The text of a few tokens, special ones included."""
        text: bytes = self._llm.detokenize(list(tokens), special=True)
        return text.decode("utf-8", errors="replace")


def _sampling(request: GenerationRequest, grammar: AnswerGrammar) -> SamplingSettings:
    return SamplingSettings(
        grammar=grammar.grammar,
        grammar_triggers=grammar.triggers,
        temperature=DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
        top_p=DEFAULT_TOP_P if request.top_p is None else request.top_p,
        top_k=TOP_K,
        min_p=MIN_P,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        seed=llama_cpp.LLAMA_DEFAULT_SEED if request.seed is None else request.seed % SEED_MODULUS,
        logit_bias=request.logit_bias,
    )


def _reasoning_sampling(
    answer: SamplingSettings, end_of_generation: Sequence[int]
) -> SamplingSettings:
    """The reasoning phase samples as the answer does, but without the answer's grammar (which
    starts with the answer) and without ending the generation."""
    banned = tuple((token, -math.inf) for token in end_of_generation)
    return replace(answer, grammar="", logit_bias=(*answer.logit_bias, *banned))


def _end_of_generation_tokens(vocab: llama_cpp.llama_vocab_p) -> tuple[int, ...]:
    """Every token that ends a generation (a tenth of a second over Gemma's 262k tokens)."""
    count = llama_cpp.llama_vocab_n_tokens(vocab)
    return tuple(token for token in range(count) if llama_cpp.llama_vocab_is_eog(vocab, token))


def _tool_call_parser(request: GenerationRequest) -> ToolCallParser | None:
    if not request.may_call_tools:
        return None
    names = [tool.name for tool in request.tools]
    return ToolCallParser(names, parallel=request.parallel_tool_calls)


def _new_context(
    llm: Llama,
    *,
    n_ctx: int,
    n_batch: int,
    slots: int,
    n_threads: int,
    flash_attention: bool | None,
) -> llama_cpp.llama_context_p:
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = n_batch
    params.n_ubatch = n_batch
    params.n_seq_max = slots
    params.n_threads = n_threads
    params.n_threads_batch = n_threads
    # One KV buffer shared by all sequences (as llama-server does): a slot's cached prefix
    # costs memory only for the tokens it really holds.
    params.kv_unified = False
    params.swa_full = False
    params.no_perf = True
    if flash_attention is not None:
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if flash_attention
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
    context: llama_cpp.llama_context_p = llama_cpp.llama_init_from_model(llm.model, params)
    if not context:
        raise RuntimeError("llama.cpp could not create the batched context")
    return context
