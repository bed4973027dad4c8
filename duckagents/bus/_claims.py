"""Who publishes the one terminal of an attempt: :class:`TerminalClaims`.

An attempt (subject ``R#k``) is answered by its agent, or, when the agent hangs past the deadline or is
gone, by the router on its behalf. On a busy machine both can decide at nearly the same moment (the
agent's answer comes just after the router gave up waiting for it), and a signal already handed to a
task is in no buffer either could look at. So whoever publishes an attempt's terminal first *takes* its
claim, synchronously, right before publishing; the other one then finds it taken and stays silent. The
router opens the claim when it dispatches the attempt.
"""

from __future__ import annotations

__all__ = ["DEFAULT_CLAIM_CAPACITY", "TerminalClaims"]

#: Claims kept at most. An open claim lives as long as its attempt; a claim the router took on an agent's
#: behalf lives until the agent (if it ever answers) comes to take it too. Past the capacity the oldest
#: are forgotten: a forgotten subject is treated as one nobody coordinates.
DEFAULT_CLAIM_CAPACITY = 65_536


class TerminalClaims:
    """The claims on attempts' terminals, by attempt subject (bounded: see
    :data:`DEFAULT_CLAIM_CAPACITY`)."""

    __slots__ = ("_taken", "capacity", "forgotten")

    def __init__(self, capacity: int = DEFAULT_CLAIM_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        #: Claims dropped to stay within the capacity (each one a subject left uncoordinated).
        self.forgotten = 0
        # Insertion-ordered: the first entries are the oldest. Value: taken already.
        self._taken: dict[str, bool] = {}

    def __len__(self) -> int:
        return len(self._taken)

    def open(self, subject: str) -> None:
        """Coordinate the terminal of ``subject`` (the router, before it dispatches the attempt)."""
        taken = self._taken
        taken[subject] = False
        while len(taken) > self.capacity:
            del taken[next(iter(taken))]
            self.forgotten += 1

    def take(self, subject: str | None) -> bool:
        """True when the caller may publish ``subject``'s terminal: nobody took it yet (it is the
        caller's now), or nobody coordinates it. False when the other party took it first: the caller
        must stay silent (and, both having spoken, the claim is done with)."""
        if subject is None:
            return True
        taken = self._taken.get(subject)
        if taken is None:
            return True
        if not taken:
            self._taken[subject] = True
            return True
        del self._taken[subject]
        return False

    def forget(self, subject: str) -> None:
        """Done with ``subject``: its terminal was published by the party that took the claim and the
        other one will not try (the router, once it received the agent's terminal)."""
        self._taken.pop(subject, None)
