"""A paged conversation, independent of any inference engine: ingest -> plan -> render.

Turns are stored durably first (when a store is given). Older turns are cut into pages;
once a page is complete it joins the resident set, and the policy (the learned controller
by default) evicts pages in batches between two watermarks: when too many pages are
resident, or when the prompt fills too much of the model's window. So the prompt changes
rarely (a compaction), and otherwise only grows at its end, which an engine's prefix cache
keeps. Each evicted page leaves a bookmark, frozen when the page closed. For each new
request the controller may prefetch a few evicted pages, a user's question brings back
the pages whose words it shares most (`matching`), and the model may recall others with
the `recall` tool. A page brought back shows its `prefetch_turns` turns around the one
the request names best; the model may recall the rest.

Turns are paged in units: a turn, or a part of a turn too long for a page (a large tool
result is paged in parts; the store keeps it whole). An assistant turn that calls tools
stays with the tool results that answer it.

The rendered prompt, deterministic for a given state, is a list of chat messages:

    system: instructions (the paging ones once a page has been evicted)
    the turns of the pages in view at the last compaction, as the original messages
    system: bookmarks of the evicted pages (prefetched ones too: the list stays put)
    the turns of the pages closed since, and of those not yet paged (the recent turns)
    system: the pages brought back for this request, when there are any (excerpts)
    the request: the new user message, or the tool call and the results it is answered with
    (assistant recall call / tool result, per recall round)

Between two compactions everything before the request only grows: pages stay the original
messages, so a page closing changes no token, and the bookmark list changes only when
pages are evicted (or come back, or are pinned). What a request brings back sits after
the turns, just before the request, and leaves with it.

The work per request does not grow with the conversation: pages close as turns come
(`Segmenter`), each bookmark is made once as its page closes, the controller and the
question matching score a shortlist of pages (`BM25.shortlist`), the evicted pages are
a view, never a list (`Evicted`), and the bookmark list shows the newest `max_bookmarks`
of them and the older ones by number.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from itertools import islice
from typing import Callable, Iterator, Sequence
from . import keywords
from .bookmarks import Bookmark
from .calls import ToolCall
from .controller import SHORTLIST, WithPrefetch
from .matching import EXCERPT_TURNS, PageMatcher
from .pages import Page, Segmenter, Turn, atoms, boundary, split_long
from .policies import Policy, ResidentSet
from .policy_registry import NAMES as POLICY_NAMES, ONLINE as ONLINE_POLICIES, make_policy
from .recall import MAX_RECALL_IDS, RECALL_INSTRUCTION, RecallError, parse_recall_arguments, ranges, render_recall, show_runs
from .store import PageStore
from .text import TokenCounter, approx_tokens


MAX_CALL_CHARS = 300
DROPPED = "[shown earlier and dropped: pages"
_INT_RANGES = {
    "part_tokens": (16, 1 << 16), "window_high": (1, 100), "window_low": (1, 100), "max_recall_ids": (1, 1000), "prefetch_turns": (0, 1000),
}


@dataclass(frozen=True)
class PagingConfig:
    boundary: str = "tokens_512"  # how older turns are cut into pages
    recent_turns: int = 4  # the newest turns (or parts of a long one) are never paged
    resident_high: int = 16  # when more pages than this are resident...
    resident_low: int = 4  # ...evict down to this many (watermarks)
    window_high: int = 85  # when the prompt (less what a request brings back) fills more than this % of the window...
    window_low: int = 55  # ...evict down to this % (the window: the model's, less the answer's room)
    prefetch_budget: int = 3  # the controller brings pages back until a request has this many (0: none)...
    match_budget: int = 3  # ...counting first those a user's question brings back by naming them (word match)
    # a page brought back shows this many of its turns, around the one the question names
    # best (0: all of it). Five, measured with the evaluation model on 150 LoCoMo dev
    # questions: F1 0.392 against 0.374 for whole pages, in 31% fewer computed tokens
    prefetch_turns: int = 5
    max_recall_ids: int = MAX_RECALL_IDS
    keywords: str = "distinctive"
    keyword_count: int = 4
    policy: str = "learned"
    part_tokens: int = 512  # a turn longer than this is paged in parts of about this size
    max_bookmarks: int = 64  # the note lists the newest evicted pages' bookmarks, older pages by number

    def __post_init__(self) -> None:
        if not 1 <= self.resident_low <= self.resident_high:
            raise ValueError(f"need 1 <= resident_low ({self.resident_low}) <= resident_high ({self.resident_high})")
        if not 1 <= self.window_low <= self.window_high <= 100:
            raise ValueError(f"need 1 <= window_low ({self.window_low}) <= window_high ({self.window_high}) <= 100")
        if self.prefetch_turns < 0:
            raise ValueError(f"prefetch_turns must be 0 (whole pages) or more, got {self.prefetch_turns}")

    def with_options(self, options: dict) -> "PagingConfig":
        """This config with a client's overrides (names as the fields), each checked: a
        ValueError says what is wrong."""
        if not isinstance(options, dict):
            raise ValueError("paging options must be an object")
        fields = {f.name: f.type for f in dataclasses.fields(self)}
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise ValueError(f"unknown paging option(s) {', '.join(unknown)}; known: {', '.join(fields)}")
        for name, value in options.items():
            if fields[name] == "int":
                low, high = _INT_RANGES.get(name, (0, 1000))
                if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                    raise ValueError(f"paging option {name} must be an integer between {low} and {high}, got {value!r}")
            elif not isinstance(value, str):
                raise ValueError(f"paging option {name} must be a string, got {value!r}")
        config = dataclasses.replace(self, **options)
        boundary(config.boundary)
        if config.keywords not in keywords.names():
            raise ValueError(f"unknown keyword strategy {config.keywords!r}; available: {', '.join(keywords.names())}")
        if config.policy not in ONLINE_POLICIES:  # by name: validating must not load the controller per request
            what = f"policy {config.policy!r} is offline (it needs the future accesses)" if config.policy in POLICY_NAMES else f"unknown policy {config.policy!r}"
            raise ValueError(f"{what}; available: {', '.join(ONLINE_POLICIES)}")
        return config

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PagingConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})  # options a later version dropped


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    segment: str  # what part of the layout it belongs to: "system", "page:3", "turn:17", "note", ...
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass
class Request:
    """One request being answered: what the controller planned, and the rounds the server
    served so far (recall calls, and calls it had to refuse)."""

    query: str  # what the request asks: the new user message, or the tool results being answered
    prefetched: tuple[int, ...]
    evicted_now: tuple[int, ...]  # pages this request's planning evicted
    instructions: str = ""  # the client's system messages for this request
    recalls: list[tuple[str, str, tuple[int, ...]]] = field(default_factory=list)  # (call, result, page ids)
    folded: int = 0  # bookmarks `make_room` folded to page numbers for this request, so the prompt fits
    cut: tuple[int, ...] = ()  # prefetched pages `make_room` cut to an excerpt, so the prompt fits
    # (page, width) -> the excerpt shown: chosen once, as the prompt is rendered several
    # times a request (the query and the pages' words do not change while pages are brought back)
    excerpts: dict[tuple[int, int], tuple[Turn, ...]] = field(default_factory=dict, repr=False)

    @property
    def recalled(self) -> tuple[int, ...]:
        return tuple(p for _, _, ids in self.recalls for p in ids)

    def add_round(self, call: str, result: str, page_ids: tuple[int, ...] = ()) -> None:
        """A call the server answered; no page ids means the result is an error."""
        if len(call) > MAX_CALL_CHARS:  # a runaway call must not flood the next prompt
            call = call[:MAX_CALL_CHARS] + " …(cut)"
        self.recalls.append((call, result, page_ids))


def instructions(tool_syntax: str | None, client: str = "", paged: bool = True) -> str:
    """The system prompt: the paging instructions (once the conversation has pages), then
    the client's own. `tool_syntax` describes how to call recall when the chat template
    has no native tools (None when it has)."""
    if not paged:
        return client or "You are a helpful assistant."
    text = (
        "You are a helpful assistant. Older parts of this conversation were moved out of view into "
        "numbered pages, each listed as a bookmark [pN:keywords]. " + RECALL_INSTRUCTION
    )
    text += f" To recall pages, reply with only: {tool_syntax}" if tool_syntax else ""
    return text + (f"\n\n{client}" if client else "")


class PagedSession:
    def __init__(
        self,
        session_id: str,
        config: PagingConfig = PagingConfig(),
        store: PageStore | None = None,
        count_tokens: TokenCounter = approx_tokens,
        policy: Policy | None = None,
        owner: str | None = None,
        complete: Callable[[str, int], str] | None = None,
    ):
        """`complete(prompt, max_tokens)`: the model, for keyword strategies that ask it."""
        self.id = session_id
        self.owner = owner
        if store is not None:
            store.create_session(session_id, owner, config.to_json())
            saved = store.session(session_id).config
            config = PagingConfig.from_json(saved) if saved else config  # a session keeps the options it began with
        self.config = config
        self.store = store
        self.count_tokens = count_tokens
        self.turns: list[Turn] = []
        self.units: list[Turn] = []  # what pages are made of: turns, long ones in parts
        self.calls: dict[str, ToolCall] = {}  # the tool calls made so far, by id
        self._counted = (0, 0)  # turns that history_tokens counted, and their tokens
        self.segmenter = Segmenter(config.boundary, count_tokens)
        self.matcher = PageMatcher()
        self.pages: dict[int, Page] = {}
        self.bookmarks: dict[int, Bookmark] = {}
        model = {"complete": complete} if config.keywords in keywords.LLM_STRATEGIES else {}
        self.keyword_strategy = keywords.incremental(config.keywords, n=config.keyword_count, **model)
        # the controller scores a shortlist of pages, so a request costs the same at any length
        self.policy = policy or make_policy(config.policy, shortlist=SHORTLIST)
        if config.prefetch_budget and not hasattr(self.policy, "prefetch"):
            self.policy = WithPrefetch(self.policy, shortlist=SHORTLIST)  # the controller prefetches whatever evicts
        self.resident = ResidentSet(config.resident_high, self.policy)
        self.pinned: set[int] = set()  # always in view, whatever the policy says
        self.base: tuple[int, ...] | None = None  # the pages in view at the last compaction (None: none yet)
        self.folded = 0  # bookmarks a compaction folded to page numbers (nothing resident was left to evict)
        if store is not None:
            self.turns = store.turns(session_id)
            self.units = [u for t in self.turns for u in self._units(t)]
            self.bookmarks = {b.page_id: b for b in store.bookmarks(session_id)}  # frozen when first made
            self.close_pages()  # replay: the pages follow from the turns again
            for ref in store.references(session_id):
                if ref.kind in ("pin", "unpin"):
                    (self.pinned.add if ref.kind == "pin" else self.pinned.discard)(ref.page_id)

    # --- ingest -------------------------------------------------------------------------

    def add_turn(self, role: str, text: str, **fields) -> Turn:
        """Append a turn, durably first when there is a store."""
        return self.add_turns([(role, text, fields)])[0]

    def add_turns(self, turns: Sequence[tuple[str, str, dict]]) -> list[Turn]:
        """Append turns, each (role, text, other `Turn` fields): durably first, all in one
        transaction, when there is a store (a history arriving whole is one commit, not
        one per turn)."""
        made = [Turn(len(self.turns) + i, role, text, **fields) for i, (role, text, fields) in enumerate(turns)]
        if self.store is not None and made:
            self.store.append_turns(self.id, made)
        for turn in made:
            self.turns.append(turn)
            self.units += self._units(turn)
        return made

    def _units(self, turn: Turn) -> list[Turn]:
        """The turn as paging units; the parts of a long tool result name the call it answers."""
        self.calls.update((c.id, c) for c in turn.tool_calls)
        call = self.calls.get(turn.tool_call_id) if turn.tool_call_id else None
        of = f"the result of {call.name}({call.arguments})" if call is not None else ""
        return split_long(turn, self.config.part_tokens, self.count_tokens, of)

    # --- plan ---------------------------------------------------------------------------

    def close_pages(self, recent: int | None = None) -> list[int]:
        """Turn complete pages of the units before the `recent` last ones (the config's
        recent turns by default) into pages; returns the ids evicted to make room. The
        last unit is never paged: a request always shows what it answers. Every plan
        does this first; a history taken in at once can be paged before any request."""
        recent = self.config.recent_turns if recent is None else recent
        older = max(len(self.units) - max(recent, 1), 0)
        new = [page for unit in self.units[self.segmenter.fed : older] for page in self.segmenter.add(unit)]
        if not new:
            return []
        for page in new:
            self.pages[page.id] = page
            self.matcher.add(page.id, page.text)
        self.policy.attach(new)
        # made once, as its page closes (a session reopened from its store has them all):
        # frozen, so the prompt stays stable
        self.bookmarks.update((mark.page_id, mark) for mark in self.keyword_strategy(new, self.bookmarks))
        if self.store is not None:
            self.store.save_pages(self.id, new)
            self.store.save_bookmarks(self.id, [self.bookmarks[p.id] for p in new], self.config.keywords)
        evicted = []
        for page in new:
            if len(self.resident) >= self.config.resident_high:
                evicted += self.resident.shrink(self.config.resident_low - 1)
            self.resident.access(page.id)
        if evicted:
            self._rebase()
        return evicted

    def _rebase(self) -> None:
        """The layout changes (pages left or came back, or a pin moved): the pages in view
        now come first, before the bookmark list; pages closed later follow it."""
        self.base = tuple(sorted(set(self.resident.keys) | self.pinned))

    @property
    def paged_until(self) -> int:
        """Units before this position live in pages (pages cover the conversation from its
        start); the rest are rendered as they are."""
        return self.segmenter.paged

    def evicted(self) -> Evicted:
        return Evicted(len(self.pages), frozenset(self.resident.keys | self.pinned))

    def pin(self, page_id: int, pinned: bool = True) -> None:
        """Keep a page in view whatever the policy evicts (or stop doing so); durable."""
        if page_id not in self.pages:
            raise KeyError(f"session {self.id!r} has no page {page_id} (pages: {sorted(self.pages) or 'none yet'})")
        (self.pinned.add if pinned else self.pinned.discard)(page_id)
        if self.base is not None:
            self._rebase()
        if self.store is not None:
            self.store.record_references(self.id, self.resident.step, [page_id], "pin" if pinned else "unpin")

    def ask(self, text: str, instructions: str = "", **fields) -> Request:
        """Take a new user turn (stored first) and plan the request for it."""
        self.add_turn("user", text, **fields)
        return self.plan(instructions)

    def plan(self, instructions: str = "") -> Request:
        """Plan the request for the turns added last (a user message, or tool results): page
        what has become old, and let the controller prefetch for what the request asks; a
        user's question also brings back the pages that match it best. `instructions`: the
        client's system prompt."""
        evicted_now = tuple(self.close_pages())
        query = "\n".join(t.said for t in self.turns[self._last_exchange() :])
        self.policy.on_request(query)
        request = Request(query, (), evicted_now, instructions)
        self._bring_back(request)
        return request

    def _bring_back(self, request: Request) -> None:
        """Choose the pages out of view that `request` brings back: for a user's question,
        the pages that match it best, then the controller's prefetch up to the budget.
        Chosen again when the request's own compaction evicts pages."""
        evicted = self.evicted()
        named: tuple[int, ...] = ()
        if self.turns and self.turns[-1].role == "user":  # tool results ask for the task at hand, not the past
            named = tuple(self.matcher.best(request.query, evicted, self.config.match_budget))
        # what the question names is the better guess: the controller only fills the rest
        room = self.config.prefetch_budget - len(named)
        predicted = self.policy.prefetch(evicted, room + len(named), self.resident.step) if room > 0 else []
        prefetched = (*named, *[p for p in predicted if p not in named][:room])  # named first: making room drops from the end
        new = [p for p in prefetched if p not in request.prefetched]
        if self.store is not None and new:
            self.store.record_references(self.id, self.resident.step, new, "prefetch")
        request.prefetched, request.cut = prefetched, ()

    def _last_exchange(self) -> int:
        """Where the turns the request answers begin: the last user message, or the last
        tool-calling assistant turn and the results after it."""
        for i in range(len(self.turns) - 1, -1, -1):
            if self.turns[i].role == "user" or self.turns[i].tool_calls:
                return i
        return max(len(self.turns) - 1, 0)

    def recall(self, request: Request, call: str, arguments: str | dict) -> str:
        """Serve a recall call: the pages as a tool result, or an error the model can read.
        Recalled pages are referenced, so the policy learns they matter. A prefetched page
        may be recalled: it moves from the note into the result, where making room for
        the prompt cannot drop it."""
        shown = set(self.resident.keys) | self.pinned | set(request.recalled)
        try:
            ids = parse_recall_arguments(
                arguments, [p for p in self.evicted() if p not in shown], shown, self.config.max_recall_ids
            )
        except RecallError as error:
            result, ids = str(error), []
        else:
            result = render_recall([self.pages[p] for p in ids])
            request.prefetched = tuple(p for p in request.prefetched if p not in ids)
            request.cut = tuple(p for p in request.cut if p not in ids)
            if self.store is not None:
                self.store.record_references(self.id, self.resident.step, ids, "recall")
        request.add_round(call, result, tuple(ids))
        return result

    def render_within(
        self, request: Request, tool_syntax: str | None, encode: Callable[[list[Message]], Sequence[int]], budget: int
    ) -> tuple[list[Message], Sequence[int]]:
        """The prompt and its tokens (`encode(prompt)`), shrunk with `make_room` until it
        is at most `budget` tokens (the model's window less the answer's room). On a
        request's first round, a prompt over the high window watermark is compacted first."""
        check = not request.recalls  # compaction is decided once, on a request's first round
        while True:
            messages = self.render(request, tool_syntax)
            tokens = encode(messages)
            if check:
                check = False
                standing = dataclasses.replace(request, prefetched=())  # the prompt but what this request brings back
                measure = lambda: len(encode(self.render(standing, tool_syntax)))  # noqa: E731
                size = measure() if request.prefetched else len(tokens)
                if size * 100 > budget * self.config.window_high:
                    self._compact(request, standing, size, measure, budget)
                    self._bring_back(request)  # what it evicted may be what the request asks for
                    continue
            if len(tokens) <= budget:
                return messages, tokens
            if not self.make_room(request):
                raise ValueError(
                    f"the recent turns alone need {len(tokens)} tokens, over the budget of {budget}: "
                    "lower max_tokens, or use smaller pages (part_tokens, the page size)"
                )

    def _compact(self, request: Request, standing: Request, size: int, measure: Callable[[], int], budget: int) -> None:
        """Evict the policy's victims in one batch, the standing prompt being `size` tokens
        (over `window_high`% of `budget`), until it would fill about `window_low`%: one
        prefix change now instead of one per turn at the window's edge."""
        target, evicted, folded = budget * self.config.window_low // 100, [], self.folded
        while size > target:
            excess = size - target  # evict pages worth that much, then measure again (bookmarks add a little)
            while excess > 0 and len(self.resident):
                victims = self.resident.shrink(len(self.resident) - 1)
                evicted += victims
                excess -= sum(self.pages[p].tokens for p in victims)
            if excess > 0:  # nothing resident is left: the oldest bookmarks go to numbers only
                more = self._to_fold(standing)
                if not more:
                    break
                self.folded += more
            size = measure()
        if evicted or self.folded != folded:
            request.evicted_now += tuple(evicted)
            self._rebase()

    def make_room(self, request: Request) -> bool:
        """Shrink the prompt when it does not fit the model's window: first cut the
        prefetched pages to their turns that match the request best (`PageMatcher.excerpt`),
        the last first, then drop them, the last first, then evict the policy's next victim,
        then page recent turns sooner (long tool results), then show the oldest bookmarks by
        page number only (a quarter more each time), then replace the pages of earlier
        recall rounds by their numbers. False when nothing is left to drop (the last message
        alone is too long)."""
        shown = self.brought_back(request)
        longer = [p for p in request.prefetched if p not in request.cut and len(shown[p]) > EXCERPT_TURNS]
        if longer:  # several pages' best turns hold more of what is asked than fewer whole pages
            request.cut += (longer[-1],)
            return True
        if request.prefetched:
            request.prefetched, request.cut = request.prefetched[:-1], tuple(p for p in request.cut if p != request.prefetched[-1])
            return True
        if len(self.resident):
            request.evicted_now += tuple(self.resident.shrink(len(self.resident) - 1))
            self._rebase()
            return True
        paged = self.paged_until
        for recent in range(len(self.units) - paged - 1, 0, -1):
            request.evicted_now += tuple(self.close_pages(recent))
            if self.paged_until > paged:
                return True
        more = self._to_fold(request)
        if more:
            request.folded += more
            return True
        for i, (call, result, ids) in enumerate(request.recalls[:-1]):  # an earlier round's pages, oldest first
            if ids and not result.startswith(DROPPED):
                request.recalls[i] = (call, f"{DROPPED} {ranges(list(ids))} to fit the window; recall again if needed]", ids)
                return True
        return False

    def recallable(self, request: Request) -> list[int]:
        """Evicted pages this request has not seen whole yet: what a recall call may name."""
        partly = self.shown_in_part(request)
        return [p for p in self.evicted() if (p not in request.prefetched or p in partly) and p not in request.recalled]

    def brought_back(self, request: Request) -> dict[int, tuple[Turn, ...]]:
        """The prefetched pages, each with the turns the prompt shows of it: all, or an
        excerpt (`prefetch_turns`, or `make_room` cut it)."""
        out = {}
        for p in request.prefetched:
            width = self._width(request, p)
            if width is None:
                out[p] = self.pages[p].turns
                continue
            if (p, width) not in request.excerpts:
                request.excerpts[p, width] = self.matcher.excerpt(request.query, self.pages[p].turns, width)
            out[p] = request.excerpts[p, width]
        return out

    def shown_in_part(self, request: Request) -> dict[int, tuple[Turn, ...]]:
        """The prefetched pages the prompt shows only some turns of, with those turns."""
        return {p: turns for p, turns in self.brought_back(request).items() if len(turns) < len(self.pages[p].turns)}

    def _width(self, request: Request, page_id: int) -> int | None:
        """How many turns of a prefetched page the prompt shows (None: all)."""
        width = self.config.prefetch_turns or None
        if page_id in request.cut:
            width = min(width or EXCERPT_TURNS, EXCERPT_TURNS)
        return None if width is None or width >= len(self.pages[page_id].turns) else width

    def finish(self, request: Request, answer: str, tool_calls: tuple[ToolCall, ...] = ()) -> Turn:
        """Record the answer (with the calls it makes to the client's tools). Pages the
        model recalled become resident again (compacting first if they would not fit);
        prefetched pages stay a per-request extra, so the resident layout, and the KV
        cache behind it, does not churn with every question."""
        back = [p for p in dict.fromkeys(request.recalled) if p not in self.resident]
        if len(self.resident) + len(back) > self.config.resident_high:
            self.resident.shrink(max(min(self.config.resident_low, self.config.resident_high - len(back)), 0))
        for page_id in back:
            self.resident.access(page_id)
        if back:
            self._rebase()
        return self.add_turn("assistant", answer, tool_calls=tuple(tool_calls))

    # --- render -------------------------------------------------------------------------

    def render(self, request: Request, tool_syntax: str | None = None) -> list[Message]:
        """The prompt for `request`, the last turn asked (the layout: the module's docstring)."""
        messages = [Message("system", instructions(tool_syntax, request.instructions, self.base is not None), "system")]
        in_view = set(self.resident.keys) | self.pinned
        first = [p for p in self.base or () if p in in_view]
        later = sorted(in_view.difference(first))
        pages = lambda ids: [_message(t, f"page:{p}") for p in ids for t in self.pages[p].turns]  # noqa: E731
        messages += [*pages(first), *self._bookmarks(request), *pages(later)]
        recent = self.units[self.paged_until :]
        asked = len(recent) - len(atoms(recent)[-1]) if recent else 0  # the exchange being answered...
        while 0 < asked < len(recent) and recent[asked - 1].index == recent[asked].index:
            asked -= 1  # ...with every part of its first turn still in view
        messages += [_message(t, f"turn:{t.index}") for t in recent[:asked]]
        if request.prefetched:
            parts = self.shown_in_part(request)
            text = "Pages brought back for this question:\n\n" + render_recall([self.pages[p] for p in request.prefetched], parts)
            messages.append(Message("system", text, "prefetch"))
        messages += [_message(t, f"turn:{t.index}") for t in recent[asked:]]
        for i, (call, result, _) in enumerate(request.recalls):
            messages += [Message("assistant", call, f"recall:{i}"), Message("tool", result, f"recall:{i}")]
        return messages

    def _bookmarks(self, request: Request) -> list[Message]:
        """The bookmark list of the evicted pages (none: no message)."""
        folded, listed = self._bookmarked(request)
        if not folded and not listed:
            return []
        older = [f"Older pages {folded.ranges()} (recall them by number)."] if folded else []
        text = " ".join(["Bookmarks of pages out of view:", *older, *(self.bookmarks[p].render() for p in listed)])
        return [Message("system", text, "bookmarks")]

    def _to_fold(self, request: Request) -> int:
        """How many more bookmarks to fold to page numbers when the prompt must shrink: a
        quarter of those still listed (at least one; none when none is listed)."""
        listed = len(self._bookmarked(request)[1])
        return max(1, listed // 4) if listed else 0

    def _bookmarked(self, request: Request) -> tuple[Evicted, list[int]]:
        """The evicted pages the list names by number only, and those it shows by bookmark:
        the newest `max_bookmarks`, fewer by those a compaction (`folded`) or `make_room`
        (`request.folded`) folded. A page brought back keeps its bookmark, so the list
        moves only when pages are evicted or folded."""
        evicted = self.evicted()
        listed = evicted.newest(max(min(self.config.max_bookmarks, len(evicted)) - self.folded - request.folded, 0))
        folded = evicted.before(listed[0]) if listed else evicted
        return folded, listed

    # --- report -------------------------------------------------------------------------

    def history_tokens(self, count: Callable[[Message], int]) -> int:
        """The unpaged history's size: `count` summed over the turns as messages. A turn is
        counted once, the first time this is asked after it came, so a request pays for
        its new turns only; `count` must stay the same over the session's life."""
        counted, tokens = self._counted
        tokens += sum(count(_message(t, f"turn:{t.index}")) for t in self.turns[counted:])
        self._counted = (len(self.turns), tokens)
        return tokens

    def report(self, request: Request, prompt_tokens: int, history_tokens: int) -> dict:
        """The paging block of a response; `history_tokens` is the size of the unpaged prompt."""
        return {
            "session": self.id,
            "pages": len(self.pages),
            "resident": sorted(self.resident.keys),
            "pinned": sorted(self.pinned),
            "evicted": list(self.evicted()),
            "evicted_now": list(request.evicted_now),
            "prefetched": list(request.prefetched),
            "prefetched_in_part": [
                {"page": p, "first_turn": turns[0].index, "last_turn": turns[-1].index} for p, turns in self.shown_in_part(request).items()
            ],
            "recalled": list(request.recalled),
            "recall_errors": sum(1 for _, result, ids in request.recalls if not ids),
            "prompt_tokens": prompt_tokens,
            "history_tokens": history_tokens,
            "prompt_tokens_saved": max(history_tokens - prompt_tokens, 0),
        }


def _message(turn: Turn, segment: str) -> Message:
    return Message(turn.role, turn.content, segment, turn.tool_calls, turn.tool_call_id)


@dataclass(frozen=True)
class Evicted(Sequence[int]):
    """A session's evicted pages, in order, without listing them (a long conversation has
    tens of thousands): pages 1 to `last` but those `shown` (resident or pinned). What
    a request needs of them (how many, whether one is, the newest, the older ones as
    ranges) costs as much as `shown` is large, not the conversation."""

    last: int
    shown: frozenset[int]

    def _gaps(self) -> list[int]:
        return sorted(p for p in self.shown if 1 <= p <= self.last)

    def __len__(self) -> int:
        return self.last - len(self._gaps())

    def __contains__(self, page: object) -> bool:
        return isinstance(page, int) and 1 <= page <= self.last and page not in self.shown

    def __iter__(self) -> Iterator[int]:
        return (p for p in range(1, self.last + 1) if p not in self.shown)

    def __reversed__(self) -> Iterator[int]:
        return (p for p in range(self.last, 0, -1) if p not in self.shown)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"evicted page {i} of {len(self)}")
        page = i % len(self) + 1
        for gap in self._gaps():  # the i-th evicted page: i + 1, moved past each page shown before it
            page += gap <= page
        return page

    def newest(self, n: int) -> list[int]:
        """The last n, in order."""
        return list(islice(reversed(self), n))[::-1]

    def before(self, page: int) -> Evicted:
        return Evicted(min(page - 1, self.last), self.shown)

    def ranges(self) -> str:
        """'1-4, 7, 9-10', as `recall.ranges` writes them."""
        runs, start = [], 1
        for gap in [*self._gaps(), self.last + 1]:
            if gap > start:
                runs.append((start, gap - 1))
            start = gap + 1
        return show_runs(runs)
