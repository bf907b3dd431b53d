"""The reader check between a streaming worker and the gateway that reads the stream (see
regio_worker.reader_check): a NATS request on the stream's reply inbox, marked by a header,
answered with the number of the stream's delta chunks the client has received."""

from __future__ import annotations

import contextlib

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

READER_CHECK_HEADER = "Regio-Reader-Check"


def is_reader_check(msg: Msg) -> bool:
    return msg.headers is not None and READER_CHECK_HEADER in msg.headers


async def confirm_final(nc: Client, msg: Msg) -> None:
    """Tells the worker that this reader received the FINAL chunk (it bills the answer then)."""
    if msg.reply:
        with contextlib.suppress(nats.errors.Error):
            await nc.publish(msg.reply, b"")


async def answer_reader_check(nc: Client, msg: Msg, delivered_deltas: int) -> None:
    """Tells the worker that this reader is here and how far its client has got."""
    if not msg.reply:
        return
    # A lost answer only makes the worker ask again later: never an error of the stream.
    with contextlib.suppress(nats.errors.Error):
        await nc.publish(msg.reply, str(delivered_deltas).encode())


# NATS's answer to a request on a subject nobody subscribes to: an empty message whose
# `Status` header is 503.
NO_RESPONDERS_STATUS = "503"


def is_no_responders(msg: Msg) -> bool:
    return msg.headers is not None and msg.headers.get("Status") == NO_RESPONDERS_STATUS


async def answer_nobody_reads(nc: Client, msg: Msg) -> None:
    """Tells the worker that no reader takes this stream any more, as NATS answers a request
    nobody listens to ("no responders", status 503): the worker stops and bills only what was
    delivered. For a gateway that receives every stream on one subscription."""
    if not msg.reply:
        return
    with contextlib.suppress(nats.errors.Error):
        await nc.publish(msg.reply, b"", headers={"Status": NO_RESPONDERS_STATUS})
