"""Detect-and-repair rules: the app's session invariants, checked before the session is saved.

    from sessionlock.rules import Ruleset, index_within, one_of, required, type_of

    exam_rules = Ruleset([
        type_of("exam_question_ids", list, default=list),
        required("exam_current", 0),
        type_of("exam_current", int, default=0),
        index_within("exam_current", "exam_question_ids"),
        required("selected_question_type", "basic"),
        one_of("selected_question_type", ("basic", "specialist"), default="basic"),
    ])
    session = {"exam_question_ids": [7, 8, 9], "exam_current": 11}
    report = exam_rules.apply(session)
    assert session == {"exam_question_ids": [7, 8, 9], "exam_current": 2,
                       "selected_question_type": "basic"}
    assert report.names == ("index_within:exam_current", "required:selected_question_type")

A rule has a name, a ``detect`` (what is wrong, or None) and a ``repair`` (mutate the session
so the rule holds). A :class:`Ruleset` runs detect, repair, detect again; a rule still
violated is reported as unrepaired, never looped on. Every repair is reported: a warning on
the ``sessionlock`` logger naming the rule and the keys it changed (never their values), a
call of the ``counter`` hook, and, when ``header`` is set, a response header naming the
rules that fired. The framework adapters (:mod:`sessionlock.flask`, :mod:`sessionlock.django`,
:mod:`sessionlock.starlette`, :mod:`sessionlock.environ`) run a ruleset after the handler
and before the session is saved.

Rules see the session as a mapping of JSON-like values (what session stores serialize),
through ``in``, ``get``, ``[]``, ``[]=`` and ``keys()`` only: Django's session object is not
iterable, Beaker's is a proxy.
A lock prevents new corruption; rules catch sessions corrupted before it (old bugs, requests
from before the deploy, the back button).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable, Collection, Iterable, Mapping, MutableMapping
from typing import Any, TypeAlias

from .errors import ConfigurationError

__all__ = [
    "Finding",
    "Report",
    "Rule",
    "Ruleset",
    "has_data",
    "index_within",
    "one_of",
    "required",
    "rule",
    "type_of",
]

logger = logging.getLogger("sessionlock")

Session: TypeAlias = MutableMapping[str, Any]
Detect: TypeAlias = Callable[[Session], "str | None"]
Repair: TypeAlias = Callable[[Session], None]
#: Called once per rule that fired: ``counter(rule_name, outcome)``, outcome one of
#: ``"repaired"``, ``"unrepaired"``, ``"failed"`` (the rule itself raised).
Counter: TypeAlias = Callable[[str, str], None]
#: The counter of a ruleset given none: a layer's ``metrics`` (see :mod:`sessionlock.metrics`).
fallback_counter: Counter | None = None

_MISSING: Any = object()
# Rule names end up in a response header and in logs: printable ASCII, no comma or space.
_NAME = re.compile(r"[!-+\--~]+")
_HEADER = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# What session stores keep in the session itself for their own bookkeeping (Beaker).
_BOOKKEEPING = frozenset({"_accessed_time", "_creation_time"})


class Rule:
    """One invariant: ``detect(session)`` says what is wrong (or None); ``repair`` fixes it."""

    __slots__ = ("detect", "name", "repair")

    def __init__(self, name: str, detect: Detect, repair: Repair) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigurationError(
                f"rule name {name!r} must be printable ASCII without spaces or commas"
            )
        self.name = name
        self.detect = detect
        self.repair = repair

    def __repr__(self) -> str:
        return f"Rule({self.name!r})"


class Finding:
    """What one rule found: its problem, the keys its repair changed, the outcome."""

    __slots__ = ("keys", "outcome", "problem", "rule")

    def __init__(self, rule: str, problem: str, keys: tuple[str, ...], outcome: str) -> None:
        self.rule = rule
        self.problem = problem
        self.keys = keys
        self.outcome = outcome  # "repaired", "unrepaired" or "failed"

    def __repr__(self) -> str:
        return f"Finding({self.rule!r}, {self.outcome}, keys={self.keys!r})"


class Report:
    """The findings of one :meth:`Ruleset.apply`; falsy when every rule held."""

    __slots__ = ("findings",)

    def __init__(self, findings: Iterable[Finding] = ()) -> None:
        self.findings = tuple(findings)

    def __bool__(self) -> bool:
        return bool(self.findings)

    @property
    def names(self) -> tuple[str, ...]:
        """The rules that fired, in order, each once."""
        return tuple(dict.fromkeys(f.rule for f in self.findings))

    @property
    def changed(self) -> bool:
        """Whether a repair changed the session (so the adapter must have it saved)."""
        return any(f.keys for f in self.findings)

    @property
    def unrepaired(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.outcome != "repaired")

    def __repr__(self) -> str:
        return f"Report({list(self.findings)!r})"


def has_data(session: Mapping[str, Any]) -> bool:
    """Whether the session holds anything besides its store's bookkeeping.

    The default ``when`` of a :class:`Ruleset`: filling defaults into an empty session would
    create a session for every visitor whose page merely reads it.
    """
    return any(key not in _BOOKKEEPING for key in session.keys())  # noqa: SIM118 (Django sessions: keys() only)


class Ruleset:
    """Rules applied in order, each repaired at most once, every outcome reported.

    when:    predicate of the session; rules run only when it is true (default
             :func:`has_data`: an empty session is left empty).
    counter: ``counter(rule_name, outcome)`` per rule that fired, e.g. a Prometheus counter.
             None (default): the ``metrics`` of the lock layer made last, if any.
    header:  a response header (e.g. ``"X-Session-Repaired"``) naming the rules that fired;
             off (None) by default, since it tells clients about server state.
    """

    def __init__(
        self,
        rules: Iterable[Rule],
        *,
        when: Callable[[Session], bool] | None = has_data,
        counter: Counter | None = None,
        header: str | None = None,
    ) -> None:
        self.rules = tuple(rules)
        for item in self.rules:
            if not isinstance(item, Rule):
                raise ConfigurationError(f"{item!r} is not a Rule (see sessionlock.rules.rule)")
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"rule names must be unique, got {names}")
        if header is not None and not _HEADER.fullmatch(header):
            raise ConfigurationError(f"header {header!r} is not a valid HTTP header name")
        self.when = when
        self.counter = counter
        self.header = header

    def apply(self, session: Session) -> Report:
        """Detect and repair every rule on ``session`` (mutated in place); report what fired.

        Each rule sees the repairs of the rules before it. After any repair, every rule is
        checked once more, so a later repair that broke an earlier rule is reported too.
        """
        findings: list[Finding] = []
        for item in self.rules:
            finding = self._apply_one(item, session)
            if finding is not None:
                findings.append(finding)
        if any(f.outcome == "repaired" for f in findings):
            fired = {f.rule for f in findings if f.outcome != "repaired"}
            for item in self.rules:
                if item.name in fired:
                    continue
                try:
                    problem = item.detect(session)
                except Exception as error:
                    findings.append(self._failed(item, "detect", error, ""))
                    continue
                if problem is not None:
                    finding = Finding(item.name, problem, (), "unrepaired")
                    findings.append(finding)
                    self._report(finding)
        return Report(findings)

    def enforce(self, session: Session) -> Report:
        """:meth:`apply` as the adapters use it: only on a session the app read or wrote.

        A session the app never accessed is not loaded, or (Flask, Django) would gain a
        ``Vary: Cookie`` by being read: its repair waits for a request that uses it. A
        repaired session is marked modified so the framework saves it.
        """
        if not _accessed(session):
            return Report()
        if self.when is not None and not self.when(session):
            return Report()
        report = self.apply(session)
        if report.changed:
            _mark_modified(session)
        return report

    def header_value(self, report: Report) -> str:
        return ", ".join(report.names)

    def _apply_one(self, item: Rule, session: Session) -> Finding | None:
        try:
            problem = item.detect(session)
        except Exception as error:
            return self._failed(item, "detect", error, "")
        if problem is None:
            return None
        before = _snapshot(session)
        try:
            item.repair(session)
            after = item.detect(session)
        except Exception as error:
            return self._failed(item, "repair", error, problem, _changed(before, session))
        outcome = "repaired" if after is None else "unrepaired"
        finding = Finding(item.name, after or problem, _changed(before, session), outcome)
        self._report(finding)
        return finding

    def _failed(
        self, item: Rule, step: str, error: Exception, problem: str, keys: tuple[str, ...] = ()
    ) -> Finding:
        # The exception's message may quote session values: only its type is logged.
        logger.error(
            "session rule %s raised %s in %s",
            item.name,
            type(error).__name__,
            step,
            extra={"sessionlock_rule": item.name, "sessionlock_outcome": "failed"},
        )
        finding = Finding(
            item.name, problem or f"{step} raised {type(error).__name__}", keys, "failed"
        )
        self._count(finding)
        return finding

    def _report(self, finding: Finding) -> None:
        keys = ", ".join(finding.keys) or "none"
        extra = {
            "sessionlock_rule": finding.rule,
            "sessionlock_keys": finding.keys,
            "sessionlock_outcome": finding.outcome,
        }
        if finding.outcome == "repaired":
            logger.warning(
                "session repaired by rule %s: changed %s", finding.rule, keys, extra=extra
            )
        else:
            logger.error(
                "session rule %s still violated after repair: changed %s",
                finding.rule,
                keys,
                extra=extra,
            )
        self._count(finding)

    def _count(self, finding: Finding) -> None:
        counter = self.counter if self.counter is not None else fallback_counter
        if counter is None:
            return
        try:
            counter(finding.rule, finding.outcome)
        except Exception as error:  # a metrics hook must not fail the request
            logger.error("sessionlock counter hook raised %s", type(error).__name__)

    def __repr__(self) -> str:
        return f"Ruleset({[r.name for r in self.rules]!r})"


def as_ruleset(rules: Ruleset | Iterable[Rule]) -> Ruleset:
    """A Ruleset from a Ruleset or a plain list of rules (what the adapters accept)."""
    return rules if isinstance(rules, Ruleset) else Ruleset(rules)


# -- built-in rules ----------------------------------------------------------------------


def required(key: str, default: Any, *, name: str | None = None) -> Rule:
    """``key`` is present; repair sets ``default`` (called if callable, else a deep copy)."""

    def detect(session: Session) -> str | None:
        return None if key in session else f"{key} is missing"

    def repair(session: Session) -> None:
        session[key] = _default(default)

    return Rule(name or f"required:{key}", detect, repair)


def type_of(
    key: str, kind: type | tuple[type, ...], default: Any, *, name: str | None = None
) -> Rule:
    """``key``, when present, is an instance of ``kind``; repair sets ``default``.

    ``bool`` is not accepted as an ``int`` (JSON tells them apart) unless ``kind`` names it.
    A missing key holds: combine with :func:`required` to demand presence.
    """
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not callable(default) and not _is_instance(default, kinds):
        raise ConfigurationError(f"type_of({key!r}): default {default!r} is not a {kind!r}")

    wanted = " or ".join(k.__name__ for k in kinds)
    return _value_rule(
        name or f"type_of:{key}",
        key,
        lambda value: _is_instance(value, kinds),
        lambda value: f"{key} is a {type(value).__name__}, not {wanted}",
        default,
    )


def one_of(key: str, values: Collection[Any], default: Any, *, name: str | None = None) -> Rule:
    """``key``, when present, is one of ``values`` (same type and value); repair sets ``default``.

    A missing key holds: combine with :func:`required` to demand presence.
    """
    allowed = tuple(values)
    if not callable(default) and not _is_one_of(default, allowed):
        raise ConfigurationError(f"one_of({key!r}): default {default!r} is not one of the values")

    return _value_rule(
        name or f"one_of:{key}",
        key,
        lambda value: _is_one_of(value, allowed),
        lambda value: f"{key} is not one of the allowed values",
        default,
    )


def _value_rule(
    name: str,
    key: str,
    accepts: Callable[[Any], bool],
    problem: Callable[[Any], str],
    default: Any,
) -> Rule:
    """A rule on one key's value when present: ``default`` replaces a value not accepted."""

    def detect(session: Session) -> str | None:
        value = session.get(key, _MISSING)
        if value is _MISSING or accepts(value):
            return None
        return problem(value)

    def repair(session: Session) -> None:
        session[key] = _default(default)

    return Rule(name, detect, repair)


def index_within(index_key: str, list_key: str, *, name: str | None = None) -> Rule:
    """``index_key``, when present, is a valid index into the list at ``list_key``.

    Repair clamps: past the end becomes the last index, negative becomes 0, a non-integer
    becomes 0. With the list empty, missing or not a list there is nothing to point at: the
    index must be 0 (the start), and repair sets 0. A missing index holds.
    """

    def bounds(session: Session) -> int:
        items = session.get(list_key)
        return len(items) if isinstance(items, (list, tuple)) else 0

    def detect(session: Session) -> str | None:
        index = session.get(index_key, _MISSING)
        if index is _MISSING:
            return None
        if not _is_instance(index, (int,)):
            return f"{index_key} is not an integer"
        size = bounds(session)
        if size == 0:
            return None if index == 0 else f"{index_key} points into an empty {list_key}"
        if index < 0:
            return f"{index_key} is negative"
        if index >= size:
            return f"{index_key} is past the end of {list_key}"
        return None

    def repair(session: Session) -> None:
        index = session.get(index_key)
        size = bounds(session)
        if isinstance(index, int) and not isinstance(index, bool) and size > 0:
            session[index_key] = min(max(index, 0), size - 1)
        else:
            session[index_key] = 0

    return Rule(name or f"index_within:{index_key}", detect, repair)


def rule(*, detect: Detect, repair: Repair, name: str | None = None) -> Rule:
    """A custom rule: ``detect(session)`` returns what is wrong or None; ``repair`` fixes it.

    ``repair`` may mutate nested values in place: the adapter marks the session modified
    whenever a repair changed anything, compared on a deep copy taken before the repair.
    """
    if not callable(detect) or not callable(repair):
        raise ConfigurationError("rule() needs callables detect= and repair=")
    return Rule(name or str(getattr(detect, "__name__", "rule")), detect, repair)


# -- helpers -----------------------------------------------------------------------------


def _default(default: Any) -> Any:
    return default() if callable(default) else copy.deepcopy(default)


def _is_instance(value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in kinds:
        return False
    return isinstance(value, kinds)


def _is_one_of(value: Any, allowed: tuple[Any, ...]) -> bool:
    # Type-strict: True is not 1 and 1.0 is not 1 in a JSON session.
    return any(type(value) is type(v) and value == v for v in allowed)


def _snapshot(session: Session) -> dict[str, Any]:
    try:
        return copy.deepcopy(dict(session))
    except Exception:  # an uncopyable value: compare by identity at the top level
        return dict(session)


def _changed(before: Mapping[str, Any], session: Session) -> tuple[str, ...]:
    keys = list(before) + [k for k in session.keys() if k not in before]  # noqa: SIM118
    changed = []
    for key in keys:
        old, new = before.get(key, _MISSING), session.get(key, _MISSING)
        try:
            same = old is new or (type(old) is type(new) and bool(old == new))
        except Exception:
            same = False
        if not same:
            changed.append(str(key))
    return tuple(changed)


def _accessed(session: Any) -> bool:
    """Flask, Django, Starlette: an ``accessed`` flag; Beaker: an ``accessed()`` method.

    A written session counts too: Quart 0.22's marks a write ``modified`` only, so a handler
    that writes without reading would otherwise never be checked.
    """
    accessed = getattr(session, "accessed", True)
    if accessed() if callable(accessed) else accessed:
        return True
    modified = getattr(session, "modified", False)
    return bool(modified() if callable(modified) else modified)


def _mark_modified(session: Any) -> None:
    """Make the framework save the repaired session (nested changes included)."""
    if hasattr(session, "modified"):  # Flask, Django, Starlette
        session.modified = True
    save = getattr(session, "save", None)
    if callable(save) and hasattr(session, "persist"):  # Beaker: save() marks it dirty
        save()
