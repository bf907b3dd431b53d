"""What can be wrong with one media part. The loader, which knows where the part is in the
request, turns a problem into a 400 naming it (`messages[i].content[j]`)."""

from __future__ import annotations

from regio_common.errors import INVALID_IMAGE_URL


class MediaProblem(Exception):
    """The part cannot be used; `message` says why in words a client can act on."""

    code = "invalid_value"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UrlProblem(MediaProblem):
    """The client's URL could not be downloaded as media (refused address, 404, timeout...)."""

    code = INVALID_IMAGE_URL
