"""Token-by-token text: a token may end in the middle of a UTF-8 character (byte-fallback
tokens, e.g. emoji split over several tokens), so bytes are decoded incrementally and an
incomplete character waits for the token that completes it."""

from __future__ import annotations

import codecs
from collections.abc import Callable


class IncrementalDetokenizer:
    def __init__(self, token_bytes: Callable[[int], bytes]) -> None:
        self._token_bytes = token_bytes
        # Invalid sequences become U+FFFD instead of failing the generation.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        """The text completed by this token (possibly empty)."""
        return self._decoder.decode(self._token_bytes(token))

    def flush(self) -> str:
        """At the end: an incomplete character left over is shown as U+FFFD."""
        return self._decoder.decode(b"", final=True)
