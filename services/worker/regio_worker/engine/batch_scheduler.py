"""Continuous batching on llama.cpp's low-level API: every running generation advances by one
token per `llama_decode`, and newly admitted prompts are evaluated in chunks inside the same
batches, so a long prompt never stalls the streams already running.

One scheduler thread owns the llama context; the asyncio side only enqueues work, sets abort
flags and reads events. Each slot is a llama.cpp sequence id whose KV cache is kept after its
generation ends, so that a later prompt sharing its prefix (the activation's free system prompt,
earlier turns of a conversation) resumes from there instead of recomputing it.

A generation on a thinking model starts in its reasoning phase (reasoning.py): its tokens go out
as reasoning, sampled without the answer's grammar and log-probabilities and unable to end the
generation; the answer's sampling starts when the reasoning ends. A rescue feeds the end marker
to the model without sampling it ("forced" tokens, in the next batch, positions continuing).
Generations without reasoning never touch any of this."""

from __future__ import annotations

import ctypes
import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import llama_cpp
import numpy
import structlog

from regio_worker.engine.base import FinishReason, GenerationEvent, ReasoningDelta, TextDelta
from regio_worker.engine.detokenizer import IncrementalDetokenizer
from regio_worker.engine.logprobs import LogitBias, Logits, LogprobTracker, token_logprob
from regio_worker.engine.reasoning import ReasoningPhase
from regio_worker.engine.stop_strings import StopStringFilter

if TYPE_CHECKING:
    from regio_worker.engine.multimodal import MediaPrompt

log = structlog.get_logger()

EmitEvent = Callable[[GenerationEvent | None], None]  # None: the generation's events ended

# Characters escaped in a lazy grammar's trigger pattern (the triggers are literal words).
REGEX_SPECIAL = frozenset("\\^$.|?*+()[]{}")

# llama_decode's "no KV cache room for this batch" answer (negative values are hard errors).
DECODE_NO_ROOM = 1
SAMPLING_THREADS = min(os.cpu_count() or 1, 8)


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    presence_penalty: float
    frequency_penalty: float
    seed: int  # uint32; LLAMA_DEFAULT_SEED picks a random one
    grammar: str = ""  # GBNF (root rule "root") the output must follow; empty: free text
    # Non-empty: the grammar is lazy: the text is free until one of these words appears, and
    # from that word on (included) follows the grammar (tool calls with tool_choice "auto").
    grammar_triggers: tuple[str, ...] = ()
    # Token id -> bias added to its logit (ids already checked against the vocabulary).
    logit_bias: tuple[tuple[int, float], ...] = ()

    @property
    def greedy(self) -> bool:
        """Plain argmax (of the biased logits): no randomness, no grammar and no penalty that
        depends on earlier tokens."""
        return (
            self.temperature <= 0
            and not (self.presence_penalty or self.frequency_penalty)
            and not self.grammar
        )


@dataclass
class Job:
    """One generation, from admission to its last event. Touched only by the scheduler thread,
    except `abort`, which the asyncio side sets."""

    prompt: list[int]
    max_tokens: int
    sampling: SamplingSettings
    stop_strings: tuple[str, ...]
    emit: EmitEvent
    on_finish: Callable[[Job, FinishReason, str], None]
    # None: no log-probabilities; otherwise each token's, with this many alternatives.
    top_logprobs: int | None = None
    # A thinking model's reasoning phase; None: the answer from the first token (the fast path).
    # With it, `sampling` is the reasoning's and `answer_sampling` takes over when it ends.
    reasoning: ReasoningPhase | None = None
    answer_sampling: SamplingSettings | None = None
    abort: threading.Event = field(default_factory=threading.Event)
    # Filled in by the scheduler:
    slot: int = -1
    evaluated: int = 0  # prompt tokens already in the slot's KV cache
    reused: int = 0  # of which were reused from an earlier generation
    completion_tokens: int = 0
    next_token: int = -1  # the sampled token still to be fed back through llama_decode
    batch_index: int = -1  # row of this job's logits in the current batch, -1: none
    chunk: int = 0  # prompt tokens of this job in the current batch
    sampler: llama_cpp.llama_sampler_p | None = None
    answer_sampler: llama_cpp.llama_sampler_p | None = None  # waits while a reasoning phase runs
    text: IncrementalDetokenizer | None = None
    stops: StopStringFilter | None = None
    bias: LogitBias | None = None  # for the argmax and the log-probabilities
    logprobs: LogprobTracker | None = None
    # Drawn by _draw_shaped: logprobs asked for, or a bias on the greedy argmax.
    shaped: bool = False
    forced: tuple[int, ...] = ()  # fed after next_token without being sampled (a rescue)
    injected: int = 0  # forced tokens already in the KV cache
    # Images and audio of the prompt (multimodal.py): evaluated into the slot at admission.
    media: MediaPrompt | None = None

    @property
    def prefilling(self) -> bool:
        return self.evaluated < len(self.prompt)

    @property
    def position(self) -> int:
        """Position of the next token fed to the model in this sequence."""
        return self.evaluated + max(self.completion_tokens - 1, 0) + self.injected


@dataclass
class _Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV this sequence holds
    job: Job | None = None


class BatchScheduler:
    """Runs generations of one llama context in one thread, `slots` at a time."""

    def __init__(
        self,
        context: llama_cpp.llama_context_p,
        vocab: llama_cpp.llama_vocab_p,
        *,
        slots: int,
        n_batch: int,
        token_bytes: Callable[[int], bytes],
        reuses_prefix: bool,
    ) -> None:
        self._context = context
        self._memory = llama_cpp.llama_get_memory(context)
        self._vocab = vocab
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self._n_batch = n_batch
        self._token_bytes = token_bytes
        self._reuses_prefix = reuses_prefix
        self._slots = [_Slot(seq_id) for seq_id in range(slots)]
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._incoming: queue.Queue[Job | None] = queue.Queue()
        self._waiting: list[Job] = []
        self._samplers = ThreadPoolExecutor(
            max_workers=SAMPLING_THREADS, thread_name_prefix="sample"
        )
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="llama-batch", daemon=True)
        self._thread.start()

    @property
    def slots_total(self) -> int:
        return len(self._slots)

    def submit(self, job: Job) -> None:
        self._incoming.put(job)

    def close(self) -> None:
        """Cancel what is running, stop the thread, free the batch (the context is the
        caller's)."""
        self._closing = True
        self._incoming.put(None)
        self._thread.join()
        self._samplers.shutdown()
        llama_cpp.llama_batch_free(self._batch)

    # --- the scheduler thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            running = [slot.job for slot in self._slots if slot.job is not None]
            if not self._take_incoming(block=not running and not self._waiting):
                break
            self._admit_waiting()
            running = [slot.job for slot in self._slots if slot.job is not None]
            for job in running:
                if job.abort.is_set():
                    self._finish(job, FinishReason.CANCELLED)
            running = [slot.job for slot in self._slots if slot.job is not None]
            if running:
                self._step(running)
        for job in [slot.job for slot in self._slots if slot.job is not None] + self._waiting:
            self._finish(job, FinishReason.CANCELLED)
        self._waiting.clear()

    def _take_incoming(self, block: bool) -> bool:
        """Move submitted jobs to the waiting list; False once the scheduler must stop."""
        try:
            item = self._incoming.get(block=block)
            while True:
                if item is None or self._closing:
                    return False
                self._waiting.append(item)
                item = self._incoming.get_nowait()
        except queue.Empty:
            return True

    def _admit_waiting(self) -> None:
        still_waiting: list[Job] = []
        for job in self._waiting:
            if job.abort.is_set():
                self._finish(job, FinishReason.CANCELLED, admitted=False)
                continue
            slot = self._free_slot_for(job.prompt)
            if slot is None:
                still_waiting.append(job)
                continue
            try:
                self._admit(job, slot)
            except Exception as error:  # a sampler that cannot be built fails this job only
                log.exception("admission_failed")
                slot.job = None
                self._finish(job, FinishReason.ERROR, f"cannot start generation: {error}")
        self._waiting = still_waiting

    def _free_slot_for(self, prompt: Sequence[int]) -> _Slot | None:
        """The free slot whose cached tokens share the longest prefix with `prompt`."""
        free = [slot for slot in self._slots if slot.job is None]
        if not free:
            return None
        return max(free, key=lambda slot: _common_prefix(slot.cached, prompt))

    def _admit(self, job: Job, slot: _Slot) -> None:
        reused = _common_prefix(slot.cached, job.prompt) if self._reuses_prefix else 0
        reused = min(reused, len(job.prompt) - 1)  # the last one is evaluated for its logits
        if job.media is not None:
            reused = job.media.reusable_prefix(reused)  # a media chunk is evaluated whole
        if not llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, reused, -1):
            # Some caches (recurrent, sliding-window past its window) cannot be cut back.
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            reused = 0
        slot.cached = list(job.prompt[:reused])
        slot.job = job
        job.slot = slot.seq_id
        job.evaluated = job.reused = reused
        job.text = IncrementalDetokenizer(self._token_bytes)
        job.stops = StopStringFilter(job.stop_strings)
        self._start_sampling(job)
        if job.media is not None:
            # Media chunks (and the text before them) go into the slot now, in this thread: the
            # running streams wait meanwhile. The text after them is prefilled in batches.
            job.evaluated = job.media.evaluate(self._context, slot.seq_id, reused, self._n_batch)
            slot.cached = list(job.prompt[: job.evaluated])

    def _start_sampling(self, job: Job) -> None:
        """The samplers of the job's settings. With a reasoning phase, the answer's sampler is
        built now too (a grammar that does not parse fails the job before it starts) and waits
        for the answer."""
        job.sampler = _build_sampler(job.sampling, self._vocab, self._n_vocab)
        if job.answer_sampling is not None:
            job.answer_sampler = _build_sampler(job.answer_sampling, self._vocab, self._n_vocab)
        self._shape(job)

    def _shape(self, job: Job) -> None:
        """Logit bias and log-probabilities of the job's current settings; log-probabilities
        belong to the answer only, not to a reasoning phase."""
        job.bias = LogitBias(job.sampling.logit_bias) if job.sampling.logit_bias else None
        answering = job.answer_sampling is None
        job.logprobs = (
            LogprobTracker(job.top_logprobs) if answering and job.top_logprobs is not None else None
        )
        job.shaped = job.logprobs is not None or (job.bias is not None and job.sampling.greedy)

    def _start_answer(self, job: Job) -> None:
        """The reasoning ended: the answer's settings and sampler from the next token on."""
        assert job.answer_sampling is not None
        if job.sampler is not None:
            llama_cpp.llama_sampler_free(job.sampler)
        job.sampler, job.answer_sampler = job.answer_sampler, None
        job.sampling, job.answer_sampling = job.answer_sampling, None
        self._shape(job)

    def _step(self, running: list[Job]) -> None:
        """One llama_decode over a token of every generating job plus prompt chunks."""
        batch = self._batch
        size = 0
        for job in running:
            job.batch_index = -1
            job.chunk = 0
            if not job.prefilling:
                size = self._add(
                    size, job.next_token, job.position, job.slot, logits=not job.forced
                )
                if job.forced:
                    size = self._add_forced(size, job)
                job.batch_index = size - 1
        for job in running:
            if size >= self._n_batch:
                break
            if job.prefilling:
                chunk = job.prompt[job.evaluated : job.evaluated + self._n_batch - size]
                job.chunk = len(chunk)
                for offset, token in enumerate(chunk):
                    last = job.evaluated + offset == len(job.prompt) - 1
                    size = self._add(size, token, job.evaluated + offset, job.slot, logits=last)
                    if last:
                        job.batch_index = size - 1
        batch.n_tokens = size
        result = llama_cpp.llama_decode(self._context, batch)
        if result != 0:
            self._decode_failed(running, result)
            return
        sampling: list[Job] = []
        for job in running:
            if job.prefilling:
                self._slot(job).cached.extend(job.prompt[job.evaluated : job.evaluated + job.chunk])
                job.evaluated += job.chunk
            elif job.completion_tokens > 0:
                self._slot(job).cached.append(job.next_token)
                if job.forced:
                    self._slot(job).cached.extend(job.forced)
                    job.injected += len(job.forced)
                    job.forced = ()
            if job.batch_index >= 0 and not job.prefilling:
                sampling.append(job)
        # Sampling reads a whole vocabulary of logits per sequence (262k for Gemma): the decode
        # threads are idle meanwhile, so the sequences are sampled side by side (ctypes calls
        # release the GIL).
        if len(sampling) > 1:
            tokens = list(self._samplers.map(self._draw, sampling))
        else:
            tokens = [self._draw(job) for job in sampling]
        for job, token in zip(sampling, tokens, strict=True):
            self._take(job, token)

    def _add_forced(self, size: int, job: Job) -> int:
        """The job's forced tokens after its last sampled one; the next token is sampled from
        the logits of the last of them. A handful of tokens: n_batch always has room for them
        beside one token of every slot."""
        start = job.position + 1
        last = len(job.forced) - 1
        for offset, token in enumerate(job.forced):
            size = self._add(size, token, start + offset, job.slot, logits=offset == last)
        return size

    def _add(self, size: int, token: int, position: int, seq_id: int, *, logits: bool) -> int:
        batch = self._batch
        batch.token[size] = token
        batch.pos[size] = position
        batch.n_seq_id[size] = 1
        batch.seq_id[size][0] = seq_id
        batch.logits[size] = logits
        return size + 1

    def _draw(self, job: Job) -> int:
        """The next token of `job` from its logits in the batch just decoded."""
        if job.shaped:
            return self._draw_shaped(job)
        if job.sampling.greedy:
            # Argmax over the logits; llama_sampler_sample would first copy the whole vocabulary
            # into a candidate array.
            logits = llama_cpp.llama_get_logits_ith(self._context, job.batch_index)
            return int(numpy.ctypeslib.as_array(logits, shape=(self._n_vocab,)).argmax())
        assert job.sampler is not None
        token: int = llama_cpp.llama_sampler_sample(job.sampler, self._context, job.batch_index)
        return token

    def _draw_shaped(self, job: Job) -> int:
        """As _draw, for a job with logprobs (left for `_take` in its tracker, see logprobs.py)
        or with a logit bias on the greedy argmax. Other jobs never come here: their per-token
        work stays a plain argmax or llama.cpp's sampler (whose chain applies a bias)."""
        logits = self._logits(job)
        if job.bias is not None:
            logits = job.bias.apply(logits)
        if job.sampling.greedy:
            token = int(logits.argmax())
        else:
            assert job.sampler is not None
            token = llama_cpp.llama_sampler_sample(job.sampler, self._context, job.batch_index)
        if job.logprobs is not None:
            job.logprobs.drawn = token_logprob(logits, token, job.logprobs.top_n, self._token_bytes)
        return token

    def _logits(self, job: Job) -> Logits:
        """The job's row of logits in the batch just decoded (llama.cpp's buffer, no copy)."""
        row = llama_cpp.llama_get_logits_ith(self._context, job.batch_index)
        return numpy.ctypeslib.as_array(row, shape=(self._n_vocab,))

    def _take(self, job: Job, token: int) -> None:
        """Stream the sampled token and end the job when it is done."""
        assert job.text is not None and job.stops is not None
        job.completion_tokens += 1
        job.next_token = token
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            self._end_reasoning(job)
            # The end-of-generation token has no text and no log-probability in the answer.
            self._emit_text(job, job.stops.feed(job.text.flush()) + job.stops.flush(), end=True)
            self._finish(job, FinishReason.STOP)
            return
        if job.reasoning is not None and job.reasoning.thinking:
            text = self._take_reasoning(job, token)
        else:
            if job.logprobs is not None:
                job.logprobs.sampled()
            text = job.text.push(token)
        self._emit_text(job, job.stops.feed(text))
        if job.stops.stopped:
            self._finish(job, FinishReason.STOP)
        elif job.completion_tokens >= job.max_tokens:
            self._end_reasoning(job)
            self._emit_text(job, job.stops.feed(job.text.flush()) + job.stops.flush(), end=True)
            self._finish(job, FinishReason.LENGTH)

    def _take_reasoning(self, job: Job, token: int) -> str:
        """A token sampled before the answer began: its reasoning text goes out, the answer's
        sampling starts when the reasoning ends (a rescue's forced tokens are fed first).
        Returns the token's answer text."""
        assert job.reasoning is not None and job.text is not None
        step = job.reasoning.take(token, job.text.push(token))
        if step.reasoning:
            job.emit(ReasoningDelta(step.reasoning))
        if step.closed:
            job.forced = step.forced
            self._start_answer(job)
        elif job.logprobs is not None:
            if step.answer:
                job.logprobs.sampled()
            else:  # blank text between the end marker and the answer: not part of the answer
                job.logprobs.drawn = None
        return step.answer

    def _end_reasoning(self, job: Job) -> None:
        """The generation ends inside its reasoning: the reasoning text held back goes out."""
        if job.reasoning is not None and job.reasoning.thinking:
            held = job.reasoning.finish()
            if held:
                job.emit(ReasoningDelta(held))

    def _decode_failed(self, running: list[Job], result: int) -> None:
        if result == DECODE_NO_ROOM and len(running) > 1:
            # Out of KV room: give it back by failing the most recently admitted job; the
            # others continue in the next step.
            victim = max(running, key=lambda job: job.slot)
            log.warning("kv_cache_full", running=len(running))
            self._finish(victim, FinishReason.ERROR, "the worker ran out of context memory")
            return
        log.error("llama_decode_failed", result=result, running=len(running))
        for job in running:
            self._finish(job, FinishReason.ERROR, f"llama_decode failed ({result})")

    def _slot(self, job: Job) -> _Slot:
        return self._slots[job.slot]

    def _emit_text(self, job: Job, text: str, *, end: bool = False) -> None:
        """Send the text (with the log-probabilities of its tokens when asked for); `end`: the
        answer is complete."""
        if job.logprobs is None:
            if text:
                job.emit(TextDelta(text))
            return
        if text or end:
            logprobs = job.logprobs.take(text, end=end)
            if text or logprobs:
                job.emit(TextDelta(text, logprobs))

    def _finish(
        self, job: Job, reason: FinishReason, detail: str = "", *, admitted: bool = True
    ) -> None:
        if admitted and job.slot >= 0:
            slot = self._slot(job)
            if reason is FinishReason.ERROR:
                # The sequence's KV may be partial: start that slot afresh next time.
                llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
                slot.cached = []
            slot.job = None
        if job.sampler is not None:
            llama_cpp.llama_sampler_free(job.sampler)
            job.sampler = None
        if job.answer_sampler is not None:
            llama_cpp.llama_sampler_free(job.answer_sampler)
            job.answer_sampler = None
        job.on_finish(job, reason, detail)
        job.emit(None)


def _common_prefix(cached: Sequence[int], prompt: Sequence[int]) -> int:
    common = 0
    for old, new in zip(cached, prompt, strict=False):
        if old != new:
            break
        common += 1
    return common


def _build_sampler(
    settings: SamplingSettings, vocab: llama_cpp.llama_vocab_p, n_vocab: int
) -> llama_cpp.llama_sampler_p:
    """llama.cpp's usual chain: logit bias, grammar, penalties, top-k, top-p, min-p,
    temperature, then a seeded draw; temperature 0 is greedy."""
    chain: llama_cpp.llama_sampler_p = llama_cpp.llama_sampler_chain_init(
        llama_cpp.llama_sampler_chain_default_params()
    )
    if settings.logit_bias:
        biases = (llama_cpp.llama_logit_bias * len(settings.logit_bias))(
            *(llama_cpp.llama_logit_bias(token, bias) for token, bias in settings.logit_bias)
        )
        # llama.cpp copies the array.
        llama_cpp.llama_sampler_chain_add(
            chain, llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(biases), biases)
        )
    if settings.grammar:
        grammar = _grammar_sampler(settings, vocab)
        if not grammar:
            llama_cpp.llama_sampler_free(chain)
            raise ValueError("the output grammar does not parse")
        llama_cpp.llama_sampler_chain_add(chain, grammar)
    if settings.presence_penalty or settings.frequency_penalty:
        llama_cpp.llama_sampler_chain_add(
            chain,
            llama_cpp.llama_sampler_init_penalties(
                n_vocab, 64, 1.0, settings.frequency_penalty, settings.presence_penalty
            ),
        )
    if settings.temperature <= 0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(settings.top_k))
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(settings.top_p, 1))
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_min_p(settings.min_p, 1))
    llama_cpp.llama_sampler_chain_add(
        chain, llama_cpp.llama_sampler_init_temp(settings.temperature)
    )
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(settings.seed))
    return chain


def _grammar_sampler(
    settings: SamplingSettings, vocab: llama_cpp.llama_vocab_p
) -> llama_cpp.llama_sampler_p:
    """The grammar's sampler (NULL when the grammar does not parse); lazy with triggers."""
    sampler: llama_cpp.llama_sampler_p
    if not settings.grammar_triggers:
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, settings.grammar.encode(), b"root")
        return sampler
    # llama.cpp matches each pattern against the whole text so far and hands the grammar the
    # text from the first capture group on: the trigger word and what came with its token.
    words = "|".join(_regex_escape(word) for word in settings.grammar_triggers)
    patterns = (ctypes.c_char_p * 1)(f"^[\\s\\S]*?({words})[\\s\\S]*".encode())
    sampler = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
        vocab, settings.grammar.encode(), b"root", patterns, 1, None, 0
    )
    return sampler


def _regex_escape(word: str) -> str:
    """`word` as a literal of llama.cpp's (std::regex ECMAScript) patterns."""
    return "".join(f"\\{char}" if char in REGEX_SPECIAL else char for char in word)


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
