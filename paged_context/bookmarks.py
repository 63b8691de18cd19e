"""Bookmarks: the short stand-in `[p7:Caroline,adoption,agency]` left where a page was.

A keyword can never break the format: the characters that delimit a bookmark
(`[`, `]`, `,`, line breaks and other control characters) are removed when a bookmark is
built, so `parse(render(b)) == b` holds for every bookmark, whatever text it was given.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

MAX_KEYWORD_CHARS = 40
_BOOKMARK = re.compile(r"\[p(\d+):([^\[\]\n]*)\]")


def clean_keyword(text: str) -> str:
    """The keyword as it can appear inside a bookmark (empty when nothing is left)."""
    kept = "".join(
        " " if ch.isspace() else ch
        for ch in str(text)
        if ch not in "[],\\" and (ch.isspace() or unicodedata.category(ch)[0] not in "CZ")
    )
    return " ".join(kept.split())[:MAX_KEYWORD_CHARS].strip()


@dataclass(frozen=True)
class Bookmark:
    page_id: int
    keywords: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.page_id, int) or isinstance(self.page_id, bool) or self.page_id < 0:
            raise ValueError(f"page id must be a non-negative int, got {self.page_id!r}")
        cleaned: list[str] = []
        for k in self.keywords:
            c = clean_keyword(k)
            if c and c.lower() not in (x.lower() for x in cleaned):
                cleaned.append(c)
        object.__setattr__(self, "keywords", tuple(cleaned))

    def render(self) -> str:
        return f"[p{self.page_id}:{','.join(self.keywords)}]"


def parse(text: str) -> Bookmark:
    """The one bookmark that `text` consists of (surrounding whitespace allowed)."""
    m = _BOOKMARK.fullmatch(text.strip())
    if not m:
        raise ValueError(f"not a bookmark: {text[:80]!r}")
    return _from_match(m)


def find_all(text: str) -> list[Bookmark]:
    """Every bookmark in a rendered context, in order."""
    return [_from_match(m) for m in _BOOKMARK.finditer(text)]


def _from_match(m: re.Match[str]) -> Bookmark:
    body = m.group(2)
    return Bookmark(int(m.group(1)), tuple(body.split(",")) if body else ())
