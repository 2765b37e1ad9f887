"""Which injected fault a loopback origin applies: rules matched in order, counted, used up."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

F = TypeVar("F")


@dataclass(frozen=True, slots=True)
class Target:
    """What a request is about: its category (e.g. "resolve", "cdn", "ipfs") and match names."""

    category: str
    names: tuple[str, ...]


def name_matches(name: str, pattern: str) -> bool:
    """True when `name` equals `pattern` or ends with "/" + `pattern` (a path-suffix match)."""
    pattern = pattern.lstrip("/")
    return name.lstrip("/") == pattern or name.endswith("/" + pattern)


@dataclass(slots=True)
class FaultRule(Generic[F]):
    """One injected fault: where it applies (`path`, `on`) and how many more times (None: ever)."""

    fault: F
    path: str | None = None
    times: int | None = None
    on: str = "any"

    def matches(self, target: Target) -> bool:
        """Whether the rule applies to a request about `target`."""
        if self.on != "any" and self.on != target.category:
            return False
        pattern = self.path
        return pattern is None or any(name_matches(n, pattern) for n in target.names)


def _any_fault(fault: object) -> bool:
    return True


class FaultRules(Generic[F]):
    """The faults injected into one origin, in order; thread-safe (tests add, the server takes).

    `take(target, accept)` hands out the first rule's fault that matches `target` and that
    `accept` wants (the caller's stage: a connection, a request, a body of some range), counts
    one use and drops the rule once its `times` are used up.

    >>> rules: FaultRules[str] = FaultRules(categories={"cdn"})
    >>> rules.add("slow", path="model.onnx", times=1)
    >>> rules.take(Target("cdn", ("/cdn/abc", "org/model/model.onnx")))
    'slow'
    >>> rules.take(Target("cdn", ("/cdn/abc", "org/model/model.onnx"))) is None
    True
    """

    def __init__(self, categories: Iterable[str] = (), *, owner: str = "this origin") -> None:
        self.categories = frozenset(categories)
        self.owner = owner
        self._lock = threading.Lock()
        self._rules: list[FaultRule[F]] = []

    def add(
        self, fault: F, *, path: str | None = None, times: int | None = None, on: str = "any"
    ) -> None:
        """Apply `fault` to the next `times` matching requests (None: forever), after older ones."""
        if on != "any" and on not in self.categories:
            raise ValueError(f"{self.owner} has no {on!r} requests")
        if times is not None and times < 1:
            raise ValueError(f"times must be >= 1 or None, got {times}")
        with self._lock:
            self._rules.append(FaultRule(fault, path, times, on))

    def take(self, target: Target, accept: Callable[[F], bool] = _any_fault) -> F | None:
        """The fault of the first rule matching `target` that `accept`s it, one use counted."""
        with self._lock:
            for rule in self._rules:
                if not accept(rule.fault) or not rule.matches(target):
                    continue
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        self._rules.remove(rule)
                return rule.fault
        return None

    def clear(self) -> None:
        """Remove every rule."""
        with self._lock:
            self._rules.clear()


__all__ = ["FaultRule", "FaultRules", "Target", "name_matches"]
