"""The local deployment's channels: one file per message in an outbox folder, no provider.

Each file is named from the message's idempotency key, so a resend overwrites instead of
duplicating, and is written atomically, so a reader (or a crash) never sees half a message.
That also makes sending from many threads safe: every write goes to its own temporary file
(named for the process and thread) and the rename is atomic, so two threads writing the same key
leave one whole file.

The send loop hands the email outbox a batch at a time (`send_many`, `batch_size` messages): every
file of the batch is written to its temporary name, one `syncfs` makes their data durable, the
renames follow, and one `fsync` of the folder makes the names durable before the answers go back
(and so before the ledger calls them sent). One durability barrier per batch instead of one
`fsync` per file, with the same guarantees (docs/speed.md, "The outbox's batches").
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
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
# work; past ~8 on this 2-core machine they only queue (docs/speed.md, "Channel concurrency").
OUTBOX_CONCURRENCY = 8
_CONCURRENCY_HELP = "Sends in flight at once (threads writing files)."
# The email outbox: batches of 32 files per durability barrier, two batches in flight (one writing its
# files while the other waits for the disk): docs/speed.md, "The outbox's batches".
OUTBOX_EMAIL_BATCH = 32
OUTBOX_EMAIL_CONCURRENCY = 2 * OUTBOX_EMAIL_BATCH


def _find_syncfs() -> Callable[[int], int] | None:
    """Linux's syncfs(2) (flush one file system's dirty data and journal in one call); None elsewhere."""
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None


_SYNCFS = _find_syncfs()


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


def _temporary_name(name: str, index: int) -> str:
    """This process's and thread's own temporary name for file `index` of a batch (a name may come twice)."""
    return f".{name}.{os.getpid()}.{threading.get_ident()}.{index}.tmp"


def _flush_to_disk(folder: int, descriptors: list[int]) -> None:
    """Make the data written through `descriptors` durable: one syncfs of the folder's file system where
    Linux has it (one journal commit for the whole batch), else an fsync per file."""
    if _SYNCFS is not None and _SYNCFS(folder) == 0:
        return
    for descriptor in descriptors:
        os.fsync(descriptor)


def _write_temporary(folder: int, temporary: str, data: bytes) -> int:
    """`data` in the file `temporary` under the folder opened as `folder`; its open descriptor."""
    descriptor = os.open(temporary, _CREATE, 0o644, dir_fd=folder)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view) :]
    except BaseException:
        os.close(descriptor)
        os.unlink(temporary, dir_fd=folder)
        raise
    return descriptor


def write_all_atomically(directory: str, files: Sequence[tuple[str, bytes]]) -> list[OSError | None]:
    """Put each (name, data) in `directory`, complete or absent, behind one durability barrier for them all.

    Every file is written to its temporary name; one syncfs (else an fsync each) makes their data durable;
    then the renames; then one fsync of the folder makes the names durable. A name therefore only ever
    points at a complete file, and when this returns every file whose answer is None is on disk under its
    name. Per file, the OSError that kept it out; a failed barrier raises (no name is promised then).
    """
    Path(directory).mkdir(parents=True, exist_ok=True)
    folder = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    errors: list[OSError | None] = [None] * len(files)
    written: dict[int, int] = {}  # file index -> open descriptor of its temporary file
    try:
        for index, (name, data) in enumerate(files):
            try:
                written[index] = _write_temporary(folder, _temporary_name(name, index), data)
            except OSError as error:
                errors[index] = error
        try:
            _flush_to_disk(folder, list(written.values()))
        except BaseException:
            for index in written:
                Path(directory, _temporary_name(files[index][0], index)).unlink(missing_ok=True)
            raise
        finally:
            for descriptor in written.values():
                os.close(descriptor)
        for index in written:
            name = files[index][0]
            try:
                os.replace(_temporary_name(name, index), name, src_dir_fd=folder, dst_dir_fd=folder)
            except OSError as error:
                errors[index] = error
        os.fsync(folder)  # the renames: on disk before anyone is told the files are there
    finally:
        os.close(folder)
    return errors


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

    concurrency: int = Field(default=OUTBOX_EMAIL_CONCURRENCY, ge=1, le=256, description=_CONCURRENCY_HELP)
    files_per_batch: int = Field(
        default=OUTBOX_EMAIL_BATCH, ge=1, le=256, description="Files written behind one durability barrier."
    )

    @property
    def batch_size(self) -> int:
        return self.files_per_batch

    def _deliver(self, message: OutboundMessage, payload: EmailWire) -> str:
        write_to_outbox(self.outbox_dir, message, ".eml", payload.data)
        if self.send_delay_seconds:  # accepted, the answer still on its way
            time.sleep(self.send_delay_seconds)
        return payload.message_id

    def send_many(self, messages: Sequence[OutboundMessage]) -> list[str | BaseException]:
        """Write the batch's files behind one durability barrier (`write_all_atomically`); per message its
        Message-ID, or what kept it out (PermanentSendError: it cannot be encoded; OSError: not written)."""
        answers: list[str | BaseException] = []
        files: list[tuple[str, bytes]] = []
        slots: list[int] = []  # the answer each file's outcome goes to
        bucket = self._pacer()
        for message in messages:
            try:
                payload = self.encode(message)
            except Exception as error:  # the send loop records it
                answers.append(error)
                continue
            bucket.acquire()
            slots.append(len(answers))
            answers.append(payload.message_id)
            files.append((f"{outbox_file_stem(message)}.eml", payload.data))
        for slot, error in zip(slots, write_all_atomically(self.outbox_dir, files), strict=True):
            if error is not None:
                answers[slot] = error
        if self.send_delay_seconds and files:  # accepted, the answers still on their way
            time.sleep(self.send_delay_seconds)
        return answers


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
