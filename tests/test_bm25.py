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
