"""What the SMTP sessions need to take mail beyond their own users: the aliases, SRS,
and the outbound queue (with the runner to wake when a message is queued)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import attrs

from sansmail.config import Config
from sansmail.mail import srs
from sansmail.mail.address import Address
from sansmail.mail.policy import ClientAddress
from sansmail.mail.recipients import Resolution, resolve_recipient
from sansmail.storage.aliasfile import AliasSource
from sansmail.storage.queue import QueueStore
from sansmail.storage.users import UserStore

__all__ = ["Intake"]


def _nothing(_queue_id: str) -> None:
    return None


@attrs.define
class Intake:
    """Shared by every SMTP session of one process."""

    config: Config
    queue: QueueStore
    aliases: AliasSource
    srs_key: bytes
    #: Called with the queue id after a message was queued: the queue runner of this
    #: process, if any.
    wake: Callable[[str], None] = _nothing
    clock: Callable[[], float] = time.time

    def resolve(
        self,
        rcpt: Address,
        *,
        restrictions: Iterable[str],
        sasl_authenticated: bool,
        client_ip: ClientAddress,
        users: UserStore,
    ) -> Resolution:
        """One RCPT TO: `sansmail.mail.recipients.resolve_recipient` with our state."""
        config = self.config
        return resolve_recipient(
            rcpt,
            restrictions=restrictions,
            sasl_authenticated=sasl_authenticated,
            client_ip=client_ip,
            mynetworks=config.mynetworks,
            domains=config.domains,
            user_exists=users.__contains__,
            aliases=self.aliases.table,
            read_include=self.aliases.read_include,
            recipient_delimiter=config.recipient_delimiter,
            srs_key=self.srs_key,
            today=srs.today(self.clock()),
        )

    def forward_sender(self, reverse_path: Address | None) -> Address | None:
        """The envelope sender for copies an alias forwards outside: SRS at our first
        domain, so the next hop's SPF check passes and bounces find their way back. The
        null sender stays null, and our own senders need no rewriting."""
        if reverse_path is None or reverse_path.domain in self.config.domains:
            return reverse_path
        try:
            return srs.forward(
                reverse_path,
                domain=self.config.domains[0],
                key=self.srs_key,
                day=srs.today(self.clock()),
            )
        except srs.SRSError:
            # Too long for a local part (RFC 5321 §4.5.3.1.1) once rewritten: forward
            # with the original sender, as a server without SRS would.
            return reverse_path
