"""A real server (transformers engine, tiny random model) whose page store cannot write:
a full disk (a small tmpfs filled up) and read-only media (a read-only bind mount). Chat
requests, streamed or not, get HTTP 503 with Retry-After and an OpenAI-shaped message,
never a 500 or a hang; the server keeps answering /health; it writes again once the disk
has room or the media is writable, and every turn acknowledged before is in the store.
Mounting needs root: elsewhere the test is skipped (test_store_faults.py covers the same
errors without a server)."""

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import urllib.error
import urllib.request

import pytest

pytest.importorskip("torch")

from serving import Server  # noqa: E402


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@pytest.fixture
def disk(tmp_path):
    """A 8 MiB tmpfs."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def chat(server, session: str, text: str, stream: bool = False):
    """(status, headers, body: the JSON answer, or the event stream's text)."""
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": text}], "max_tokens": 4, "stream": stream}).encode()
    request = urllib.request.Request(server.url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json", "X-Session-Id": session})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read().decode()
            return response.status, response.headers, raw if stream else json.loads(raw)
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


def answered(server, session: str, text: str, stream: bool = False) -> str:
    status, _, body = chat(server, session, text, stream)
    assert status == 200, body
    if stream:
        assert '"finish_reason": "stop"' in body or '"finish_reason": "length"' in body, body
        return "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or "" for line in body.splitlines() if line.startswith("data: {") and '"choices": [{' in line)
    return body["choices"][0]["message"]["content"]


def refused(server, session: str, text: str, stream: bool, says: str) -> None:
    status, headers, body = chat(server, session, text, stream)
    assert status == 503 and int(headers["Retry-After"]) >= 1, body
    error = body["error"]
    assert error["type"] == "ServiceUnavailableError" and error["code"] == 503
    assert error["message"].startswith("the page store cannot write: ") and says in error["message"], error


def stored(db) -> dict[str, list[tuple[str, str]]]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as raw:
        rows = raw.execute("SELECT session_id, role, text FROM turns ORDER BY session_id, idx").fetchall()
    sessions: dict[str, list] = {}
    for session, role, text in rows:
        sessions.setdefault(session, []).append((role, text.strip()))
    return sessions


def healthy(server) -> bool:
    with urllib.request.urlopen(server.url + "/health", timeout=10) as response:
        return response.status == 200


def test_a_full_disk_and_read_only_media_get_503_and_the_store_writes_again_after(tiny, disk, tmp_path):
    db, acknowledged = disk / "pages.db", {}

    def turn(session: str, text: str, stream: bool = False) -> None:
        acknowledged.setdefault(session, []).extend([("user", text), ("assistant", answered(server, session, text, stream).strip())])

    with Server(tiny, db, engine="hf", logs=tmp_path) as server:
        for i in range(3):
            turn("plain", f"plain question {i}")
            turn("streamed", f"streamed question {i}", stream=True)
        # the disk fills up
        ballast = os.open(disk / "ballast", os.O_WRONLY | os.O_CREAT)
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(ballast, b"\0" * size):
                    pass
        os.close(ballast)
        for stream in (False, True):
            for session in ("plain", "new-session"):
                refused(server, session, "while the disk is full", stream, "database or disk is full")
        assert healthy(server) and server.get("/paging/sessions")["data"] == ["plain", "streamed"]  # reads go on
        assert stored(db) == acknowledged
        # room again: the same server writes again, and the sessions continue
        os.remove(disk / "ballast")
        turn("plain", "after the disk had room again")
        turn("streamed", "streamed after the disk had room again", stream=True)
        assert stored(db) == acknowledged
    # the store's media turns read-only (a read-only mount of the same files)
    media = tmp_path / "media"
    media.mkdir()
    mount("--bind", str(disk), str(media))
    try:
        mount("-o", "remount,bind,ro", str(media))
        with Server(tiny, media / "pages.db", engine="hf", logs=tmp_path) as server:  # starts anyway
            assert healthy(server)
            for stream in (False, True):
                for session in ("plain", "new-session"):
                    refused(server, session, "after the media turned read-only", stream, "Read-only file system")
            assert healthy(server)
            mount("-o", "remount,bind,rw", str(media))  # writable again: no restart needed
            turn("plain", "after the media was writable again")
            turn("fresh", "a new session on the writable media", stream=True)
            assert server.get("/paging/sessions/plain")["turns"] == len(acknowledged["plain"])
            server.stop(signal.SIGTERM)
        assert stored(media / "pages.db") == acknowledged
    finally:
        subprocess.run(["umount", "-l", str(media)], capture_output=True)
