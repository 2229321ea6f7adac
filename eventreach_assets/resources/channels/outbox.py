"""The local deployment's channels: one file per message in an outbox folder, no provider.

Each file is named from the message's idempotency key, so a resend overwrites instead of
duplicating, and is written atomically, so a reader (or a crash) never sees half a message.
That also makes sending from many threads safe: every write goes to its own temporary file
(`mkstemp`) and the rename is atomic, so two threads writing the same key leave one whole file.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from pathlib import Path

from pydantic import Field

from eventreach_assets.domain.delivery import OutboundMessage
from eventreach_assets.resources.channels.base import (
    EmailChannelResource,
    EmailWire,
    InAppChannelResource,
    PushChannelResource,
)

# Threads writing outbox files at once. Each write is fsynced, and fsync waits for the disk
# without holding the GIL, so a few threads overlap those waits with the next message's CPU
# work; past ~8 on this 2-core machine they only queue (docs/speed.md, "Outbox writers").
OUTBOX_CONCURRENCY = 8
_CONCURRENCY_HELP = "Sends in flight at once (threads writing files)."


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC  # the temporary file: ours alone, written whole


def outbox_file_stem(message: OutboundMessage) -> str:
    """A file name from the idempotency key: readable, filesystem-safe, and unique (a resend overwrites)."""
    key = message.idempotency_key
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:100]
    return f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def write_atomically(path: Path, data: bytes) -> None:
    """Write via a temporary file, fsync and rename, so a reader (or a crash) never sees half a message.

    The temporary name is this process's and thread's own (each writes one file at a time), so no
    random name is drawn per file; the folder is created on the first write that needs it.
    """
    temporary = f"{path.parent}/.{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        descriptor = os.open(temporary, _CREATE, 0o644)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(temporary, _CREATE, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_to_outbox(outbox_dir: str, message: OutboundMessage, suffix: str, data: bytes) -> str:
    """Put `data` in `outbox_dir` as `<stem><suffix>`; returns the stem."""
    stem = outbox_file_stem(message)
    write_atomically(Path(outbox_dir, f"{stem}{suffix}"), data)
    return stem


class LocalOutboxEmail(EmailChannelResource):
    """One `.eml` file per message in `outbox_dir`, openable in any mail client.

    The file name comes from the idempotency key, so a resend overwrites instead of
    duplicating; the returned id is the message's Message-ID.
    """

    outbox_dir: str = Field(description="Directory the .eml files go to, e.g. $EVENTREACH_HOME/outbox/email.")
    sender: str = Field(default="EventReach <events@eventreach.invalid>", description="From, when not rendered.")
    send_delay_seconds: float = Field(
        default=0.0, ge=0.0, description="How long each message's answer takes, like a provider's latency (tests)."
    )

    concurrency: int = Field(default=OUTBOX_CONCURRENCY, ge=1, le=256, description=_CONCURRENCY_HELP)

    def _deliver(self, message: OutboundMessage, payload: EmailWire) -> str:
        write_to_outbox(self.outbox_dir, message, ".eml", payload.data)
        if self.send_delay_seconds:  # accepted, the answer still on its way
            time.sleep(self.send_delay_seconds)
        return payload.message_id


class LocalOutboxPush(PushChannelResource):
    """One JSON file per message in `outbox_dir`, named from the idempotency key (a resend overwrites)."""

    outbox_dir: str = Field(description="Directory the .json files go to, e.g. $EVENTREACH_HOME/outbox/push.")

    concurrency: int = Field(default=OUTBOX_CONCURRENCY, ge=1, le=256, description=_CONCURRENCY_HELP)

    def _deliver(self, message: OutboundMessage, payload: bytes) -> str:
        return f"local-push:{write_to_outbox(self.outbox_dir, message, '.json', payload)}"


class LocalOutboxInApp(InAppChannelResource):
    """One JSON file per banner in `outbox_dir`, named from the idempotency key (a resend overwrites)."""

    outbox_dir: str = Field(description="Directory the .json files go to, e.g. $EVENTREACH_HOME/outbox/in-app.")

    concurrency: int = Field(default=OUTBOX_CONCURRENCY, ge=1, le=256, description=_CONCURRENCY_HELP)

    def _deliver(self, message: OutboundMessage, payload: bytes) -> str:
        return f"local-in-app:{write_to_outbox(self.outbox_dir, message, '.json', payload)}"
