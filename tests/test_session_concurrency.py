"""Concurrency inside one session, over real HTTP (`--engine hf`, the tiny random model):
requests to one session at once are answered one after the other, in the order they
came, and their turns are stored in that order; a client that goes away mid-stream
leaves its answer stored whole, and gets it back when it asks again; the session API
reads a session without waiting for its answer."""

import http.client
import json
import sqlite3
import threading
import time

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

from serving import Server  # noqa: E402

FLAGS = ["--served-model-name", "tiny", "--page-tokens", "64", "--resident", "1", "2", "--default-max-tokens", "8"]


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    db = tmp_path_factory.mktemp("concurrency") / "pages.db"
    with Server(tiny, db, engine="hf", options=FLAGS) as server:
        server.db = db
        yield server


def stored(server, session: str) -> list[tuple[str, str]]:
    """The session's turns as the store holds them (SQLite's WAL lets us read beside the server)."""
    with sqlite3.connect(server.db) as connection:
        return connection.execute("SELECT role, text FROM turns WHERE session_id = ? ORDER BY idx", (session,)).fetchall()


@pytest.fixture(scope="module")
def words(tiny):
    """Token ids of whole words, and a bias that makes the model say one of them over and
    over without stopping: answers that tell who got which."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    chosen = []
    for i in range(len(tokenizer)):
        word = tokenizer.decode([i])
        if word.startswith(" ") and word.strip().isalpha() and len(word) >= 5 and not any(word in w or w in word for w, _ in chosen):
            chosen.append((word, {str(i): 100, str(tokenizer.eos_token_id): -100}))
    return chosen


def chat(server, session: str | None, messages: list, stream: bool = False, **options) -> tuple[str, dict]:
    """The answer's text and its paged_context block (a stream read to its end); without
    a session id the server names the session."""
    body = json.dumps({"messages": messages, "stream": stream, **options}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", server.launched.port, timeout=300)
    try:
        connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json", **({"X-Session-Id": session} if session else {})})
        response = connection.getresponse()
        payload = response.read().decode()
    finally:
        connection.close()
    assert response.status == 200, payload
    if not stream:
        reply = json.loads(payload)
        return reply["choices"][0]["message"]["content"], reply["paged_context"]
    chunks = [json.loads(event[6:]) for event in payload.split("\n\n") if event.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return text, next(c["paged_context"] for c in chunks if "paged_context" in c)


def turns(server, session: str) -> int:
    return server.get(f"/paging/sessions/{session}")["turns"]


def test_requests_to_one_session_at_once_are_answered_in_the_order_they_came(server, words):
    """Five requests, a fifth of a second apart, while the first is still being answered
    (it writes 1,000 tokens: seconds even on a fast machine, where 64 took a fifth of one):
    each waits for the one before, the turns are stored question, answer, question,
    answer in that order, and each answer is its own."""
    count, first, replies, started, done = 5, 1000, {}, {}, {}

    def ask(i: int) -> None:
        word, bias = words[i]
        started[i] = time.monotonic()
        replies[i] = chat(server, "together", [{"role": "user", "content": f"Question {i}"}], stream=i % 2 == 1, max_tokens=first if i == 0 else 6, logit_bias=bias)
        done[i] = time.monotonic()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
        time.sleep(0.2)
    for thread in threads:
        thread.join(300)
    assert len(replies) == count
    assert done[0] > started[count - 1]  # all of them came while the first was being answered
    assert [i for i in sorted(done, key=done.get)] == list(range(count))  # answered in the order they came
    for i in range(count):
        word = words[i][0]
        text, paging = replies[i]
        assert text.count(word) >= (first - 5 if i == 0 else 5), (i, text)  # its own answer, whole
        assert not any(words[j][0] in text for j in range(count) if j != i)
        assert paging["session"] == "together" and "stored_answer" not in paging
    # stored: question i, then the answer request i was given (edge whitespace aside: a
    # stream sends what the model wrote), in the order they came
    assert stored(server, "together") == [turn for i in range(count) for turn in (("user", f"Question {i}"), ("assistant", replies[i][0].strip()))]
    assert turns(server, "together") == 2 * count


def test_a_client_gone_mid_stream_leaves_its_answer_stored_whole_and_gets_it_again(server, words):
    word, bias = words[0]
    question = [{"role": "user", "content": "Tell me a long story about the river."}]
    body = json.dumps({"messages": question, "stream": True, "max_tokens": 160, "logit_bias": bias}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", server.launched.port, timeout=300)
    connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json", "X-Session-Id": "gone"})
    response = connection.getresponse()
    assert response.status == 200
    heard = ""
    while word not in heard:  # the answer has begun
        heard += response.fp.readline().decode()
    connection.sock.close()  # the client goes away
    connection.close()
    # the answer goes on without the client; meanwhile the store holds the question alone,
    # then the question and the whole answer
    deadline = time.monotonic() + 300
    while len(held := stored(server, "gone")) != 2:
        assert held == [("user", question[0]["content"])] and time.monotonic() < deadline
        time.sleep(0.1)
    assert held[1][0] == "assistant" and held[1][1].count(word) >= 150
    # the client asks again, as it was: the stored answer comes back, whole, and is not stored twice
    text, paging = chat(server, "gone", question)
    assert paging["stored_answer"] is True and text.count(word) >= 150
    streamed, paging = chat(server, "gone", question, stream=True)
    assert paging["stored_answer"] is True and streamed.strip() == text.strip()
    assert turns(server, "gone") == 2
    # and the conversation goes on from it
    chat(server, "gone", [*question, {"role": "assistant", "content": text}, {"role": "user", "content": "And then?"}])
    assert turns(server, "gone") == 4


def test_the_session_api_reads_a_session_without_waiting_for_its_answer(server, words):
    """GET /paging/sessions/{id} while the session is answering a 1,000-token request: it
    shows the question stored and no answer yet, before the answer is done."""
    word, bias = words[3]
    done = threading.Event()

    def ask() -> None:
        chat(server, "watched", [{"role": "user", "content": "A long answer, please."}], max_tokens=1000, logit_bias=bias)
        done.set()

    thread = threading.Thread(target=ask)
    thread.start()
    deadline = time.monotonic() + 300
    while not stored(server, "watched"):  # the question is stored: the answer is being given
        assert time.monotonic() < deadline
        time.sleep(0.05)
    view = server.get("/paging/sessions/watched")
    assert not done.is_set() and view["id"] == "watched" and view["turns"] == 1
    thread.join(300)
    assert done.is_set() and turns(server, "watched") == 2


def test_a_retry_while_the_first_try_is_answered_gets_the_same_answer(server, words):
    """A stateless client (no session id: its opening names the session) gives up waiting
    and sends the same request again while the first is still being answered: the retry
    waits its turn and is given the stored answer; nothing is stored twice."""
    word, bias = words[2]
    history = [{"role": "user", "content": "A retried opening."}]
    replies = {}

    def ask(i: int) -> None:
        replies[i] = chat(server, None, history, max_tokens=48, logit_bias=bias)

    first = threading.Thread(target=ask, args=(0,))
    first.start()
    time.sleep(0.3)
    ask(1)
    first.join(300)
    (text, paging), (again, retried) = replies[0], replies[1]
    assert text.count(word) >= 40 and again == text
    assert "stored_answer" not in paging and retried["stored_answer"] is True and retried["session"] == paging["session"]
    assert stored(server, paging["session"]) == [("user", "A retried opening."), ("assistant", text.strip())]
