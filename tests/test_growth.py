"""bench growth, small: the JSON it writes, and the state of the session it drove."""

import json

from paged_context.bench import growth
from paged_context.bench.report import publish
from paged_context.pages import segment


def test_bench_growth_writes_its_checkpoints_and_leaves_a_consistent_session(tmp_path):
    result, session = growth.run([100, 300], window=50)
    publish(result, growth.report(result), tmp_path, "growth", growth.plot)
    written = json.loads((tmp_path / "growth.json").read_text())
    assert (tmp_path / "growth.png").stat().st_size > 0
    assert [r["turns"] for r in written["checkpoints"]] == [100, 300] and [s["turn"] for s in written["series"]] == [50, 100, 150, 200, 250, 300]
    for row in written["checkpoints"]:
        assert 0 < row["wall_ms_p50"] <= row["wall_ms_p95"] and 0 < row["cpu_ms_p50"] <= row["cpu_ms_p95"]
        assert row["rss_mib"] > 0 and row["prompt_tokens"] > 0 and row["traced_mib"] is None
    assert set(written["acceptance"]) == {"wall", "cpu"} and written["config"]["policy"] == "learned"

    # the pages cover the conversation from its start, exactly as segmenting it whole would cut it
    assert len(session.turns) == 600 and 0 < session.paged_until < len(session.units)
    pages = [session.pages[i] for i in range(1, len(session.pages) + 1)]
    assert [t for p in pages for t in p.turns] == session.units[: session.paged_until]
    assert pages == segment(session.units, session.config.boundary)[: len(pages)]
    # every page has its bookmark; every page is resident, pinned or evicted
    evicted = session.evicted()
    assert set(session.bookmarks) == set(session.pages) and len(evicted) == written["checkpoints"][-1]["evicted"]
    assert set(evicted) | session.resident.keys | session.pinned == set(session.pages)
    request = session.ask("Which page held the number 4417?")
    note = next(m.content for m in session.render(request) if m.segment == "bookmarks")
    evicted = session.evicted()
    listed = evicted.newest(session.config.max_bookmarks)  # a page brought back keeps its bookmark
    assert all(session.bookmarks[p].render() in note for p in listed)
    assert f"Older pages {evicted.before(listed[0]).ranges()} (recall them by number)." in note
