"""Clip upload, the device's half: judged and requested clips to the server, in chunks, within a
daily byte budget, never ahead of detections.

Which clips: a clip whose detection a guide confirmed or rejected (a labelled example only the
guide on the trail could make), and one whose detection the server's latest clip request names
(device/contracts/clip.py: retained, always complete, stored whole by device/store/uploads.py).
Judged clips go first: they are few (a tour's verdicts) and cannot be had again, while a
request may name up to 500 clips, more than a day's budget, and the server keeps asking for
what it lacks; each group goes oldest first, since retention deletes the oldest first.

How: one chunk of a clip in flight at a time, from where the server's last ack said it stands
(the ack then answers that chunk alone: device/store/uploads.py says how each is read), and one
chunk per clip per pass, so several clips move at once. A chunk is marked in flight and counted
against today's budget (resends too) in one transaction before it is published; the broker's
PUBACK makes it sent; its ack moves the clip on. A chunk whose ack does not come within
`[sync] receipt_timeout_s` is sent again from the acked offset (the server ignores what it
holds). Everything is in SQLite, so an upload resumes after a restart, a reconnect or a server
restart: the acks the server published meanwhile wait in the device's persistent session.

Budget: a clip starts or goes on only when all of what is left of it fits in what is left of
today's budget (UTC day) after what the clips ahead of it still need: one that no longer fits
waits for tomorrow (resuming where it stands), and smaller ones behind it may go; a clip under
way is never starved by one that started behind it. The bytes counted are whole payloads
(header line and chunk), resends included. A clip larger than a day's budget is never sent.

Never a withheld clip: a detection a person was heard in or next to (`clip_withheld`, carried in
its payload so the server knows no clip will come) has none on disk, and the wanted clips leave
it out (device/store/uploads.py), so a guide's verdict or a server's request for it sends nothing.

Never ahead of detections: the worker runs a pass only after a drain left nothing pending
(device/sync/worker.py), a pass sends at most WAKE_BYTES, and it stops between chunks as soon as
`should_yield()` says new messages are queued. A clip's file is read on this thread, never the
pipeline's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from device.config import SyncSettings
from device.contracts.clip import (
    MAX_CHUNK_BYTES, MAX_CLIP_BYTES, ClipChunk, clip_topic, encode_chunk, parse_ack, parse_request,
)
from device.domain import utc_now
from device.store.uploads import AckOutcome, UploadCandidate, utc_day

log = logging.getLogger(__name__)

WAKE_BYTES = 256 * 1024
"""Chunk bytes one pass may send: about 2 s of a 1 Mbit/s link, the longest a pass keeps the
worker from its next wake (a detection queued meanwhile stops the pass sooner)."""
CANDIDATES = 64
"""Clips one pass looks at, each given at most one chunk (the next waits for its ack)."""
HEADER_SLACK = 24
"""Bytes a later chunk's header may be longer than this one's (more digits in its offset): the
slack in the estimate of what is left of a clip on the wire."""
PUBACK_TIMEOUT_S = 10.0
"""Longest wait for one chunk's PUBACK; longer means the link is too poor to count on."""


@dataclass(frozen=True)
class ChunkSent:
    """One chunk the broker acknowledged (what `on_sent` is called with)."""

    clip_id: str
    offset: int
    data_bytes: int
    wire_bytes: int
    """The whole payload (header line and bytes): what the budget counts."""


@dataclass
class ClipPassReport:
    """What one pass did."""

    chunks: int = 0
    wire_bytes: int = 0
    started: int = 0
    """Uploads begun (the file's sha256 read)."""
    waiting: int = 0
    """Clips with a chunk in flight, waiting for its ack."""
    over_budget: int = 0
    """Clips that do not fit in what is left of today's budget."""
    gone: int = 0
    yielded: bool = False
    """Stopped early: new messages were queued."""
    error: str | None = None
    """Why the pass stopped on the link (lost, no PUBACK), or None."""


class ClipUploader:
    """Sends clips over a session and applies the server's clip messages; one per thread (its
    store is the thread's).

    Args:
        clock: the time the budget's day and the ack timeout are read from (tests move it).
        on_sent: called on this thread after each chunk's PUBACK.
    """

    def __init__(self, store, settings: SyncSettings, device_id: str, clock: Callable[[], datetime] = utc_now,
                 on_sent: Callable[[ChunkSent], None] | None = None, puback_timeout_s: float = PUBACK_TIMEOUT_S):
        self.store = store
        self.device_id = device_id
        self.budget_bytes = int(settings.clip_budget_mb_per_day * 1_000_000)
        self.chunk_bytes = min(int(settings.clip_chunk_kb) * 1024, MAX_CHUNK_BYTES)
        self.ack_timeout_s = settings.receipt_timeout_s
        self.clock = clock
        self.on_sent = on_sent
        self.puback_timeout_s = puback_timeout_s
        self.topic = clip_topic(device_id)
        self.broker_refusal: str | None = None
        """Why the broker refused a chunk (its ACL): no more chunks go over this uploader."""
        self._warned: set[str] = set()

    @property
    def enabled(self) -> bool:
        """`[sync] clip_budget_mb_per_day` above 0."""
        return self.budget_bytes > 0

    # -- what the server says ---------------------------------------------------------------
    def apply_messages(self, session, wait_s: float = 0.0) -> AckOutcome | None:
        """Apply the clip acks and requests `session` has queued (waiting up to `wait_s` for a
        first one), then acknowledge them to the broker; None when none had come.

        Raises:
            StoreError: nothing could be recorded; the messages are queued again, unacknowledged.
        """
        from device.store import StoreError

        items = session.take_clip_messages(wait_s)
        if not items:
            return None
        acks, requests, good, bad = [], [], [], []
        for item in items:
            parsed = self._check(item, session)
            (bad if parsed is None else good).append(item)
            if parsed is not None:
                (requests if item.topic == session.clip_topics[1] else acks).append(parsed)
        outcome = AckOutcome()
        if good:
            try:
                outcome = self.store.apply_clip_messages(acks, requests, self.clock())
            except StoreError:
                session.requeue(good)
                raise
        for item in good + bad:
            session.ack(item)
        if outcome.given_up:
            log.warning("sync: the server refused %d clip(s) twice (their files no longer hash as they did); "
                        "given up (explorer sync --status counts them)", outcome.given_up)
        return outcome

    def _check(self, item, session):
        """The item's ack or request, or None (logged) when it is not one this device may apply."""
        parse, what = (parse_request, "clip request") if item.topic == session.clip_topics[1] else (parse_ack, "clip ack")
        try:
            parsed = parse(item.payload)
        except ValueError as exc:
            log.warning("sync: ignored a malformed %s on %s: %s", what, item.topic, exc)
            return None
        if parsed.device_id != self.device_id:
            log.warning("sync: ignored a %s for device %r on %s (this is %r)", what, parsed.device_id, item.topic,
                        self.device_id)
            return None
        return parsed

    # -- sending ------------------------------------------------------------------------------
    def send(self, session, should_yield: Callable[[], bool] = lambda: False,
             max_bytes: int = WAKE_BYTES) -> ClipPassReport:
        """One pass: at most one chunk per wanted clip, at most `max_bytes` in all, stopping
        between chunks when `should_yield()` is true. Never raises for a clip (a missing file
        marks it gone); a store failure raises StoreError."""
        if not self.enabled or self.broker_refusal or not session.connected:
            return ClipPassReport()
        if session.clip_subscribe_error:
            self._warn_once(session.clip_subscribe_error)
            return ClipPassReport()
        now = self.clock()
        done = _Pass(budget_left=self.budget_bytes - self.store.clip_bytes_sent_on(utc_day(now)))
        for candidate in self.store.clip_upload_candidates(CANDIDATES):
            if done.wire_bytes >= max_bytes or done.error or self.broker_refusal:
                break
            if should_yield():
                done.yielded = True
                break
            self._one(session, candidate, done, now)
        report = done.report()
        if report.chunks or report.gone:
            log.info("sync: clips: %d chunk(s), %d bytes sent; %d waiting for an ack, %d over today's budget%s",
                     report.chunks, report.wire_bytes, report.waiting, report.over_budget,
                     f" ({report.error})" if report.error else "")
        return report

    def _one(self, session, clip: UploadCandidate, done: "_Pass", now: datetime) -> None:
        """Give one clip its next chunk if it may have one. The clips ahead of it keep what they
        still need of today's budget (`done.reserved`), so a clip under way is never starved by
        one that starts behind it."""
        if clip.deleted:
            return self._gone(clip, "retention deleted its file", done)
        if not clip.started:
            try:
                sha256, size = _hash_file(clip.path)
            except OSError as exc:
                return self._gone(clip, f"cannot read {clip.path}: {exc.strerror or exc}", done)
            if not 0 < size <= MAX_CLIP_BYTES:
                return self._gone(clip, f"{size} bytes: not a clip the wire contract carries", done)
            self.store.begin_clip_upload(clip.clip_id, sha256, size, now)
            clip = dataclasses.replace(clip, sha256=sha256, size_bytes=size)
            done.started += 1
        available = done.budget_left - done.reserved
        if clip.in_flight and clip.sent_on is not None and (now - clip.sent_on).total_seconds() < self.ack_timeout_s:
            done.waiting += 1
            rest = self._wire_estimate(clip, clip.sent_bytes)
            done.reserved += rest if rest <= available else 0
            return None
        offset = clip.acked_bytes  # a chunk whose ack never came goes again from here
        need = self._wire_estimate(clip, offset)
        if need > available:  # waits for tomorrow; a smaller clip behind it may still fit
            done.over_budget += 1
            return None
        length = min(self.chunk_bytes, clip.size_bytes - offset)
        try:
            data = _read(clip.path, offset, length)
        except OSError as exc:
            return self._gone(clip, f"cannot read {clip.path}: {exc.strerror or exc}", done)
        if len(data) < length:
            return self._gone(clip, f"{clip.path} is no longer the {clip.size_bytes} bytes it was", done)
        payload = encode_chunk(self._chunk(clip, offset, data))
        end = offset + len(data)
        outcome = self.store.reserve_clip_chunk(clip.clip_id, (clip.acked_bytes, clip.sent_bytes), end,
                                                len(payload), self.budget_bytes, now)
        if outcome != "ok":  # 'budget': another process spent it; 'moved': an ack came meanwhile
            done.over_budget += outcome == "budget"
            return None
        done.budget_left -= len(payload)
        done.reserved += max(0, need - len(payload))
        error = self._publish(session, payload)
        if error is not None:
            self.store.unsend_clip_chunk(clip.clip_id, end, self.clock())
            done.error = None if self.broker_refusal else error
            return None
        done.chunks += 1
        done.wire_bytes += len(payload)
        done.waiting += 1
        if self.on_sent is not None:
            self.on_sent(ChunkSent(clip.clip_id, offset, len(data), len(payload)))
        return None

    def _chunk(self, clip: UploadCandidate, offset: int, data: bytes) -> ClipChunk:
        return ClipChunk(self.device_id, clip.clip_id, clip.detection_id, clip.sha256, clip.size_bytes, offset, data,
                         clip.sample_rate_hz, clip.duration_s, clip.start_s)

    def _wire_estimate(self, clip: UploadCandidate, offset: int) -> int:
        """The payload bytes the rest of the clip from `offset` will take: its bytes and, per
        chunk, a header like its first (with some slack for longer numbers)."""
        left = clip.size_bytes - offset
        header = len(encode_chunk(self._chunk(clip, 0, b"\0"))) - 1 + HEADER_SLACK
        return left + math.ceil(left / self.chunk_bytes) * header

    def _gone(self, clip: UploadCandidate, reason: str, done: "_Pass") -> None:
        log.info("sync: clip %s of detection %s is not sent: %s", clip.clip_id, clip.detection_id, reason)
        self.store.mark_clip_gone(clip.clip_id, clip.size_bytes or clip.clip_size_bytes, reason, self.clock())
        done.gone += 1

    def _publish(self, session, payload: bytes) -> str | None:
        """Publish one chunk (QoS 1) and wait for its PUBACK: None, or why it was not taken."""
        import paho.mqtt.client as mqtt

        info = session.publish(self.topic, payload)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
            return f"publish refused by the client: {mqtt.error_string(info.rc)}"
        deadline = time.monotonic() + self.puback_timeout_s
        try:
            while not info.is_published() and session.lost is None and time.monotonic() < deadline:
                info.wait_for_publish(0.05)
        except (RuntimeError, ValueError) as exc:
            return str(exc)
        if not info.is_published():
            return session.lost or f"the broker sent no PUBACK for a clip chunk within {self.puback_timeout_s:.0f} s"
        refusal = session.refusal_of(info.mid)
        if refusal is not None:
            self.broker_refusal = f"the broker refuses this device's clip chunks ({refusal})"
            log.error("sync: %s; no clip is sent until the next start", self.broker_refusal)
            return self.broker_refusal
        return None

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.error("sync: %s; no clip is sent over this connection", message)


@dataclass
class _Pass(ClipPassReport):
    """What a pass has done so far (mutable), and the budget it has left."""

    budget_left: int = 0
    reserved: int = 0
    """Bytes the clips already under way still need today, ahead of the next clip."""

    def report(self) -> ClipPassReport:
        return ClipPassReport(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ClipPassReport)})


def _hash_file(path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _read(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(length)
