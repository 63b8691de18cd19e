"""The `recall` tool: its OpenAI function schema, strict validation of what the model
sends, and the tool result that brings pages back.

Validation never raises past the caller's loop with a Python error: every problem becomes
a `RecallError` whose message is written for the model to read and act on (what was
wrong, and which pages it can recall), so a malformed call costs one round, not the
conversation.
"""

from __future__ import annotations

import json
from typing import Any, Collection, Iterable, Mapping, Sequence

from .pages import Page, Turn

MAX_RECALL_IDS = 3

# The cooperative-paging paper's instruction, verbatim.
RECALL_INSTRUCTION = (
    "If you need specific details from a bookmark, call recall() before answering. "
    "Do not guess details you do not have."
)


def recall_tool(max_ids: int = MAX_RECALL_IDS) -> dict:
    """The OpenAI `tools` entry for recall."""
    return {
        "type": "function",
        "function": {
            "name": "recall",
            "description": (
                "Bring back the full text of pages that were replaced by bookmarks. A bookmark "
                "[p7:Caroline,adoption] stands for page 7; call recall with its number."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "page_ids": {
                        "type": "array",
                        "items": {"type": "integer"},
                        "minItems": 1,
                        "maxItems": max_ids,
                        "description": f"Numbers of the pages to bring back, at most {max_ids}, e.g. [7] for [p7:...].",
                    }
                },
                "required": ["page_ids"],
                "additionalProperties": False,
            },
        },
    }


class RecallError(ValueError):
    """A recall call that cannot be served; str(error) is the tool result for the model."""


def ranges(ids: Collection[int]) -> str:
    """'1-4, 7, 9-10': the recallable pages, short enough for a prompt."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return show_runs(runs)


def show_runs(runs: Iterable[Sequence[int]]) -> str:
    """Runs of consecutive page ids, (first, last) each, written as `ranges` writes them."""
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs) or "none"


def _kind(value: Any) -> str:
    return {str: "a string", bool: "true/false", float: "a decimal number", dict: "an object", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def parse_recall_arguments(
    arguments: str | Mapping[str, Any],
    evicted: Collection[int],
    resident: Collection[int] = (),
    max_ids: int = MAX_RECALL_IDS,
) -> list[int]:
    """The page ids of a well-formed call naming evicted pages, or a `RecallError`."""
    example = f'Call recall with {{"page_ids": [{min(evicted, default=1)}]}}.'
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as e:
            raise RecallError(f"recall error: the arguments are not valid JSON ({e.msg} at character {e.pos}). {example}") from None
        except RecursionError:
            raise RecallError(f"recall error: the arguments nest too deeply. {example}") from None
        except ValueError:  # an integer of thousands of digits
            raise RecallError(f"recall error: the arguments hold a number too long to read. {example}") from None
    if not isinstance(arguments, Mapping):
        raise RecallError(f"recall error: the arguments must be a JSON object, got {_kind(arguments)}. {example}")
    extra = sorted(set(arguments) - {"page_ids"})
    if "page_ids" not in arguments:
        raise RecallError(f"recall error: the argument page_ids is missing. {example}")
    if extra:
        raise RecallError(f"recall error: unexpected argument(s) {', '.join(map(repr, extra[:5]))}; recall takes only page_ids. {example}")
    ids = arguments["page_ids"]
    if not isinstance(ids, list):
        raise RecallError(f"recall error: page_ids must be a list of page numbers, got {_kind(ids)}. {example}")
    if not ids:
        raise RecallError(f"recall error: page_ids is empty; name at least one page. {example}")
    if len(ids) > max_ids:
        raise RecallError(f"recall error: at most {max_ids} pages per call, got {len(ids)}. Pick the pages you need most.")
    problems: list[str] = []
    numbers = [v for v in ids if isinstance(v, int) and not isinstance(v, bool)]
    wrong = [v for v in ids if not (isinstance(v, int) and not isinstance(v, bool))]
    if wrong:
        hint = " (use the number only: 7 for [p7:...])" if any(isinstance(v, str) for v in wrong) else ""
        problems.append(f"page ids must be integers{hint}, got {', '.join(json.dumps(v)[:20] for v in wrong)}")
    seen: set[int] = set()
    for v in numbers:
        if v in seen:
            problems.append(f"page {v} is listed twice")
        elif v in resident:
            problems.append(f"page {v} is already in your context; read it there")
        elif v not in evicted:
            problems.append(f"there is no evicted page {v}")
        seen.add(v)
    if problems:
        raise RecallError(f"recall error: {'; '.join(problems)}. Pages you can recall: {ranges(evicted)}.")
    return numbers


def render_recall(pages: Sequence[Page], parts: Mapping[int, Sequence[Turn]] | None = None) -> str:
    """The tool result that puts recalled pages back in front of the model; the pages in
    `parts` show only the turns given there, and say how to read the rest."""
    shown = []
    for p in pages:
        turns = (parts or {}).get(p.id)
        if turns is None:
            shown.append(f"[page {p.id}, turns {p.first_turn + 1}-{p.last_turn + 1}]\n{p.render()}")
        else:
            head = f"[page {p.id}, turns {turns[0].index + 1}-{turns[-1].index + 1} of {p.first_turn + 1}-{p.last_turn + 1}; recall page {p.id} for all of it]"
            shown.append(head + "\n" + "\n".join(t.render() for t in turns))
    return "\n\n".join(shown)
