from paged_context.matching import PageMatcher
from paged_context.pages import Turn


def test_an_excerpt_is_the_turns_around_the_one_the_question_names():
    matcher = PageMatcher()
    turns = [Turn(i, "user", f"small talk {i} about the weather") for i in range(10)]
    turns[7] = Turn(7, "user", "The locker code at the Porto gym is 4417.")
    matcher.add(1, "\n".join(t.text for t in turns))
    matcher.add(2, "the weather again, and lunch plans")
    assert [t.index for t in matcher.excerpt("What is the Porto locker code?", turns)] == [5, 6, 7, 8, 9]
    assert [t.index for t in matcher.excerpt("Which gym?", turns, width=3)] == [6, 7, 8]
    assert [t.index for t in matcher.excerpt("Anything on ferries?", turns)] == [0, 1, 2, 3, 4]  # nothing named: the opening
    assert [t.index for t in matcher.excerpt("Porto?", turns[:4])] == [0, 1, 2, 3]  # a short page is shown whole
