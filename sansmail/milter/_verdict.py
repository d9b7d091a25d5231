"""What one milter's answers at end of message amount to, folded into one `Outcome`.

The connection hands modifications and the verdict out one by one, as they arrive; an
application that runs several milters in turn wants, per milter, one decision and the
list of changes to apply in order. `fold` makes that, and `body_chunks` cuts a body into
the chunks SMFIC_BODY carries. Both are pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import attrs

from sansmail.milter._events import (
    Accept,
    Continue,
    Event,
    Modification,
    Progress,
    Quarantine,
    ReplaceBody,
    Verdict,
)
from sansmail.milter._protocol import MAX_CHUNK

__all__ = ["Outcome", "body_chunks", "fold"]


@attrs.frozen(kw_only=True)
class Outcome:
    """One milter's end of message.

    `verdict` is the final reply (`Continue` and `Accept` both mean deliver, with the
    changes). `modifications` are the header, recipient and sender changes in the order
    the milter sent them; `body` is the whole replacement body, or None when the milter
    left the body alone; `quarantine` the reason of the last SMFIR_QUARANTINE, if any.
    With a refusing verdict (reject, tempfail, discard, reply code) the application
    drops the changes: there is no message left to change.
    """

    verdict: Verdict
    modifications: tuple[Modification, ...] = ()
    body: bytes | None = None
    quarantine: str | None = None

    @property
    def delivers(self) -> bool:
        """The message goes on (perhaps changed, perhaps into quarantine)."""
        return isinstance(self.verdict, Continue | Accept)


def fold(events: Iterable[Event]) -> Outcome:
    """The `Outcome` of the events a connection handed out from end of message to its
    verdict (the last event). Progress is dropped."""
    modifications: list[Modification] = []
    body: list[bytes] | None = None
    quarantine = None
    for event in events:
        if isinstance(event, Verdict):
            return Outcome(
                verdict=event,
                modifications=tuple(modifications),
                body=None if body is None else b"".join(body),
                quarantine=quarantine,
            )
        if isinstance(event, ReplaceBody):
            body = [] if body is None else body
            body.append(event.data)
        elif isinstance(event, Quarantine):
            quarantine = event.reason
        elif isinstance(event, Modification):
            modifications.append(event)
        elif not isinstance(event, Progress):
            raise ValueError(f"{event!r} is not part of an end of message")
    raise ValueError("no verdict: the end of message is not over")


def body_chunks(body: bytes, size: int = MAX_CHUNK) -> Iterator[bytes]:
    """`body` in pieces of at most `size` octets, each one SMFIC_BODY's worth."""
    if not 0 < size <= MAX_CHUNK:
        raise ValueError(f"size must be 1-{MAX_CHUNK}")
    view = memoryview(body)
    for start in range(0, len(body), size):
        yield bytes(view[start : start + size])
