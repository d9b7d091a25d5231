"""The stateful hypothesis test every protocol core shares: rules feed fragments (valid
protocol pieces, invalid ones and raw bytes) in any order and at any cut, step through a
valid session (so that the deep states are reached, with the random input interleaved),
pump the core with an application whose answers the drawn decisions choose, and close
the input; the invariants of `fuzz_drivers` are checked after every step."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fuzz_drivers import Decisions, Driver
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

# Kept small so that tests/sansmail/fuzz/ stays within its few seconds; the atheris
# targets (fuzz/) are where the long runs happen.
MACHINE_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _line(data: bytes) -> bytes:
    return data.replace(b"\r", b"").replace(b"\n", b"") + b"\r\n"


def chunks(fragments: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """A run of fragments, a random line, raw bytes, or a fragment cut short. Raw bytes
    are the rarest: most hold a bare CR or LF, which ends a session at once."""
    fragment = st.sampled_from(list(fragments))
    return st.one_of(
        st.lists(fragment, min_size=2, max_size=6).map(b"".join),
        st.binary(min_size=1, max_size=24).map(_line),
        st.binary(min_size=1, max_size=24),
        st.tuples(fragment, st.integers(min_value=1)).map(
            lambda t: t[0][: t[1] % max(1, len(t[0])) + 1]
        ),
    )


def machine(
    make: Callable[[Decisions], Driver],
    fragments: Sequence[bytes],
    script: Sequence[bytes] = (),
    *,
    steps: int = 40,
) -> type[RuleBasedStateMachine]:
    """A state machine test class for the driver `make` builds; `script` is a valid
    session, fed one piece per `follow_script` step (and again from the top)."""

    class CoreMachine(RuleBasedStateMachine):
        driver: Driver
        decisions: Decisions
        steps = 0
        sessions = 0

        @initialize(choices=st.binary(max_size=6))
        def start(self, choices: bytes) -> None:
            self.decisions = Decisions(choices)
            self.driver = make(self.decisions)
            self.driver.pump()
            self.position = 0

        @rule(data=chunks(fragments))
        def receive(self, data: bytes) -> None:
            self.driver.feed(data)

        @rule(data=st.sampled_from(list(fragments)), choices=st.binary(max_size=4))
        def receive_fragment(self, data: bytes, choices: bytes) -> None:
            self.decisions.extend(choices)
            self.driver.feed(data)
            self.driver.pump()

        @precondition(lambda self: bool(script))
        @rule(steps=st.integers(min_value=1, max_value=4))
        def follow_script(self, steps: int) -> None:
            for _ in range(steps):
                self.driver.feed(script[self.position % len(script)])
                self.position += 1
                self.driver.pump()

        @rule(choices=st.binary(max_size=6))
        def pump(self, choices: bytes) -> None:
            self.decisions.extend(choices)
            self.driver.pump()

        # Closing ends the session; only after a while, or most runs would be short.
        @precondition(lambda self: self.steps > steps // 2)
        @rule()
        def close(self) -> None:
            self.driver.eof()
            self.driver.pump()

        @invariant()
        def documented(self) -> None:
            self.steps += 1
            if hasattr(self, "driver"):
                self.driver.check()
                if self.driver.done:
                    # A session ended (QUIT, a fatal error ...): go on with a new one,
                    # so no step of the example is wasted.
                    self.sessions += 1
                    self.driver = make(self.decisions)
                    self.driver.pump()
                    self.position = 0

    CoreMachine.TestCase.settings = settings(MACHINE_SETTINGS, stateful_step_count=steps)
    return CoreMachine
