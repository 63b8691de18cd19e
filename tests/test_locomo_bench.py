"""`bench locomo` without a model: question selection, what each method shows, the
resumable log and the summary. The run against a real server is in test_server.py."""

import json
from collections import Counter

import pytest

from locomo_sample import write
from paged_context.bench import locomo
from paged_context.session import PagingConfig
from paged_context.sim.conversations import load_locomo
from paged_context.text import approx_tokens


@pytest.fixture
def conversations(tmp_path):
    return load_locomo(write(tmp_path / "locomo.json"))


def settings(**kw):
    return locomo.Settings("m", "data", **{"context_tokens": 600, "window": 2000, "max_tokens": 16, "top_k": 1, **kw})


def test_questions_by_category_and_stratified_subsets(conversations):
    every = locomo.questions_of(conversations, [1, 2, 3, 4])
    assert len(every) == 10 and {q.category for q in every} == {1, 2, 3, 4}
    assert every[0].id == "conv-a:0" and every[0].gold == "Biscuit" and every[0].evidence == (2,)
    subset = locomo.stratified(every, 8, seed=0)
    assert len(subset) == 8 and subset == locomo.stratified(every, 8, seed=0)
    # categories 1-3 have one question per conversation, category 4 two: 8 of 10 keep one of each stratum
    assert Counter((q.category, q.conversation) for q in subset) == Counter((q.category, q.conversation) for q in every) - Counter(
        (q.category, q.conversation) for q in every if q not in subset
    )
    assert {(q.category, q.conversation) for q in subset} == {(q.category, q.conversation) for q in every}
    assert locomo.stratified(every, None, 0) == every


def test_turns_carry_speaker_and_session_date(conversations):
    lines = locomo.lines(conversations[0])
    assert lines[0].startswith("(10:00 am on 1 May, 2023)\nAlice: ")
    assert lines[1].startswith("Bob: ") and lines[10].startswith("(10:00 am on 2 May, 2023)\n")


def test_truncation_and_full_context_show_the_most_recent_turns_that_fit(conversations):
    context = locomo.Context(conversations[0], settings())
    shown = context.baseline("truncation", "Where?")
    assert max(shown.turns) == 39 and 2 not in shown.turns
    recent = [context.lines[t] for t in sorted(shown.turns)]
    assert sum(approx_tokens(t) + 1 for t in recent) <= 600
    full = context.baseline("full_context", "Where?")
    assert shown.turns < full.turns and len(full.turns) == 40  # the whole conversation fits a 2,000-token window
    assert [m["role"] for m in shown.messages] == ["system", "user"] and shown.messages[1]["content"] == "Question: Where?\nShort answer:"


@pytest.mark.parametrize("method", ["bm25", "word_overlap"])
def test_retrieval_brings_the_page_holding_the_answer(conversations, method):
    context = locomo.Context(conversations[0], settings())
    shown = context.baseline(method, "What is the name of the dog Alice's sister adopted (a greyhound)?")
    assert 2 in shown.turns  # D1:3, the greyhound
    assert "Biscuit" in shown.messages[0]["content"]
    assert "Biscuit" not in context.baseline("truncation", "x").messages[0]["content"]


def test_search_tool_prompt_and_search(conversations):
    context = locomo.Context(conversations[0], settings())
    shown = context.baseline("search_tool", "Where was the marathon?")
    assert 'search("' in shown.messages[0]["content"] and "Lisbon" not in shown.messages[0]["content"]
    found = context.search("Lisbon marathon", shown.turns)
    assert any("Lisbon" in p.text for p in found) and len(found) == 1
    assert locomo.SEARCH_CALL.search('search("Lisbon marathon")').group(1) == "Lisbon marathon"


def test_paged_methods_send_the_whole_conversation_with_their_options(conversations):
    context = locomo.Context(conversations[0], settings())
    messages = context.history("Where?")
    assert len(messages) == 42 and messages[0]["role"] == "system" and messages[-1]["content"].startswith("Question: Where?")
    ours = locomo.paging_options("controller", settings())
    assert ours["policy"] == "learned" and ours["prefetch_budget"] == 3 and ours["match_budget"] == PagingConfig.match_budget > 0
    assert ours["prefetch_turns"] == PagingConfig.prefetch_turns
    options = locomo.paging_options("bookmark_recall:tfidf", settings(resident=2))
    assert options == {"boundary": "fixed_10", "resident_low": 2, "resident_high": 2, "policy": "lru", "prefetch_budget": 0, "match_budget": 0, "keywords": "tfidf"}
    assert locomo.check_method("bookmark_recall:random") == "bookmark_recall:random"
    with pytest.raises(SystemExit, match="unknown method"):
        locomo.check_method("bookmark_recall:nonsense")


def test_log_resumes_and_refuses_other_settings(tmp_path):
    path = tmp_path / "run" / "locomo.jsonl"
    log = locomo.Log(path, settings())
    log.add({"type": "answer", "method": "bm25", "id": "conv-a:0"})
    with pytest.raises(SystemExit, match="another run is writing"):
        locomo.Log(path, settings())  # while the first run goes on
    log.close()
    again = locomo.Log(path, settings())
    assert again.run == log.run and again.done("answer") == {("bm25", "conv-a:0")}
    again.close()
    with pytest.raises(SystemExit, match="other settings"):
        locomo.Log(path, settings(context_tokens=300))


def test_a_run_written_before_a_setting_existed_resumes_with_the_value_it_had(tmp_path):
    import json
    from dataclasses import asdict

    path = tmp_path / "locomo.jsonl"
    then = settings(prefetch_turns=0, rank_by="question")  # whole pages, the bare question ranked: before either setting
    old = {k: v for k, v in asdict(then).items() if k not in ("prefetch_turns", "rank_by")}
    path.write_text(json.dumps({"type": "settings", "settings": old, "run": "r1"}) + "\n")
    locomo.Log(path, then).close()
    for now in (settings(prefetch_turns=5, rank_by="question"), settings(prefetch_turns=0)):
        with pytest.raises(SystemExit, match="other settings"):
            locomo.Log(path, now)


def test_retrievers_rank_by_the_question_message_every_method_sends(conversations, monkeypatch):
    asked = []
    rank = locomo.rank_pages
    monkeypatch.setattr(locomo, "rank_pages", lambda pages, query, how: asked.append(query) or rank(pages, query, how))
    shown = locomo.Context(conversations[0], settings()).baseline("bm25", "Where was the marathon?")
    assert asked == [shown.messages[-1]["content"]] == ["Question: Where was the marathon?\nShort answer:"]
    locomo.Context(conversations[0], settings(rank_by="question")).baseline("word_overlap", "Where was the marathon?")
    assert asked[-1] == "Where was the marathon?"  # how runs before the setting ranked


def test_summary_by_category_with_counts(conversations):
    questions = locomo.questions_of(conversations, [1, 4])[:3]  # conv-a: 4, 1, 4
    base = {"type": "answer", "method": "bm25", "prompt_tokens": 100, "evidence_any": True, "evidence_all": False, "seconds": 1.0, "error": None}
    records = [
        {**base, "id": q.id, "category": q.category, "f1": f1, "calls": calls, "fetched_evidence": hit, "evidence_all": shown}
        for q, f1, calls, hit, shown in zip(questions, [1.0, 0.5, 0.0], [0, 1, 1], [None, True, False], [False, True, True])
    ] + [{"type": "judge", "method": "bm25", "id": questions[0].id, "verdict": 1}]
    summary = locomo.summarize(records, questions, ["bm25", "controller"])
    assert list(summary) == ["bm25"]
    s = summary["bm25"]
    assert s["n"] == 3 and s["f1"] == 0.5 and s["f1_by_category"] == {"1": 0.5, "4": 0.5}
    assert s["count_by_category"] == {"1": 1, "4": 2} and s["judge"] == 1.0 and s["judged"] == 1
    assert s["calls_per_question"] == pytest.approx(2 / 3) and s["recall_precision"] == 0.5
    assert s["evidence_all"] == pytest.approx(2 / 3) and s["f1_evidence_shown"] == 0.25 and s["evidence_shown"] == 2  # reading apart from finding
    text = locomo.report(summary, settings(), questions, 1)
    assert "F1 cat 1 (n=1)" in text and "F1 cat 4 (n=2)" in text and "0.250 (2)" in text


def test_readme_block_is_replaced(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- locomo-results:start -->\nold\n<!-- locomo-results:end -->\nrest\n")
    locomo.update_readme(readme, "| new |")
    assert readme.read_text() == "intro\n<!-- locomo-results:start -->\n| new |\n<!-- locomo-results:end -->\nrest\n"
    with pytest.raises(SystemExit):
        locomo.update_readme(tmp_path / "locomo.json" if (tmp_path / "locomo.json").write_text("{}") else readme, "x")


class Unsure:
    """An endpoint that answers every question 'I do not know'."""

    model = "m"

    def chat(self, messages, max_tokens, session=None, paging=None):
        from paged_context.bench.endpoints import Answer

        return Answer("I do not know", 10, None, None, 0.0)


def test_a_conversations_questions_go_through_every_method_before_the_next_conversation(conversations, tmp_path):
    """A machine whose load changes during a long run then slows the methods alike."""
    questions = locomo.questions_of(conversations, [1, 2, 3, 4])
    endpoint = Unsure()
    log = locomo.Log(tmp_path / "run.jsonl", settings())
    locomo.run(endpoint, conversations, questions, ["truncation", "bm25"], settings(), log, concurrency=1)
    order = [(r["conversation"], r["method"]) for r in log.records]
    assert [c for c, _ in order] == sorted(c for c, _ in order)  # conversation by conversation
    assert {m for c, m in order if c == "conv-a"} == {"truncation", "bm25"}
    assert len(order) == 2 * len(questions)
