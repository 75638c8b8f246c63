"""The state table: legal and illegal moves, the terminal/active split, and its drawing."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from flowmill._docgen import mermaid_diagram, mermaid_label, states_table
from flowmill._states import (
    ACTIVE,
    TERMINAL,
    TRANSITIONS,
    Phase,
    State,
    can_transition,
    check_transition,
    sources_of,
)
from flowmill.errors import IllegalTransition

S = State
DOC = Path(__file__).resolve().parents[2] / "docs" / "states.md"
ALL_PAIRS = list(itertools.product(State, State))
ILLEGAL = [pair for pair in ALL_PAIRS if pair not in TRANSITIONS]
OPERATOR_RETRY = {(S.FAILED, S.READY), (S.DEAD_LETTERED, S.READY)}


def _ids(pair: tuple[State, State]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


@pytest.mark.parametrize("pair", list(TRANSITIONS), ids=_ids)
def test_every_legal_pair_passes(pair: tuple[State, State]) -> None:
    source, target = pair
    check_transition(source, target)
    check_transition(source.value, target.value)  # plain strings, as read from a database
    assert can_transition(source, target)


@pytest.mark.parametrize("pair", ILLEGAL, ids=_ids)
def test_every_other_pair_is_illegal(pair: tuple[State, State]) -> None:
    source, target = pair
    assert not can_transition(source, target)
    with pytest.raises(IllegalTransition) as info:
        check_transition(source, target)
    assert (info.value.source, info.value.target) == (source.value, target.value)
    assert f"{source.value} -> {target.value}" in str(info.value)


@pytest.mark.parametrize(
    "pair",
    [
        (S.READY, S.COMPLETED),  # must run first
        (S.READY, S.FAILED),
        (S.SCHEDULED, S.RUNNING),  # must be promoted first
        (S.BLOCKED, S.RUNNING),
        (S.SCHEDULED, S.EXPIRED),
        (S.RUNNING, S.RUNNING),  # a second claim of a held task
        (S.RUNNING, S.EXPIRED),  # an expired lease is a retryable failure, not `expired`
        (S.RUNNING, S.BLOCKED),
        (S.WAITING_CHILDREN, S.COMPLETED),  # finalize must run
        (S.WAITING_CHILDREN, S.RUNNING),
        (S.SUSPENDED, S.RUNNING),
        (S.READY, S.READY),
        (S.COMPLETED, S.READY),  # a success is never retried
        (S.CANCELLED, S.READY),
        (S.EXPIRED, S.READY),
        (S.SKIPPED, S.READY),
        (S.FAILED, S.RUNNING),  # retry goes through ready
        (S.DEAD_LETTERED, S.SCHEDULED),
    ],
    ids=_ids,
)
def test_named_illegal_pairs(pair: tuple[State, State]) -> None:
    with pytest.raises(IllegalTransition):
        check_transition(*pair)


def test_only_operator_retry_leaves_a_terminal_state() -> None:
    leaving = {(s, t) for (s, t) in TRANSITIONS if s in TERMINAL}
    assert leaving == OPERATOR_RETRY
    for source in TERMINAL:
        for target in State:
            if (source, target) in OPERATOR_RETRY:
                continue
            with pytest.raises(IllegalTransition):
                check_transition(source, target)


def test_unknown_state_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="nope"):
        check_transition("nope", "ready")
    with pytest.raises(ValueError, match="RUNNING"):
        check_transition("ready", "RUNNING")


def test_terminal_and_active_partition_the_states() -> None:
    assert set(State) == TERMINAL | ACTIVE
    assert not TERMINAL & ACTIVE
    assert {S.COMPLETED, S.FAILED, S.DEAD_LETTERED, S.CANCELLED, S.SKIPPED, S.EXPIRED} == TERMINAL
    assert all(s.terminal for s in TERMINAL)
    assert not any(s.terminal for s in ACTIVE)


def test_no_self_loops_and_every_state_is_reachable() -> None:
    assert all(s != t for (s, t) in TRANSITIONS)
    targets = {t for (_, t) in TRANSITIONS}
    entries = {S.SCHEDULED, S.BLOCKED, S.READY}  # where submission puts a task
    assert targets | entries == set(State)


def test_every_active_state_can_be_left_and_cancelled() -> None:
    for state in ACTIVE:
        assert any(s == state for (s, _) in TRANSITIONS), f"{state} is a dead end"
        assert can_transition(state, S.CANCELLED), f"{state} cannot be cancelled"


def test_every_move_says_who_makes_it() -> None:
    assert all(isinstance(why, str) and why.strip() for why in TRANSITIONS.values())


@pytest.mark.parametrize("target", list(State), ids=str)
def test_sources_of_matches_the_table(target: State) -> None:
    expected = tuple(sorted(s for (s, t) in TRANSITIONS if t == target))
    assert sources_of(target) == expected
    assert sources_of(target, among=ACTIVE) == tuple(s for s in expected if s in ACTIVE)
    assert sources_of(target, among=frozenset()) == ()


def test_sources_of_examples() -> None:
    assert sources_of(S.RUNNING) == (S.READY,)
    assert set(sources_of(S.READY)) == {
        S.SCHEDULED,
        S.BLOCKED,
        S.RUNNING,
        S.WAITING_CHILDREN,
        S.SUSPENDED,
        S.FAILED,
        S.DEAD_LETTERED,
    }
    assert sources_of(S.READY, among=TERMINAL) == tuple(sorted({S.FAILED, S.DEAD_LETTERED}))
    assert set(sources_of(S.SCHEDULED)) == {S.RUNNING, S.READY}
    assert sources_of(S.COMPLETED) == (S.RUNNING,)


def test_values_are_the_stored_strings() -> None:
    assert [s.value for s in State] == [
        "scheduled",
        "blocked",
        "ready",
        "running",
        "waiting_children",
        "suspended",
        "completed",
        "failed",
        "dead_lettered",
        "cancelled",
        "skipped",
        "expired",
    ]
    assert [p.value for p in Phase] == ["execute", "finalize"]
    assert S("running") is S.RUNNING and str(S.RUNNING) == "running"


def test_diagram_has_one_arrow_per_transition() -> None:
    text = mermaid_diagram()
    assert text.startswith("stateDiagram-v2\n")
    arrows = [line.strip() for line in text.splitlines()[1:]]
    moves = [a for a in arrows if not a.startswith("[*]") and not a.endswith("[*]")]
    assert len(moves) == len(TRANSITIONS)
    for line, ((s, t), why) in zip(moves, TRANSITIONS.items(), strict=True):
        assert line == f"{s.value} --> {t.value} : {mermaid_label(why)}"
        label = line.split(" : ", 1)[1]
        assert ":" not in label
        assert re.sub("#5[89];", "", label).count(";") == 0
    assert {a.split()[0] for a in arrows if a.endswith("--> [*]")} == {s.value for s in TERMINAL}


def test_mermaid_labels_escape_what_ends_a_label() -> None:
    assert mermaid_label("fail: a; b") == "fail#58; a#59; b"
    assert mermaid_label("retry with backoff, or delay") == "retry with backoff, or delay"


def test_docs_match_the_table() -> None:
    doc = DOC.read_text(encoding="utf-8")
    assert f"```mermaid\n{mermaid_diagram()}```" in doc, (
        "docs/states.md is out of date: paste flowmill._docgen.mermaid_diagram() into it"
    )
    assert states_table() in doc, (
        "docs/states.md is out of date: paste flowmill._docgen.states_table() into it"
    )
