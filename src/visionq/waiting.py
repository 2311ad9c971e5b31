"""Waiting on an asyncio.Event with a timeout, without losing a cancellation.

On Python 3.11, ``asyncio.wait_for`` can swallow a cancellation that arrives as its timeout
fires; a task stopped that way stays "cancelling" forever. The worker hit exactly this at
shutdown (about one run in three under load). ``asyncio.timeout`` tracks cancellations properly.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """True if ``event`` was set within ``timeout`` seconds (None: wait as long as it takes)."""
    try:
        async with asyncio.timeout(None if timeout is None else max(0.0, timeout)):
            await event.wait()
    except TimeoutError:
        return False
    return True
