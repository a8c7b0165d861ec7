"""Rules: each built-in detects and repairs; the Ruleset reports and never loops; properties."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessionlock.errors import ConfigurationError
from sessionlock.order import check, session_layer_outside
from sessionlock.rules import (
    Ruleset,
    has_data,
    index_within,
    one_of,
    required,
    rule,
    type_of,
)
from tests.e2e.exam_app import QUESTION_TYPES, exam_rules

# -- built-ins, one table per rule ---------------------------------------------------------


@pytest.mark.parametrize(
    ("session", "expected"),
    [
        pytest.param({"i": 5, "ids": [1, 2, 3]}, 2, id="past-the-end-clamped-to-last"),
        pytest.param({"i": 3, "ids": [1, 2, 3]}, 2, id="one-past-the-end"),
        pytest.param({"i": -4, "ids": [1, 2, 3]}, 0, id="negative-to-zero"),
        pytest.param({"i": 7, "ids": []}, 0, id="empty-list-to-zero"),
        pytest.param({"i": 7}, 0, id="missing-list-to-zero"),
        pytest.param({"i": 7, "ids": "abc"}, 0, id="list-not-a-list-to-zero"),
        pytest.param({"i": "2", "ids": [1, 2, 3]}, 0, id="string-index-to-zero"),
        pytest.param({"i": True, "ids": [1, 2, 3]}, 0, id="bool-is-not-an-index"),
    ],
)
def test_index_within_repairs(session: dict[str, Any], expected: int) -> None:
    item = index_within("i", "ids")
    assert item.detect(session) is not None
    item.repair(session)
    assert session["i"] == expected
    assert item.detect(session) is None


@pytest.mark.parametrize(
    "session",
    [
        pytest.param({"i": 0, "ids": [1]}, id="first"),
        pytest.param({"i": 2, "ids": [1, 2, 3]}, id="last"),
        pytest.param({"ids": [1, 2]}, id="missing-index-holds"),
        pytest.param({"i": 0, "ids": []}, id="zero-into-empty-holds"),
        pytest.param({}, id="empty-session"),
    ],
)
def test_index_within_holds(session: dict[str, Any]) -> None:
    assert index_within("i", "ids").detect(session) is None


def test_required_fills_default_and_calls_callables() -> None:
    calls: list[int] = []

    def stamp() -> int:
        calls.append(1)
        return 42

    session: dict[str, Any] = {}
    required("t", "basic").repair(session)
    required("s", stamp).repair(session)
    assert session == {"t": "basic", "s": 42}
    assert calls == [1]
    assert required("t", "basic").detect({"t": None}) is None  # present, even if None


def test_mutable_defaults_are_copied_per_session() -> None:
    first: dict[str, Any] = {}
    second: dict[str, Any] = {}
    required("ids", [1]).repair(first)
    required("ids", [1]).repair(second)
    first["ids"].append(2)
    assert second["ids"] == [1]


@pytest.mark.parametrize(
    ("value", "kind", "holds"),
    [
        pytest.param(3, int, True, id="int"),
        pytest.param(True, int, False, id="bool-is-not-int"),
        pytest.param(True, (int, bool), True, id="bool-when-named"),
        pytest.param("3", int, False, id="str-is-not-int"),
        pytest.param([1], list, True, id="list"),
        pytest.param(None, list, False, id="none-is-not-list"),
    ],
)
def test_type_of(value: Any, kind: Any, holds: bool) -> None:
    item = type_of(
        "k", kind, default=0 if kind is int else (kind[0]() if isinstance(kind, tuple) else kind())
    )
    session = {"k": value}
    assert (item.detect(session) is None) is holds
    item.repair(session)
    assert item.detect(session) is None


def test_one_of_is_type_strict() -> None:
    item = one_of("n", (1, 2), default=1)
    assert item.detect({"n": 1}) is None
    assert item.detect({"n": True}) is not None
    assert item.detect({"n": 1.0}) is not None
    assert item.detect({}) is None


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: type_of("k", int, default="zero"), id="type_of-default-wrong-type"),
        pytest.param(lambda: one_of("k", ("a",), default="b"), id="one_of-default-not-a-value"),
        pytest.param(lambda: Ruleset([required("a", 1), required("a", 2)]), id="duplicate-name"),
        pytest.param(lambda: required("a", 1, name="has space"), id="name-with-space"),
        pytest.param(lambda: Ruleset([object()]), id="not-a-rule"),  # type: ignore[list-item]
        pytest.param(lambda: Ruleset([], header="Bad Header"), id="bad-header-name"),
    ],
)
def test_configuration_errors(make: Any) -> None:
    with pytest.raises(ConfigurationError):
        make()


# -- the Ruleset: order, reports, no loops -------------------------------------------------


def test_unrepairable_rule_is_reported_once_not_looped(caplog: pytest.LogCaptureFixture) -> None:
    repairs: list[int] = []

    def never_fixed(session: Any) -> None:
        repairs.append(1)
        session["x"] = session.get("x", 0) + 1

    counted: list[tuple[str, str]] = []
    rules = Ruleset(
        [rule(name="stubborn", detect=lambda s: "always wrong", repair=never_fixed)],
        counter=lambda name, outcome: counted.append((name, outcome)),
    )
    with caplog.at_level(logging.WARNING, logger="sessionlock"):
        report = rules.apply({})
    assert repairs == [1]
    assert [(f.rule, f.outcome, f.keys) for f in report.findings] == [
        ("stubborn", "unrepaired", ("x",))
    ]
    assert counted == [("stubborn", "unrepaired")]
    assert [r.levelname for r in caplog.records] == ["ERROR"]


def test_a_later_repair_that_breaks_an_earlier_rule_is_reported() -> None:
    rules = Ruleset(
        [
            index_within("i", "ids"),
            rule(
                name="reset",
                detect=lambda s: "x" if s.get("ids") else None,
                repair=lambda s: s.__setitem__("ids", []),
            ),
        ]
    )
    session = {"i": 2, "ids": [1, 2, 3]}
    report = rules.apply(session)
    assert [(f.rule, f.outcome) for f in report.findings] == [
        ("reset", "repaired"),
        ("index_within:i", "unrepaired"),
    ]


def test_a_rule_that_raises_is_reported_failed_without_its_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def boom(session: Any) -> str | None:
        raise ValueError(f"secret value {session['token']}")

    counted: list[tuple[str, str]] = []
    rules = Ruleset(
        [rule(name="boom", detect=boom, repair=lambda s: None), required("a", 1)],
        counter=lambda n, o: counted.append((n, o)),
    )
    session = {"token": "s3cr3t"}
    with caplog.at_level(logging.WARNING, logger="sessionlock"):
        report = rules.apply(session)
    assert [(f.rule, f.outcome) for f in report.findings] == [
        ("boom", "failed"),
        ("required:a", "repaired"),
    ]
    assert session["a"] == 1  # the other rules still ran
    assert ("boom", "failed") in counted
    assert "s3cr3t" not in caplog.text
    assert "ValueError" in caplog.text


def test_log_names_rule_and_keys_never_values(caplog: pytest.LogCaptureFixture) -> None:
    session = {"exam_question_ids": [11, 12, 13], "exam_current": 987654, "s_start": 5}
    with caplog.at_level(logging.DEBUG, logger="sessionlock"):
        exam_rules().apply(session)
    messages = [r.getMessage() for r in caplog.records]
    assert "session repaired by rule index_within:exam_current: changed exam_current" in messages
    assert any("required:selected_question_type" in m for m in messages)
    assert all(getattr(r, "sessionlock_rule", None) for r in caplog.records)
    assert "987654" not in caplog.text
    assert "basic" not in caplog.text


def test_counter_hook_counts_each_repair() -> None:
    counted: list[tuple[str, str]] = []
    rules = exam_rules(counter=lambda n, o: counted.append((n, o)))
    rules.apply({"exam_question_ids": [1], "exam_current": 4, "s_start": 1})
    assert counted == [
        ("index_within:exam_current", "repaired"),
        ("required:selected_question_type", "repaired"),
    ]


def test_a_failing_counter_hook_does_not_fail_the_request() -> None:
    def broken(name: str, outcome: str) -> None:
        raise RuntimeError

    session: dict[str, Any] = {}
    assert Ruleset([required("a", 1)], counter=broken).apply(session)
    assert session == {"a": 1}


class _Tracked(dict[str, Any]):
    accessed = False
    modified = False


def test_enforce_skips_unaccessed_and_empty_sessions_and_marks_modified() -> None:
    rules = Ruleset([required("a", 1)])
    untouched = _Tracked(b=1)
    assert not rules.enforce(untouched)
    assert "a" not in untouched

    empty = _Tracked()
    empty.accessed = True
    assert not rules.enforce(empty)
    assert empty == {}

    used = _Tracked(b=1)
    used.accessed = True
    assert rules.enforce(used)
    assert used == {"b": 1, "a": 1}
    assert used.modified


def test_enforce_checks_a_session_written_without_being_read() -> None:
    """Quart 0.22's session marks a write ``modified``, not ``accessed``."""
    rules = Ruleset([required("a", 1)])
    written = _Tracked(b=1)
    written.modified = True
    assert rules.enforce(written)
    assert written == {"b": 1, "a": 1}


def test_nested_in_place_repair_counts_as_a_change() -> None:
    session = {
        "exam_question_ids": [1, 2],
        "exam_current": 1,
        "selected_question_type": "basic",
        "s_start": 1,
        "progress_tracking": {"current_question": 0, "total_questions": 2},
    }
    report = exam_rules().apply(session)
    assert [(f.rule, f.keys) for f in report.findings] == [
        ("progress_tracking", ("progress_tracking",))
    ]
    assert report.changed


def test_has_data_ignores_store_bookkeeping() -> None:
    assert not has_data({"_accessed_time": 1, "_creation_time": 1})
    assert has_data({"_accessed_time": 1, "user": 1})


# -- misorder detection --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "found"),
    [
        pytest.param({"type": "http", "session": {}}, "scope['session']", id="asgi-session"),
        pytest.param({"type": "http"}, None, id="asgi-clean"),
        pytest.param(
            {"REQUEST_METHOD": "GET", "beaker.session": {}},
            "environ['beaker.session']",
            id="wsgi-beaker",
        ),
        pytest.param({"REQUEST_METHOD": "GET"}, None, id="wsgi-clean"),
    ],
)
def test_session_layer_outside(request_: dict[str, Any], found: str | None) -> None:
    assert session_layer_outside(request_) == found


def test_misorder_is_logged_once_per_lock(caplog: pytest.LogCaptureFixture) -> None:
    class Owner:
        pass

    owner = Owner()
    with caplog.at_level(logging.ERROR, logger="sessionlock"):
        check(owner, {"type": "http"})
        check(owner, {"type": "http", "session": {}})
        check(owner, {"type": "http", "session": {}})
    assert len(caplog.records) == 1
    assert "inside the session layer" in caplog.text


# -- properties over arbitrary sessions ---------------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 40)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
_keys = st.sampled_from(
    [
        "exam_question_ids",
        "exam_current",
        "selected_question_type",
        "s_start",
        "progress_tracking",
        "exam_category",
        "other",
    ]
)
_values = st.one_of(
    _json,
    st.lists(st.integers(1, 500), max_size=12),
    st.sampled_from([*QUESTION_TYPES, "advanced", ""]),
    st.fixed_dictionaries(
        {"current_question": st.integers(-2, 15), "total_questions": st.integers(0, 12)}
    ),
)
sessions = st.dictionaries(_keys, _values, max_size=7)


@settings(max_examples=400, deadline=None)
@given(sessions)
def test_after_repair_every_rule_holds(session: dict[str, Any]) -> None:
    rules = exam_rules()
    report = rules.apply(session)
    assert not report.unrepaired
    assert all(r.detect(session) is None for r in rules.rules)
    json.dumps(session)  # still serializable


@settings(max_examples=400, deadline=None)
@given(sessions)
def test_repair_is_idempotent(session: dict[str, Any]) -> None:
    rules = exam_rules()
    rules.apply(session)
    once = json.dumps(session)
    assert not rules.apply(session)
    assert json.dumps(session) == once


@st.composite
def valid_sessions(draw: st.DrawFn) -> dict[str, Any]:
    ids = draw(st.lists(st.integers(1, 500), max_size=12))
    current = draw(st.integers(0, max(len(ids) - 1, 0)))
    session: dict[str, Any] = {
        "exam_question_ids": ids,
        "exam_current": current,
        "selected_question_type": draw(st.sampled_from(QUESTION_TYPES)),
        "s_start": draw(st.integers(0, 2**31)),
    }
    if draw(st.booleans()):
        session["progress_tracking"] = {
            "current_question": current,
            "total_questions": len(ids),
            "last_answered_qid": draw(_json),
        }
    extra = draw(st.dictionaries(st.sampled_from(["exam_category", "other", "s_type"]), _json))
    order = draw(st.permutations([*session, *extra]))
    merged = {**session, **extra}
    return {k: merged[k] for k in order}


@settings(max_examples=400, deadline=None)
@given(valid_sessions())
def test_valid_session_is_untouched_byte_for_byte(session: dict[str, Any]) -> None:
    before = json.dumps(session).encode()
    report = exam_rules().apply(session)
    assert not report
    assert json.dumps(session).encode() == before
