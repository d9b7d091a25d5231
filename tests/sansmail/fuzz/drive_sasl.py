"""The SASL mechanisms (sansmail.sasl), a server and a client of one mechanism talking, with
the fuzzer's pieces replacing messages; see fuzz_drivers."""

from __future__ import annotations

from fuzz_drivers import Decisions, Driver, InvariantError

from sansmail import sasl

cram = sasl.derive_cram_md5_credentials("secret")
scram1 = sasl.derive_scram_credentials("secret", b"salt", 4096, "sha1")
scram256 = sasl.derive_scram_credentials("secret", b"salt", 4096, "sha256")
credentials = {"CRAM-MD5": cram, "SCRAM-SHA-1": scram1, "SCRAM-SHA-256": scram256}


class SASLDriver(Driver):
    """A server mechanism talking to a client mechanism of the same name. Each piece
    of the stream is one turn: by the decisions' choice, the real message of the
    other side goes through, or the piece replaces it (a hostile client towards the
    server, a hostile server towards the client)."""

    def __init__(self, decisions: Decisions, name: str | None = None) -> None:
        super().__init__(decisions)
        names = sasl.MECHANISM_NAMES
        self.name = name or names[decisions.pick(len(names))]
        self.server = sasl.server_mechanism(
            self.name,
            nonce="servernonce_123",
            timestamp=1_700_000_000,
            hostname="mx.example",
            fake_salt_key=b"k" * 32,
            fake_iterations=4096,
        )
        nonce = "clientnonce" if "SCRAM" in self.name else None
        self.client: sasl.ClientMechanism | None = sasl.client_mechanism(
            self.name, "user", "secret", nonce=nonce
        )
        self.to_server: bytes | None = self.client.initial_response()
        self.to_client: bytes | None = None
        # Nothing replaced and every verdict honest so far: the exchange must end
        # in Success that the client believes.
        self.genuine = True
        if self.to_server is None or decisions.pick(2):
            self.genuine = self.to_server is None
            self.step(self.server.receive(None))

    def feed(self, data: bytes) -> None:
        # An empty SASL message is a message (SCRAM's last answer is one).
        if not self.done:
            self._receive(data)

    def eof(self) -> None:
        # The stream is over, the exchange may not be: play it out with the real
        # messages of both sides (decisions permitting), as far as it goes.
        for _ in range(8):
            if self.done:
                return
            self._receive(b"")

    def _receive(self, data: bytes) -> None:
        if self.server.done:
            self.done = True
            return
        if self.client is not None and self.to_client is not None:
            challenge = self.to_client
            if self.decisions.pick(2):
                challenge = data
                self.genuine = False
            self.to_client = None
            try:
                self.to_server = self.client.respond(challenge)
            except sasl.RemoteSASLError:
                self.client = None  # the client cancels; the server goes on alone
            else:
                if not isinstance(self.to_server, bytes):
                    raise InvariantError(f"client answer {self.to_server!r:.80}")
        if self.server_awaits_response():
            real = self.to_server
            message = real if real is not None and self.decisions.pick(2) == 0 else data
            self.genuine = self.genuine and message is real
            self.to_server = None
            self.step(self.server.receive(message))

    def server_awaits_response(self) -> bool:
        return self.server._awaits.name == "RESPONSE"

    def step(self, step: object) -> None:
        if isinstance(step, sasl.VerifyPassword):
            if step.authcid == "user" and step.password == "secret":
                ok = self.decisions.pick(4) != 3
            else:
                ok = self.decisions.pick(4) == 3
                if self.genuine:
                    raise InvariantError(f"the real client's {step!r} is not user/secret")
            self.genuine = self.genuine and ok
            self.step(self.server.accept() if ok else self.server.reject())
        elif isinstance(step, sasl.NeedCredentials):
            known = self.decisions.pick(4) != 3
            self.genuine = self.genuine and known and step.authcid == "user"
            self.step(self.server.provide(credentials[self.name] if known else None))
        elif isinstance(step, sasl.Challenge):
            if not isinstance(step.data, bytes) or len(step.data) > sasl.MAX_MESSAGE_OCTETS:
                raise InvariantError(f"challenge data {step.data!r:.80}")
            self.to_client = step.data
        elif isinstance(step, sasl.Success):
            if not self.server.done:
                raise InvariantError(f"{step!r} but the mechanism is not done")
            if self.client is not None:
                # The client must believe a genuine success (SCRAM checks the
                # server's proof in `data`) and may refuse any other.
                try:
                    self.client.verify_server_final(step.data)
                except sasl.RemoteSASLError as exc:
                    if self.genuine:
                        raise InvariantError(
                            f"the client refused a genuine success: {exc}"
                        ) from None
            self.done = True
        elif isinstance(step, sasl.Failure):
            if not self.server.done or not isinstance(step.reason, str):
                raise InvariantError(f"{step!r} but the mechanism is not done")
            if self.genuine:
                raise InvariantError(f"a genuine exchange failed: {step.reason}")
            self.done = True
        else:
            raise InvariantError(f"undocumented step {step!r}")

    def _pump(self) -> None:
        pass

    def _check(self) -> None:
        pass


DRIVER = SASLDriver
