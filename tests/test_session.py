import dataclasses

import pytest

from paged_context.recall import ranges
from paged_context.session import PagedSession, PagingConfig
from paged_context.store import SQLiteStore

SMALL = PagingConfig(boundary="fixed_4", recent_turns=2, resident_high=3, resident_low=2, policy="lru", prefetch_budget=0, match_budget=0)


def converse(session, n, start=0):
    for i in range(start, start + n):
        request = session.ask(f"question {i} about topic{i} and the Lisbon trip")
        session.render(request, "recall(...)")
        session.finish(request, f"answer {i} on topic{i}")
    return request


def test_compaction_between_watermarks():
    session = PagedSession("s", SMALL)
    sizes, evictions = [], []
    for i in range(30):
        request = session.ask(f"q{i}")
        sizes.append(len(session.resident))
        if request.evicted_now:
            evictions.append(len(request.evicted_now))
        session.finish(request, f"a{i}")
    assert max(sizes) <= SMALL.resident_high
    assert evictions and all(n == SMALL.resident_high - SMALL.resident_low + 1 for n in evictions)


def test_render_layout_and_frozen_bookmarks():
    session = PagedSession("s", SMALL)
    converse(session, 6)
    first = dict(session.bookmarks)
    request = converse(session, 6, start=6)
    assert all(session.bookmarks[p] == b for p, b in first.items())  # later pages change no bookmark
    messages = session.render(request, "recall(...)")
    kinds = [m.segment.split(":")[0] for m in messages]
    assert kinds[0] == "system" and kinds.count("bookmarks") == 1 and kinds[-1] == "turn"
    at = kinds.index("bookmarks")
    assert set(kinds[1:at]) == {"page"} and set(kinds[at + 1 :]) <= {"page", "turn"}
    pages = list(dict.fromkeys(int(m.segment.split(":")[1]) for m in messages if m.segment.startswith("page:")))
    assert set(pages) == session.resident.keys and pages[: len(session.base)] == list(session.base)
    assert all(session.bookmarks[p].render() in messages[at].content for p in session.evicted())


def test_between_compactions_the_prompt_only_grows_at_its_end():
    """What a prefix cache keeps: each prompt, less the request it answered and the pages
    brought back for it, starts the next one, unless pages were evicted in between. The
    bookmark of a page brought back stays in the list."""
    config = PagingConfig(boundary="fixed_2", recent_turns=2, resident_high=4, resident_low=2, policy="lru", prefetch_budget=0, match_budget=1)
    session = PagedSession("s", config)
    previous, compactions, grown, brought = None, 0, 0, 0
    for i in range(40):
        request = session.ask(f"note {i}: topic{i % 7} went well" if i % 5 else f"how did topic{(i + 3) % 7} go?")
        messages = session.render(request)
        if request.prefetched:
            brought += 1
            note = next(m for m in messages if m.segment == "bookmarks").content
            assert all(session.bookmarks[p].render() in note for p in request.prefetched)
        if request.evicted_now:
            compactions += 1
        elif previous is not None:
            assert said(messages[: len(previous)]) == said(previous), i  # the same tokens: the labels may differ
            grown += 1
        asked = f"turn:{session.turns[-1].index}"
        previous = messages[: next(j for j, m in enumerate(messages) if m.segment in ("prefetch", asked))]
        session.finish(request, f"answer {i}")
    assert compactions and brought and grown > 2 * compactions


def said(messages):
    return [(m.role, m.content, m.tool_calls, m.tool_call_id) for m in messages]


def test_recall_serves_pages_and_brings_them_back():
    session = PagedSession("s", SMALL)
    converse(session, 10)
    request = session.ask("what about topic0?")
    target = session.evicted()[0]
    result = session.recall(request, "recall(...)", {"page_ids": [target]})
    assert result.startswith(f"[page {target},") and session.pages[target].turns[0].text in result
    assert session.recall(request, "recall(...)", {"page_ids": [target]}).startswith("recall error:")  # now in context
    messages = session.render(request)
    assert [m.role for m in messages[-2:]] == ["assistant", "tool"]
    session.finish(request, "done")
    assert target in session.resident and len(session.resident) <= SMALL.resident_high


def test_the_store_has_every_turn_and_a_reopened_session_pages_the_same(tmp_path):
    with SQLiteStore(tmp_path / "s.db") as store:
        session = PagedSession("s", SMALL, store)
        converse(session, 9)
        request = session.ask("unanswered question")  # stored before any answer exists
    with SQLiteStore(tmp_path / "s.db") as store:
        again = PagedSession("s", SMALL, store)
        assert again.turns == session.turns and again.turns[-1].text == "unanswered question"
        assert again.pages == session.pages and again.bookmarks == session.bookmarks
        assert [p.id for p in store.pages("s")] == sorted(session.pages)
    assert request.query == "unanswered question"


def test_a_history_arriving_whole_is_one_commit(tmp_path):
    """A stateless client's first request can bring thousands of turns: one transaction
    (all or none), not one commit per turn."""
    with SQLiteStore(tmp_path / "s.db") as store:
        session = PagedSession("s", SMALL, store)
        before = store.version("s")
        made = session.add_turns([("user" if i % 2 == 0 else "assistant", f"turn {i}", {}) for i in range(500)])
        assert store.version("s") == before + 1
        assert [t.index for t in made] == list(range(500)) and store.turns("s") == session.turns == made
        assert session.add_turn("user", "one more").index == 500 and store.version("s") == before + 2


@pytest.mark.parametrize("policy", ["learned", "lru"])
def test_the_controller_prefetches_the_page_with_the_fact(policy):
    config = PagingConfig(boundary="fixed_4", recent_turns=2, resident_high=3, resident_low=2, policy=policy)
    session = PagedSession("s", config)
    request = session.ask("Please remember: my locker code at the Riverside gym is 4417.")
    session.finish(request, "Noted, locker code 4417 at Riverside.")
    for i in range(24):
        request = session.ask(f"Let's talk about cooking dish number {i} with garlic and basil.")
        session.finish(request, f"Dish {i} sounds tasty.")
    fact_page = next(p for p, page in session.pages.items() if "4417" in page.text)
    assert fact_page not in session.resident
    request = session.ask("What is my locker code at the Riverside gym?")
    assert fact_page in request.prefetched
    assert "4417" in session.render(request)[-2].content


def test_a_pinned_page_stays_in_view_and_the_pin_survives_a_restart(tmp_path):
    config = PagingConfig(boundary="fixed_2", recent_turns=2, resident_high=1, resident_low=1, prefetch_budget=0, match_budget=0, policy="lru")
    with SQLiteStore(tmp_path / "pages.db") as store:
        session = PagedSession("s", config, store)
        for i in range(10):
            session.add_turn("user" if i % 2 == 0 else "assistant", f"turn {i} about topic {i}")
        session.finish(session.ask("first question"), "first answer")  # pages close when a request comes
        session.pin(1)
        request = session.ask("what was first?")
        rendered = "\n".join(m.content for m in session.render(request))
        assert 1 not in session.resident and 1 not in session.evicted()
        assert "turn 0 about topic 0" in rendered and "[p1:" not in rendered
        assert session.report(request, 0, 0)["pinned"] == [1]
        with pytest.raises(KeyError, match="no page 99"):
            session.pin(99)
    with SQLiteStore(tmp_path / "pages.db") as store:
        again = PagedSession("s", config, store)
        assert again.pinned == {1}
        again.pin(1, False)
    with SQLiteStore(tmp_path / "pages.db") as store:
        assert PagedSession("s", config, store).pinned == set()


def test_client_options_are_checked_and_kept_by_the_session(tmp_path):
    config = SMALL.with_options({"policy": "fifo", "keywords": "tfidf", "resident_high": 5})
    assert (config.policy, config.keywords, config.resident_high, config.boundary) == ("fifo", "tfidf", 5, "fixed_4")
    for bad, message in [
        ({"pages": 3}, "unknown paging option"), ({"resident_high": "5"}, "integer"), ({"policy": 3}, "string"),
        ({"policy": "oracle"}, "unknown policy"), ({"boundary": "fixed_0"}, "at least 1"),
        ({"resident_low": 9}, "resident_low"), ([], "object"), ({"keywords": "clever"}, "keyword strategy"),
    ]:
        with pytest.raises(ValueError, match=message):
            SMALL.with_options(bad)
    with SQLiteStore(tmp_path / "pages.db") as store:
        session = PagedSession("s", config, store)
        converse(session, 3)
    with SQLiteStore(tmp_path / "pages.db") as store:
        again = PagedSession("s", SMALL, store)  # reopened under another default: the session keeps its own
        assert again.config == config and again.policy.__class__.__name__.lower().startswith("fifo")


def test_client_instructions_follow_the_paging_instructions():
    session = PagedSession("s", SMALL)
    request = session.ask("hello", "Answer in French.")
    first = session.render(request, "recall(...)")[0]
    assert first.content == "Answer in French."  # nothing evicted yet: no paging instructions
    session.finish(request, "bonjour")
    converse(session, 12)
    request = session.ask("and now?", "Answer in French.")
    assert session.evicted()
    system = session.render(request, "recall(...)")[0].content
    assert "bookmark" in system and system.endswith("\n\nAnswer in French.")


def test_a_users_question_brings_back_the_pages_it_names():
    """Beside the controller's prefetch, a question gets the pages whose (stemmed) words
    it shares most; tool results being answered do not trigger it."""
    from paged_context.calls import ToolCall

    config = PagingConfig(boundary="fixed_2", recent_turns=2, resident_high=2, resident_low=1, policy="lru", prefetch_budget=0, match_budget=1)
    session = PagedSession("s", config)
    session.finish(session.ask("Our deploy replayed 4031 rows after the outage."), "Noted.")
    for i in range(12):
        session.finish(session.ask(f"Let's plan meal {i} with garlic and basil."), f"Meal {i} sounds good.")
    fact = next(p for p, page in session.pages.items() if "4031" in page.text)
    assert fact in session.evicted()
    assert session.ask("How many rows did the replay give?").prefetched == (fact,)  # 'replay' matches 'replayed'
    session.finish(session.plan(), "4031.")
    retold = (
        "Our deploy replayed 4031 rows after the outage, again. I keep thinking about that outage: the alerts fired late, "
        "the dashboards stayed green, the pager woke the wrong team, and the rollback script needed three manual edits."
    )
    assert session.ask(retold).prefetched == ()  # a long message that restates the page gets nothing back
    session.finish(session.plan(), "4031.")
    session.add_turn("assistant", "", tool_calls=(ToolCall("search", '{"query": "replay rows"}', "c1"),))
    session.add_turn("tool", "replay rows: 4031", tool_call_id="c1")
    assert session.plan().prefetched == ()


def test_a_prompt_filling_the_window_is_compacted_in_one_batch():
    """Past the high window watermark the policy's victims go in one batch, down to about
    the low one, so the prefix changes once, not at every turn near the window's edge."""
    from paged_context.text import approx_tokens

    config = PagingConfig(boundary="fixed_2", recent_turns=2, resident_high=1000, resident_low=1, policy="lru", prefetch_budget=0, match_budget=0, window_high=80, window_low=40)
    session = PagedSession("s", config)
    encode = lambda messages: range(sum(approx_tokens(m.content) + 4 for m in messages))  # noqa: E731
    budget, sizes, batches = 1000, [], []
    for i in range(60):
        request = session.ask(f"note {i}: " + " ".join(f"word{i}x{j}" for j in range(20)))
        _, tokens = session.render_within(request, None, encode, budget)
        sizes.append(len(tokens))
        if request.evicted_now:
            batches.append(len(request.evicted_now))
            assert len(tokens) <= budget * 0.4 + 60  # down to the low watermark (give or take the request)
        session.finish(request, f"answer {i}")
    assert max(sizes) <= budget * 0.8 + 60
    assert len(batches) >= 2 and min(batches) >= 3 and len(batches) <= len(sizes) // 5


def test_a_page_the_requests_own_compaction_evicts_can_come_back_for_it():
    """A long history arriving at once is paged by the first request's compaction, after
    the request was planned: a page that compaction evicted and the question names is
    brought back for the question all the same."""
    from paged_context.text import approx_tokens

    config = PagingConfig(boundary="fixed_2", recent_turns=2, policy="lru", prefetch_budget=0, match_budget=2)
    session = PagedSession("s", config)
    session.add_turn("user", "My locker code at the Porto gym is 4417.")
    session.add_turn("assistant", "Noted: locker 4417 in Porto.")
    for i in range(1, 12):
        session.add_turn("user", f"note {i}: " + " ".join(f"word{i}x{j}" for j in range(30)))
        session.add_turn("assistant", f"answer {i}")
    request = session.ask("What is my locker code at the Porto gym?")
    assert request.prefetched == ()  # planned while every page was still in view
    encode = lambda messages: range(sum(approx_tokens(m.content) + 4 for m in messages))  # noqa: E731
    messages, _ = session.render_within(request, None, encode, 600)
    assert 1 in request.evicted_now and 1 in request.prefetched
    assert "4417" in "\n".join(m.content for m in messages)


def test_the_evicted_pages_are_a_view_of_the_pages_not_shown():
    from paged_context.session import Evicted

    evicted = Evicted(10, frozenset({2, 3, 7, 12}))
    assert list(evicted) == [1, 4, 5, 6, 8, 9, 10] and len(evicted) == 7 and list(reversed(evicted)) == [10, 9, 8, 6, 5, 4, 1]
    assert [evicted[i] for i in range(7)] == list(evicted) and evicted[-1] == 10 and evicted[1:3] == [4, 5]
    assert 4 in evicted and 3 not in evicted and 11 not in evicted and evicted.newest(3) == [8, 9, 10]
    assert evicted.ranges() == ranges(list(evicted)) == "1, 4-6, 8-10" and evicted.before(8).ranges() == "1, 4-6"
    assert Evicted(2, frozenset({1, 2})).ranges() == "none" and not Evicted(2, frozenset({1, 2}))
    with pytest.raises(IndexError):
        evicted[7]


def test_the_note_lists_the_newest_bookmarks_and_the_older_pages_by_number():
    config = dataclasses.replace(SMALL, max_bookmarks=3)
    session = PagedSession("s", config)
    converse(session, 20)
    request = session.ask("anything new?")
    note = bookmark_list(session.render(request))
    evicted = session.evicted()
    assert len(evicted) > 3 and all(session.bookmarks[p].render() in note for p in evicted.newest(3))
    assert f"Older pages {ranges(list(evicted)[:-3])} (recall them by number)." in note
    assert not any(session.bookmarks[p].render() in note for p in list(evicted)[:-3])
    session.finish(request, "nothing")
    notes = {}
    for i in range(8):  # while no page leaves, the note stays the same text
        request = session.ask(f"question {i} about the Lisbon trip")
        notes.setdefault(tuple(session.evicted()), set()).add(bookmark_list(session.render(request)))
        session.finish(request, "fine")
    assert len(notes) > 1 and all(len(texts) == 1 for texts in notes.values())
    with pytest.raises(ValueError, match="max_bookmarks must be an integer"):
        SMALL.with_options({"max_bookmarks": -1})


def test_a_reopened_session_goes_on_paging_and_bookmarking_as_if_never_closed(tmp_path):
    straight = PagedSession("s", SMALL)
    converse(straight, 20)
    with SQLiteStore(tmp_path / "s.db") as store:
        converse(PagedSession("s", SMALL, store), 9)
    with SQLiteStore(tmp_path / "s.db") as store:
        converse(PagedSession("s", SMALL, store), 11, start=9)
    with SQLiteStore(tmp_path / "s.db") as store:
        again = PagedSession("s", SMALL, store)
        assert again.pages == straight.pages and again.bookmarks == straight.bookmarks


def bookmark_list(messages):
    return next(m.content for m in messages if m.segment == "bookmarks")


def test_earlier_recall_rounds_give_way_when_the_window_is_full():
    """Two rounds of recalled pages may not fit the window together: once nothing else
    is left to drop, the earlier round's pages are replaced by their numbers and the
    last round stays whole."""
    from paged_context.text import approx_tokens

    encode = lambda messages: range(sum(approx_tokens(m.content) + 4 for m in messages))  # noqa: E731

    def two_rounds():
        session = PagedSession("s", SMALL)
        converse(session, 14)
        request = session.ask("what about topic1 and topic2?")
        first, second = session.evicted()[:2]
        session.recall(request, "recall(...)", {"page_ids": [first]})
        session.recall(request, "recall(...)", {"page_ids": [second]})
        return session, request, first, second

    session, request, _, _ = two_rounds()
    budget = len(encode(session.render(request)))
    while True:  # the largest budget at which the earlier round has to go
        budget -= 5
        session, request, first, second = two_rounds()
        messages, tokens = session.render_within(request, None, encode, budget)
        results = [m.content for m in messages if m.role == "tool"]
        if results[0].startswith("[shown earlier and dropped: pages"):
            break
    assert str(first) in results[0] and session.pages[second].turns[0].text in results[1] and len(tokens) <= budget


def locker_session(**options):
    """30 exchanges in pages of 10 turns, the 14th telling a locker code."""
    config = PagingConfig(boundary="fixed_10", recent_turns=2, resident_high=1, resident_low=1, policy="lru", prefetch_budget=2, match_budget=2)
    session = PagedSession("s", dataclasses.replace(config, **options))
    for i in range(30):
        fact = "My locker code at the Porto gym is 4417." if i == 13 else f"note {i}: " + " ".join(f"word{i}x{j}" for j in range(12))
        session.add_turn("user", fact)
        session.add_turn("assistant", "Noted: locker 4417 in Porto." if i == 13 else f"answer {i}")
    return session


def test_prefetched_pages_that_do_not_fit_whole_are_cut_to_the_turns_that_match_first():
    """When the window is tight, a brought-back page shows the five turns around the one
    the question names before any page is dropped; the rest stays recallable."""
    from paged_context.text import approx_tokens

    session = locker_session(prefetch_turns=0)  # whole pages while they fit
    request = session.ask("What is my locker code at the Porto gym?")
    page = next(p for p, pg in session.pages.items() if any("4417" in t.text for t in pg.turns))
    assert request.prefetched[0] == page
    encode = lambda messages: range(sum(approx_tokens(m.content) + 4 for m in messages))  # noqa: E731
    roomy = len(encode(session.render(request)))
    messages, tokens = session.render_within(request, None, encode, roomy - 60)
    assert len(tokens) <= roomy - 60 and page in request.prefetched and page in request.cut
    note = next(m.content for m in messages if m.segment == "prefetch")
    shown = session.brought_back(request)[page]
    assert len(shown) == 5 and any("4417" in t.text for t in shown) and f"recall page {page} for all of it" in note
    assert all(t.text in note for t in shown) and not all(t.text in note for t in session.pages[page].turns)
    assert session.report(request, 0, 0)["prefetched_in_part"] == [{"page": page, "first_turn": shown[0].index, "last_turn": shown[-1].index}]
    assert page in session.recallable(request)  # the model may read the rest of a cut page
    session.recall(request, "recall(...)", {"page_ids": [page]})
    assert page not in request.prefetched and page not in request.cut


def test_prefetch_turns_brings_pages_back_as_excerpts():
    session = locker_session(prefetch_turns=3)
    request = session.ask("What is my locker code at the Porto gym?")
    page = request.prefetched[0]
    shown = session.brought_back(request)
    assert [len(turns) for turns in shown.values()] == [3] and any("4417" in t.text for t in shown[page])
    note = next(m.content for m in session.render(request) if m.segment == "prefetch")
    assert f"recall page {page} for all of it" in note and "note 10:" not in note
    assert [c["page"] for c in session.report(request, 0, 0)["prefetched_in_part"]] == list(request.prefetched)
    assert set(request.prefetched) <= set(session.recallable(request))
    assert session.make_room(request) and request.prefetched == () and request.cut == ()  # 3 turns: nothing to cut, so it goes
    whole = locker_session(prefetch_turns=0)
    request = whole.ask("What is my locker code at the Porto gym?")
    assert [len(turns) for turns in whole.brought_back(request).values()] == [10] and whole.report(request, 0, 0)["prefetched_in_part"] == []
    assert not set(request.prefetched) & set(whole.recallable(request))


def test_prefetch_turns_is_checked():
    with pytest.raises(ValueError, match="prefetch_turns must be 0"):
        PagingConfig(prefetch_turns=-1)
    with pytest.raises(ValueError, match="prefetch_turns must be an integer between 0 and 1000"):
        PagingConfig().with_options({"prefetch_turns": -2})
