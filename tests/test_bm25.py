import pytest

from paged_context.bm25 import BM25


def test_bm25_ranks_rare_matching_terms_first_and_grows_incrementally():
    index = BM25()
    index.add(1, "the cat sat on the mat".split())
    index.add(2, "dogs chase the cat".split())
    index.add(3, "lisbon conference in may".split())
    scores = index.scores(["lisbon", "cat"])
    assert scores[3] > scores[1] > 0 and scores[2] > 0
    assert index.top(["lisbon", "cat"], 2) == [3, 1] or index.top(["lisbon", "cat"], 2) == [3, 2]
    assert index.top(["lisbon"], 3) == [3]  # documents sharing no term are never returned
    assert index.top(["cat"], 5, among=[2, 3]) == [2]
    before = index.scores(["cat"])[1]
    index.add(4, "cat cat cat".split())  # the collection statistics move with each page
    assert index.scores(["cat"])[1] != before
    with pytest.raises(ValueError, match="already indexed"):
        index.add(4, ["x"])
    assert BM25().scores(["x"]) == {}


def test_a_shortlist_is_exact_for_a_small_collection_and_finds_rare_terms_in_a_large_one():
    small = BM25()
    for i, text in enumerate(["the cat sat", "dogs chase the cat", "lisbon in may"]):
        small.add(i, text.split())
    scores = small.scores(["cat"])
    assert small.shortlist(["cat"], 5) == sorted(scores.items(), key=lambda item: (-item[1], item[0]))  # zeros too
    assert [d for d, _ in small.shortlist(["cat"], 5, among={0, 2})] == [0, 2]

    index = BM25(champions=4)  # each term's list: the 4 documents where it weighs most
    for i in range(300):
        index.add(i, ["common"] * (1 + i % 3) + [f"rare{i % 75}", "filler"])
    query = ["rare7", "common"]
    full = index.scores(query)
    best = [(d, full[d]) for d in index.top(query, 4)]
    assert index.shortlist(query, 4) == best and {d for d, _ in best} == {7, 82, 157, 232}  # rare7's whole list
    # 5 shares only the common term, on whose list it is not: the cost of not reading everything
    assert [d for d, _ in index.shortlist(query, 4, among={82, 232, 5})] == [82, 232]
