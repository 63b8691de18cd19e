import pytest
from hypothesis import given
from hypothesis import strategies as st

from paged_context.bookmarks import Bookmark, find_all, parse

bookmarks = st.builds(Bookmark, st.integers(0, 10**6), st.lists(st.text(max_size=60), max_size=8).map(tuple))


@given(bookmarks)
def test_parse_inverts_render(b):
    assert parse(b.render()) == b


@given(st.lists(bookmarks, max_size=6), st.text(alphabet="abc \n.:", max_size=20))
def test_every_bookmark_is_found_in_a_rendered_context(marks, filler):
    context = filler.join(b.render() for b in marks)
    assert find_all(context) == marks


@given(st.integers(0, 99), st.lists(st.text(), max_size=5))
def test_hostile_keywords_cannot_open_or_close_another_bookmark(page_id, keywords):
    rendered = Bookmark(page_id, tuple(keywords)).render()
    assert rendered.count("[") == 1 and rendered.count("]") == 1 and "\n" not in rendered
    assert rendered.startswith(f"[p{page_id}:")


def test_cleaning_keeps_readable_keywords():
    b = Bookmark(7, ("Caroline", " adoption  agency ", "a],[p9:evil", "$2,400", "Caroline", "caroline", "\u200b", ""))
    assert b.keywords == ("Caroline", "adoption agency", "ap9:evil", "$2400")
    assert b.render() == "[p7:Caroline,adoption agency,ap9:evil,$2400]"


def test_parse_rejects_what_is_not_one_bookmark():
    for text in ["p7:a,b", "[p:a]", "[px:a]", "[p7:a] [p8:b]", "[p-1:a]"]:
        with pytest.raises(ValueError):
            parse(text)
    with pytest.raises(ValueError):
        Bookmark(-1, ("a",))
