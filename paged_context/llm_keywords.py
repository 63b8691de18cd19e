"""The cooperative-paging paper's keyword strategies that ask a model.

- `llm-batch`: one call over the digests of a group of pages; each page keeps the
  keywords the model gave it that it gave no other page (the paper: no keyword shared
  across pages).
- `hybrid`: the heuristic keywords, plus one keyword the model picks to tell the page
  apart from the others (one call per group of pages).

They need a completion function, `complete(prompt, max_tokens) -> text`: the server and
`PagedLLM` pass their engine's (the same model that answers). A model that answers
badly loses nothing: a page the reply gives no usable keyword gets the heuristic
bookmark. Pages are asked about in fixed groups of `GROUP` by page id, so a growing
conversation only re-asks about its last group, and replies are cached by the group's
text, so sessions holding the same conversation ask once. Incrementally (a session's
pages as they close) a strategy runs over the new pages' group alone, so a keyword the
model also gave a page of an earlier group is no longer dropped as shared.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter, OrderedDict
from typing import Callable, Sequence

from .bookmarks import Bookmark, clean_keyword
from .lexical_keywords import Incremental, KeywordStrategy, heuristic_keywords, rebatched
from .pages import Page

Complete = Callable[[str, int], str]  # (prompt, max_tokens) -> the model's reply
log = logging.getLogger(__name__)

GROUP = 32  # pages per call: the digests of a group fit a small model's window
DIGEST_CHARS = 240
_LINE = re.compile(r"^\W*p(\d+)\W*[:\-–]\s*(.+)$", re.I)
_cache: OrderedDict[tuple, dict[int, list[str]]] = OrderedDict()
_CACHE_SIZE = 512

BATCH_PROMPT = (
    "Below are numbered pages of a conversation. For each page write {n} keywords (names, places, dates, things) "
    "that identify that page and no other. Answer with one line per page, in order, like\np{first}: keyword, keyword, keyword\n\n"
    "Pages:\n{pages}"
)
HYBRID_PROMPT = (
    "Below are numbered pages of a conversation. For each page write one word or short name that tells it apart "
    "from all the other pages. Answer with one line per page, in order, like\np{first}: word\n\nPages:\n{pages}"
)


def digest(page: Page) -> str:
    text = " ".join(page.text.split())
    return text if len(text) <= DIGEST_CHARS else text[:DIGEST_CHARS].rsplit(" ", 1)[0] + " …"


def parse_reply(text: str, page_ids: Sequence[int]) -> dict[int, list[str]]:
    """`pN: kw, kw` lines of a reply -> keywords per page, for the pages asked about only."""
    wanted, out = set(page_ids), {}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m and int(m.group(1)) in wanted and int(m.group(1)) not in out:
            found = [clean_keyword(k) for k in re.split(r"[,;]", m.group(2))]
            out[int(m.group(1))] = [k for k in found if k]
    return out


def unshared(found: dict[int, list[str]]) -> dict[int, list[str]]:
    """Each page's keywords minus those the model gave to another page too."""
    pages_of = Counter(k.lower() for kws in found.values() for k in {k.lower(): k for k in kws})
    return {p: [k for k in kws if pages_of[k.lower()] == 1] for p, kws in found.items()}


def ask(complete: Complete, template: str, pages: Sequence[Page], n: int, tokens_per_page: int) -> dict[int, list[str]]:
    """The model's keywords for `pages`, in groups of GROUP, cached by the groups' text."""
    out: dict[int, list[str]] = {}
    for start in range(0, len(pages), GROUP):
        group = pages[start : start + GROUP]
        key = (template, n, hashlib.sha256("\x00".join(f"{p.id}\x01{p.text}" for p in group).encode()).hexdigest())
        if key not in _cache:
            prompt = template.format(n=n, first=group[0].id, pages="\n".join(f"p{p.id}: {digest(p)}" for p in group))
            try:
                reply = complete(prompt, tokens_per_page * len(group) + 16)
            except Exception as error:  # noqa: BLE001 - the model is an aid: any failure falls back to heuristic keywords
                log.warning("keyword strategy: the model failed (%s: %s); heuristic keywords for pages %d-%d", type(error).__name__, error, group[0].id, group[-1].id)
                continue  # not cached: the next page that closes asks again
            _cache[key] = parse_reply(reply, [p.id for p in group])
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
        _cache.move_to_end(key)
        out.update(_cache[key])
    return out


def _needs(complete: Complete | None, name: str) -> Complete:
    if complete is None:
        raise ValueError(f"keyword strategy {name!r} asks a model: it needs a completion function (the server and PagedLLM pass their engine's)")
    return complete


def llm_batch(n: int = 4, complete: Complete | None = None) -> KeywordStrategy:
    ask_model, fallback = _needs(complete, "llm-batch"), heuristic_keywords(n=n)

    def strategy(pages: Sequence[Page]) -> list[Bookmark]:
        found = unshared(ask(ask_model, BATCH_PROMPT, pages, n, tokens_per_page=6 * n))
        heuristic = {b.page_id: b for b in fallback(pages)}
        return [Bookmark(p.id, tuple(found[p.id][:n])) if found.get(p.id) else heuristic[p.id] for p in pages]

    return strategy


def hybrid(n: int = 4, complete: Complete | None = None) -> KeywordStrategy:
    ask_model, base = _needs(complete, "hybrid"), heuristic_keywords(n=n)

    def strategy(pages: Sequence[Page]) -> list[Bookmark]:
        found = unshared(ask(ask_model, HYBRID_PROMPT, pages, 1, tokens_per_page=10))
        return [Bookmark(b.page_id, b.keywords + tuple(found.get(b.page_id, [])[:1])) for b in base(pages)]

    return strategy


def _group_start(page_id: int) -> int:
    return (page_id - 1) // GROUP * GROUP + 1


STRATEGIES = {"llm-batch": llm_batch, "hybrid": hybrid}
INCREMENTAL: dict[str, Callable[..., Incremental]] = {name: rebatched(factory, _group_start) for name, factory in STRATEGIES.items()}
