"""The prompt side of reasoning on a thinking model: the effort is set by how the prompt ends.

- OFF: the prompt ends with an empty reasoning block (start, blank line, end, blank line), as
  Qwen3's chat template does with thinking off: the model answers at once.
- MEDIUM: the prompt ends with the start marker and a newline: the model is in its reasoning
  from the first token.
- HIGH / MAX: as MEDIUM, plus a system instruction to reason very carefully and in great detail
  (MAX differs by its larger budget, see reasoning.py).
- A model that reasons only when its system prompt says so (Gemma 4's `<|think|>`) gets that
  switch first in the system prompt whenever the effort is not OFF.

A chat template that opens the reasoning block itself is not given a second start marker. These
tokens are Regio's, never the client's: they are counted as free prompt tokens."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from regio_worker.engine.base import ReasoningEffort
from regio_worker.engine.reasoning import ReasoningMarkers

BLANK_LINE = "\n\n"
PARAGRAPH = "\n\n"
DEEP_EFFORTS = frozenset({ReasoningEffort.HIGH, ReasoningEffort.MAX})
DEEP_REASONING_INSTRUCTION = (
    "Before you answer, think very carefully and in great detail: work through the problem step "
    "by step, consider other approaches, check every step and your result, and only then give "
    "your final answer."
)
# Prompt tokens read back to see whether the chat template opened the reasoning block itself.
TAIL_TOKENS = 8

Tokenize = Callable[[str], list[int]]  # text -> tokens (special tokens parsed, no BOS)
Render = Callable[[Sequence[int]], str]  # tokens -> text, special tokens included


def reasoning_system_prompt(
    free_system_prompt: str, effort: ReasoningEffort, markers: ReasoningMarkers
) -> str:
    """The free system prompt with the deep-reasoning instruction after it (HIGH, MAX), so that
    the activation's prompt is a prefix shared by every effort in the KV cache; the model's
    thinking switch, if it has one, goes first (where the model was trained to find it)."""
    text = free_system_prompt
    if effort in DEEP_EFFORTS:
        text = PARAGRAPH.join(part for part in (text, DEEP_REASONING_INSTRUCTION) if part)
    if markers.switch and effort is not ReasoningEffort.OFF:
        text = markers.switch + text
    return text


def reasoning_prefill(effort: ReasoningEffort, markers: ReasoningMarkers, prompt_tail: str) -> str:
    """The text appended to a prompt that ends with `prompt_tail` (the chat format's generation
    prompt)."""
    opened_text = prompt_tail.rstrip()
    opened = opened_text.endswith(markers.start)
    newline_after_start = "" if opened and len(opened_text) < len(prompt_tail) else "\n"
    opening = newline_after_start if opened else markers.start + "\n"
    if effort is ReasoningEffort.OFF:
        return opening + "\n" + markers.end + BLANK_LINE
    return opening


class ReasoningPrompt:
    """The reasoning tokens of one model: the prefill appended to a prompt, and the tokens a
    rescue forces (the end marker and a blank line)."""

    def __init__(self, markers: ReasoningMarkers, tokenize: Tokenize, render: Render) -> None:
        self.markers = markers
        self._tokenize = tokenize
        self._render = render
        self.forced_end = tuple(tokenize(markers.end + BLANK_LINE))
        end_tokens = tokenize(markers.end)
        # A one-token marker is recognised by its id too: a control token renders as no text.
        self.end_token = end_tokens[0] if len(end_tokens) == 1 else None

    def system_prompt(self, free_system_prompt: str, effort: ReasoningEffort) -> str:
        return reasoning_system_prompt(free_system_prompt, effort, self.markers)

    def prefill(self, prompt: Sequence[int], effort: ReasoningEffort) -> list[int]:
        """The tokens to append to `prompt` for `effort`."""
        tail = self._render(prompt[-TAIL_TOKENS:])
        text = reasoning_prefill(effort, self.markers, tail)
        return self._tokenize(text) if text else []
