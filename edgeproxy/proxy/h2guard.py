"""What an HTTP/2 client may send per second, counted on the raw frames.

`FrameGuard.frame()` is called by `h2wire.H2Wire` with each 9-byte frame
header as it is read, before the frame is acted on (a few operations per
frame, not per byte), and refuses a connection that:

- resets more than `max_resets` streams a second (rapid reset, CVE-2023-44487:
  each reset stream made the server start work it then threw away);
- sends more than `max_control` SETTINGS, PING or PRIORITY frames a second
  (each makes us answer or update state: SETTINGS/PING floods);
- sends more than `max_empty_data` DATA frames a second that carry nothing
  and do not end their stream (empty-DATA flood);
- sends a header block (HEADERS + its CONTINUATION frames) of more than
  `max_header_block` bytes (the CONTINUATION flood, CVE-2024-27316 and kin:
  servers buffered CONTINUATION frames until END_HEADERS, without bound).

A refused connection gets GOAWAY ENHANCE_YOUR_CALM (the wire sends it) and
the offending frame is not acted on.

It also refuses a frame longer than `max_frame` (our SETTINGS_MAX_FRAME_SIZE)
as soon as its header arrives, so a client announcing 16 MiB frames cannot
make the wire buffer them (FRAME_SIZE_ERROR, RFC 9113 §4.2).
"""

from __future__ import annotations

from typing import Final

DATA: Final = 0
HEADERS: Final = 1
PRIORITY: Final = 2
RST_STREAM: Final = 3
SETTINGS: Final = 4
PING: Final = 6
CONTINUATION: Final = 9

END_STREAM: Final = 0x1
ACK: Final = 0x1

OK: Final = 0
TOO_MANY_RESETS: Final = 1
TOO_MANY_CONTROL: Final = 2
TOO_MANY_EMPTY_DATA: Final = 3
HEADER_BLOCK_TOO_LARGE: Final = 4
FRAME_TOO_LARGE: Final = 5

WHY: Final = {
    TOO_MANY_RESETS: "too many RST_STREAM frames per second (rapid reset)",
    TOO_MANY_CONTROL: "too many SETTINGS/PING/PRIORITY frames per second",
    TOO_MANY_EMPTY_DATA: "too many empty DATA frames per second",
    HEADER_BLOCK_TOO_LARGE: "header block (HEADERS + CONTINUATION) over the size limit",
    FRAME_TOO_LARGE: "frame longer than SETTINGS_MAX_FRAME_SIZE",
}


class FrameGuard:
    """Counts frames by kind per one-second window; `frame()` says when a cap is passed."""

    __slots__ = (
        "block",
        "control",
        "empty_data",
        "max_control",
        "max_empty_data",
        "max_frame",
        "max_header_block",
        "max_resets",
        "resets",
        "window_start",
    )

    def __init__(
        self,
        *,
        max_resets: int,
        max_control: int,
        max_empty_data: int,
        max_header_block: int,
        max_frame: int = 16384,
    ) -> None:
        self.max_frame = max_frame
        self.max_resets = max_resets
        self.max_control = max_control
        self.max_empty_data = max_empty_data
        self.max_header_block = max_header_block
        self.block = 0
        self.window_start = 0.0
        self.resets = 0
        self.control = 0
        self.empty_data = 0

    def tick(self, now: float) -> None:
        """Start a new one-second window if the current one is over."""
        if now - self.window_start >= 1.0:
            self.window_start = now
            self.resets = self.control = self.empty_data = 0

    def frame(self, kind: int, flags: int, length: int) -> int:
        """Account for one frame header, as it is read; OK or the cap it passed."""
        if length > self.max_frame:
            return FRAME_TOO_LARGE
        if kind == DATA:
            if length == 0 and not flags & END_STREAM:
                self.empty_data += 1
                if self.empty_data > self.max_empty_data:
                    return TOO_MANY_EMPTY_DATA
        elif kind in (HEADERS, CONTINUATION):
            self.block = length if kind == HEADERS else self.block + length
            if self.block > self.max_header_block:
                return HEADER_BLOCK_TOO_LARGE
        elif kind == RST_STREAM:
            self.resets += 1
            if self.resets > self.max_resets:
                return TOO_MANY_RESETS
        elif kind == PRIORITY or ((kind in (SETTINGS, PING)) and not flags & ACK):
            self.control += 1
            if self.control > self.max_control:
                return TOO_MANY_CONTROL
        return OK
