import subprocess
import sys

import pytest

from paged_context import keywords
from paged_context.bookmarks import Bookmark
from paged_context.pages import Turn, segment
from paged_context.sim.conversations import load_locomo
from paged_context.text import normalize, words


def pages_of(*texts_per_page):
    turns, pages_spec = [], []
    for texts in texts_per_page:
        pages_spec.append(len(texts))
        for t in texts:
            turns.append(Turn(len(turns), "user" if len(turns) % 2 == 0 else "assistant", t))
    pages = segment(turns, f"fixed_{pages_spec[0]}")
    assert len(pages) == len(texts_per_page)
    return pages


TRAVEL = pages_of(
    ["I booked flights to Lisbon for the conference", "Lisbon is lovely in spring, enjoy the conference"],
    ["My sister adopted a puppy called Biscuit", "Biscuit sounds adorable, puppies need patience"],
    ["The kitchen renovation budget is $2,400 and due May 7", "A tight budget, but the kitchen will look great"],
    ["We watched the conference keynote about Lisbon startups", "Keynotes can be inspiring"],
)


@pytest.mark.parametrize("name", ["random", "heuristic", "tfidf", "distinctive"])
def test_one_bookmark_per_page_with_words_from_that_page(name):
    marks = keywords.bookmarks(TRAVEL, name)
    assert [b.page_id for b in marks] == [p.id for p in TRAVEL]
    for b, p in zip(marks, TRAVEL):
        assert 1 <= len(b.keywords) <= 5
        # bookmarks drop commas, so "$2,400" comes back as "$2400"
        page_terms = {normalize(w) for w in words(p.text) + words(p.text.replace(",", ""))}
        for k in b.keywords:
            assert {normalize(w) for w in words(k)} <= page_terms, (name, k)


def test_heuristic_takes_names_numbers_money_and_dates_first():
    (mark,) = keywords.bookmarks([TRAVEL[2]], "heuristic")
    assert mark.keywords[:2] == ("$2400", "May 7")
    (mark,) = keywords.bookmarks([TRAVEL[0]], "heuristic")
    assert mark.keywords[0] == "Lisbon"
    assert all(k.lower() not in {"i", "my", "the"} for k in mark.keywords)


def test_random_is_seeded():
    assert keywords.bookmarks(TRAVEL, "random", seed=1) == keywords.bookmarks(TRAVEL, "random", seed=1)
    assert keywords.bookmarks(TRAVEL, "random", seed=1) != keywords.bookmarks(TRAVEL, "random", seed=2)


def test_distinctive_never_shares_a_keyword_when_pages_have_words_of_their_own():
    marks = keywords.bookmarks(TRAVEL, "distinctive", n=3)
    seen = [normalize(k) for b in marks for k in b.keywords]
    assert len(seen) == len(set(seen)) == 12
    # 'conference' and 'lisbon' are on pages 1 and 4: neither may point at both
    assert all(sum(normalize(k) in {"conference", "lisbon"} for k in b.keywords) <= 2 for b in marks)


def test_distinctive_shares_only_when_unavoidable():
    same = pages_of(["apples and pears"], ["apples and pears"])
    marks = keywords.bookmarks(same, "distinctive", n=2)
    assert all(b.keywords for b in marks)  # each page still gets keywords, shared by necessity


def test_distinctive_on_locomo_keeps_bookmarks_apart(locomo_path):
    conv = load_locomo(locomo_path)[0]
    pages = segment(conv.turns, "fixed_10")
    marks = keywords.bookmarks(pages, "distinctive")
    seen = [normalize(k) for b in marks for k in b.keywords]
    assert len(seen) == len(set(seen)) == 4 * len(pages)


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    """A test's registered strategies end with it: other tests (the OpenAPI description)
    list the registry."""
    monkeypatch.setattr(keywords, "_REGISTRY", dict(keywords._REGISTRY))


def test_strategies_plug_in_by_name():
    @keywords.register("first-word")
    def first_word(n=1):
        return lambda pages: [Bookmark(p.id, tuple(words(p.text)[:n])) for p in pages]

    assert keywords.bookmarks(TRAVEL[:1], "first-word") == [Bookmark(1, ("I",))]
    assert "first-word" in keywords.names()
    with pytest.raises(ValueError, match="asks a model"):
        keywords.make("llm-batch")
    with pytest.raises(ValueError, match="unknown keyword strategy 'nope'"):
        keywords.make("nope")


def test_every_strategy_is_named_in_a_fresh_interpreter():
    # nothing imported before may be what fills the registry
    code = "from paged_context.keywords import LLM_STRATEGIES, names; print(*names(), '|', *LLM_STRATEGIES)"
    named, asks_a_model = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("|")
    assert named.split() == ["distinctive", "heuristic", "hybrid", "llm-batch", "random", "tfidf"]
    assert asks_a_model.split() == ["llm-batch", "hybrid"]


def one_by_one(strategy, pages):
    return [mark for page in pages for mark in strategy([page], {})]


@pytest.mark.parametrize("name", ["random", "heuristic"])
def test_page_by_page_the_strategies_that_read_a_page_alone_give_the_batch_bookmarks(name):
    assert one_by_one(keywords.incremental(name), TRAVEL) == keywords.bookmarks(TRAVEL, name)


@pytest.mark.parametrize("name", ["tfidf", "distinctive"])
def test_page_by_page_each_bookmark_has_words_of_its_page(name):
    marks = one_by_one(keywords.incremental(name, n=3), TRAVEL)
    assert [b.page_id for b in marks] == [p.id for p in TRAVEL]
    for b, p in zip(marks, TRAVEL):
        page_terms = {normalize(w) for w in words(p.text) + words(p.text.replace(",", ""))}
        assert len(b.keywords) == 3 and all({normalize(w) for w in words(k)} <= page_terms for k in b.keywords), (name, b)


def test_page_by_page_distinctive_hands_each_keyword_out_once():
    marks = one_by_one(keywords.incremental("distinctive", n=3), TRAVEL)
    seen = [normalize(k) for b in marks for k in b.keywords]
    assert len(seen) == len(set(seen)) == 12
    same = pages_of(["apples and pears"], ["apples and pears"])
    assert all(b.keywords for b in one_by_one(keywords.incremental("distinctive", n=2), same))  # shared by necessity


@pytest.mark.parametrize("name", ["random", "heuristic", "tfidf", "distinctive"])
def test_bookmarks_made_before_come_back_and_still_count(name):
    """A session reopened from its store passes the bookmarks it has: they are kept as
    they are, and the pages after them get what they would have got."""
    straight = keywords.incremental(name, n=3)(TRAVEL, {})
    stored = {b.page_id: Bookmark(b.page_id, ("stored",)) for b in straight[:2]}
    reopened = keywords.incremental(name, n=3)
    assert reopened(TRAVEL[:2], stored) == list(stored.values())
    assert one_by_one(reopened, TRAVEL[2:]) == straight[2:]


def test_a_registered_strategy_page_by_page_sees_every_page_so_far():
    seen = []

    @keywords.register("count-pages")
    def count_pages(n=1):
        def strategy(pages):
            seen.append([p.id for p in pages])
            return [Bookmark(p.id, (f"of{len(pages)}",)) for p in pages]

        return strategy

    marks = one_by_one(keywords.incremental("count-pages"), TRAVEL)
    assert seen == [[1], [1, 2], [1, 2, 3], [1, 2, 3, 4]] and marks[-1].keywords == ("of4",)
