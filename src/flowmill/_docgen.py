"""The state machine drawn from `TRANSITIONS`, for docs/states.md (a test keeps them equal)."""

from __future__ import annotations

from ._states import TERMINAL, TRANSITIONS, State

# How a task enters the machine: submission, which is not a move between two states.
ENTRIES: dict[State, str] = {
    State.SCHEDULED: "submit with delay or run_at",
    State.BLOCKED: "submit with depends_on",
    State.READY: "submit",
}


_MERMAID_ESCAPES = str.maketrans({":": "#58;", ";": "#59;"})


def mermaid_label(text: str) -> str:
    """A transition label mermaid parses: its state-diagram lexer ends a label at ':' or ';'."""
    return text.translate(_MERMAID_ESCAPES)


def mermaid_diagram() -> str:
    """A mermaid `stateDiagram-v2` with one arrow per entry of `TRANSITIONS`, in table order."""
    lines = ["stateDiagram-v2"]
    lines += [f"    [*] --> {s.value} : {mermaid_label(why)}" for s, why in ENTRIES.items()]
    lines += [
        f"    {s.value} --> {t.value} : {mermaid_label(why)}" for (s, t), why in TRANSITIONS.items()
    ]
    lines += [f"    {state.value} --> [*]" for state in State if state in TERMINAL]
    return "\n".join(lines) + "\n"


def states_table() -> str:
    """A markdown table: for each state, who moves tasks into it and out of it."""
    rows = ["| state | terminal | moved in by | moved out by |", "|---|---|---|---|"]
    for state in State:
        into = ([ENTRIES[state]] if state in ENTRIES else []) + [
            f"{why} (from `{s.value}`)" for (s, t), why in TRANSITIONS.items() if t is state
        ]
        out = [f"{why} (to `{t.value}`)" for (s, t), why in TRANSITIONS.items() if s is state]
        rows.append(
            f"| `{state.value}` | {'yes' if state in TERMINAL else 'no'} | "
            f"{'; '.join(into) or '—'} | {'; '.join(out) or '— (absorbing)'} |"
        )
    return "\n".join(rows) + "\n"
