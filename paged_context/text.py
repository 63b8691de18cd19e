"""Word-level text helpers shared by segmentation, keywords and the simulators.

Everything here is deterministic and loads fast (NLTK's Porter stemmer is imported on
first use); engines that know the real tokenizer pass their own token counter instead
of `approx_tokens`.
"""

from __future__ import annotations

import functools
import re
from typing import Callable

TokenCounter = Callable[[str], int]

# The cooperative-paging paper's heuristic uses "a 60-word stop list" it does not print:
# these are 60 function words and chat fillers, the words that would otherwise win a
# bookmark for being capitalised at the start of a chat sentence.
STOP_WORDS_60 = frozenset(
    """a an the and or but if so of to in on at for with from by as is are was were be it
    its it's this that that's i i'm i've i'd you you're your we they he she me my what how
    just really hey hi oh wow yeah yes no not thanks thank great good glad awesome""".split()
)

# A broader list for lexical matching, where function words only add noise.
STOP_WORDS = STOP_WORDS_60 | frozenset(
    """about after again all also any because before being between both down during each
    few further here him his her hers herself himself its itself let let's more most much
    mine myself ours ourselves off once only other out over own same should some such than
    then there them themselves through too under until up very which while who whom why
    yours yourself yourselves into again really thanks thank like get got going go know
    think lot well sure good great yeah okay ok wow awesome cool sounds amazing glad
    totally one things thing way time make made see us im ive youre dont thats its
    there's it's i'm i've you're don't that's what's i'll you'll we're they're""".split()
)

# Numbers keep their separators and units ("$2,400", "7:30pm", "555-0142") so that a
# value survives as one keyword.
_WORD = re.compile(r"\$?\d+(?:[.,:\-]\d+)*(?:[A-Za-z]+)?|[A-Za-z][A-Za-z0-9'’\-]*")


def words(text: str) -> list[str]:
    """Word tokens in order, original case, without surrounding punctuation."""
    return [w.replace("’", "'").strip("'-") for w in _WORD.findall(text)]


@functools.lru_cache(maxsize=1 << 16)  # every page's words go through it several times
def normalize(word: str) -> str:
    """Lower-case and fold simple inflections so 'Adoptions' matches 'adoption'."""
    w = word.lower()
    if w.endswith("'s"):
        w = w[:-2]
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        return w[:-1]
    return w


def content_terms(text: str) -> list[str]:
    """Normalised words minus stop words: what lexical matching compares."""
    return [t for t in (normalize(w) for w in words(text)) if t and t not in STOP_WORDS]


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def restates(request: set[str], page: set[str], share: float = 0.5, least: int = 20) -> bool:
    """Whether a long request (`least` content words or more) already says much of what
    a page says (`share` of the page's content words): bringing that page back would
    repeat the request, not add the past. A long message that retells an old topic names
    its pages as strongly as a question about them does; what tells them apart is what
    the page would add. A question is short and never restates: a short page holding the
    fact it asks about shares most of its words with it. In `bench serve` the pages a
    chat turn (about 70 content words) names share 69-89% of their words with it, those a
    question about an early fact names 1-7%; LoCoMo's dev probes lose no evidence to it."""
    return len(request) >= least and bool(page) and len(page & request) >= share * len(page)


def approx_tokens(text: str) -> int:
    """About four characters per token: close enough for English BPE vocabularies."""
    return max(1, (len(text) + 3) // 4)


@functools.lru_cache(maxsize=1 << 16)
def stem(word: str) -> str:
    """Porter's stem ('replayed', 'replaying' -> 'replay'), as LoCoMo's scorer and most
    lexical retrieval use it."""
    return _porter().stem(word)


@functools.lru_cache(maxsize=None)
def _porter():
    from nltk.stem import PorterStemmer

    return PorterStemmer()
