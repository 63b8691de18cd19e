"""llm-batch and hybrid: what they make of a model's reply, and that a bad or failing
model never costs a page its bookmark. The model here is a scripted function so each
rule is checked exactly; the real model asks through the server in test_server.py."""

import pytest

from paged_context import keywords, llm_keywords
from paged_context.pages import Turn, segment


def pages(n):
    turns = [Turn(i, "user", f"Page {i} talks about Lisbon and topic{i} with Alice and Bob{i}.") for i in range(n)]
    return segment(turns, "fixed_1")


class Model:
    def __init__(self, reply):
        self.reply, self.prompts = reply, []

    def __call__(self, prompt, max_tokens):
        self.prompts.append((prompt, max_tokens))
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply(prompt) if callable(self.reply) else self.reply


@pytest.fixture(autouse=True)
def fresh_cache():
    llm_keywords._cache.clear()


def test_replies_are_parsed_for_the_pages_asked_about():
    reply = "Sure!\np0: Lisbon, tram, Alice\n  P1 - kitchen; budget\np9: ghost\np1: again\n[p2]: \np3: ,"
    assert llm_keywords.parse_reply(reply, [0, 1, 2, 3]) == {0: ["Lisbon", "tram", "Alice"], 1: ["kitchen", "budget"], 3: []}


def test_llm_batch_keeps_unshared_keywords_and_falls_back_per_page():
    model = Model("p1: Lisbon, tram, Alice\np2: Lisbon, budget\np3: Alice")  # page ids start at 1
    marks = keywords.bookmarks(pages(4), "llm-batch", n=3, complete=model)
    heuristic = keywords.bookmarks(pages(4), "heuristic", n=3)
    assert marks[0].keywords == ("tram",) and marks[1].keywords == ("budget",)  # Lisbon and Alice were given twice
    assert marks[2] == heuristic[2] and marks[3] == heuristic[3]  # nothing usable, or no line: heuristic
    assert len(model.prompts) == 1 and "p4: Page 3 talks" in model.prompts[0][0]


def test_a_failing_model_leaves_the_heuristic_bookmarks(caplog):
    model = Model(TimeoutError("no answer"))
    marks = keywords.bookmarks(pages(3), "llm-batch", n=3, complete=model)
    assert marks == keywords.bookmarks(pages(3), "heuristic", n=3)
    assert "TimeoutError: no answer" in caplog.text
    keywords.bookmarks(pages(3), "llm-batch", n=3, complete=model)
    assert len(model.prompts) == 2  # a failure is not cached: asked again


def test_groups_are_asked_once_and_cached():
    model = Model(lambda prompt: "\n".join(f"p{i}: word{i}" for i in range(1, 81) if f"p{i}:" in prompt))
    first = keywords.bookmarks(pages(40), "llm-batch", n=2, complete=model)
    assert len(model.prompts) == 2  # 32 pages, then 8
    assert [b.keywords for b in first] == [(f"word{i}",) for i in range(1, 41)]
    again = keywords.bookmarks(pages(41), "llm-batch", n=2, complete=model)  # a page more: only the last group again
    assert len(model.prompts) == 3 and again[:40] == first


def test_hybrid_adds_one_distinguishing_keyword_to_the_heuristic_ones():
    model = Model("p1: tram\np2: tram\np3: harbour")
    marks = keywords.bookmarks(pages(3), "hybrid", n=3, complete=model)
    heuristic = keywords.bookmarks(pages(3), "heuristic", n=3)
    assert marks[2].keywords == heuristic[2].keywords + ("harbour",)
    assert marks[0] == heuristic[0] and marks[1] == heuristic[1]  # "tram" tells neither apart


def test_page_by_page_a_new_page_is_asked_about_with_its_group_only():
    model = Model(lambda prompt: "\n".join(f"p{i}: word{i}" for i in range(1, 81) if f"p{i}:" in prompt))
    strategy = keywords.incremental("llm-batch", n=2, complete=model)
    all_pages = pages(34)
    first = strategy(all_pages[:33], {})
    assert len(model.prompts) == 2 and [b.keywords for b in first] == [(f"word{i}",) for i in range(1, 34)]
    (mark,) = strategy(all_pages[33:], {})  # page 34 is asked about with page 33, the first of its group (33-64)
    assert mark.keywords == ("word34",) and len(model.prompts) == 3
    assert "p33:" in model.prompts[-1][0] and "p32:" not in model.prompts[-1][0]
    reopened = keywords.incremental("llm-batch", n=2, complete=None)  # no model: the stored bookmarks need none
    assert reopened(all_pages, {b.page_id: b for b in [*first, mark]}) == [*first, mark]
