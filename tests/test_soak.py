"""A soak through a real server (transformers engine, tiny random model, SQLite file):
32 clients talk at once with the real `openai` client, streaming or not, stateless (the
whole history every turn) or incremental (new turns only, named by X-Session-Id). The
server is killed with SIGKILL mid-soak: every turn a client was acknowledged (its question
and the complete answer) is in the store, in order, once. A server restarted on the same
file then takes the clients to the end: a stateless client resends its history, an
incremental one resends it once after a request that got no answer, and a question whose
answer was stored before the kill is answered with that answer. 0 acknowledged turns lost,
none stored twice. Two streaming clients also hang up after the first chunk of one
answer (the server finishes and stores it) and ask again: they get the stored answer."""

import contextlib
import signal
import sqlite3
import threading
import time

import pytest

pytest.importorskip("torch")

from paged_context.bench.load import kind_of, user_message  # noqa: E402
from serving import Server  # noqa: E402

CLIENTS, TURNS, KILL_AT = 32, 6, 80  # kill once this many turns are acknowledged
HANG_UP = {0: 1, 2: 1}  # client -> the turn whose first answer it does not wait for (stateless and incremental, both streaming)


class HungUp(Exception):
    pass


class Client:
    """One conversation, and what it was acknowledged."""

    def __init__(self, i: int):
        self.i, self.kind = i, kind_of(i)
        self.session = None if self.kind["stateless"] else f"soak-{i}"  # a stateless client's: the server's name for it
        self.acknowledged: list[tuple[str, str]] = []  # (question, answer)
        self.unanswered = False  # the last request got no complete answer
        self.stored_answers = 0  # answers the server had stored before the client heard them

    def messages(self, question: str) -> list[dict]:
        whole = self.kind["stateless"] or self.unanswered  # an incremental client resyncs after a lost answer
        history = [m for q, a in self.acknowledged for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})] if whole else []
        return history + [{"role": "user", "content": question}]

    def ask(self, url: str, question: str, hang_up: bool = False) -> None:
        """One request; raises when no complete answer came back (HungUp: `hang_up`, after the first chunk)."""
        import openai

        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
        headers = {"X-Session-Id": self.session} if not self.kind["stateless"] else {}
        sent = dict(model="tiny", messages=self.messages(question), max_tokens=4, temperature=0, extra_headers=headers)
        if self.kind["stream"]:
            text, finish, block = "", None, {}
            stream = client.chat.completions.create(stream=True, **sent)
            if hang_up:
                next(iter(stream))
                stream.close()
                self.unanswered = True
                raise HungUp
            for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    finish = chunk.choices[0].finish_reason or finish
                block = (chunk.model_extra or {}).get("paged_context") or block
        else:
            reply = client.chat.completions.create(**sent)
            text, finish, block = reply.choices[0].message.content or "", reply.choices[0].finish_reason, reply.model_extra["paged_context"]
        if finish not in ("stop", "length"):
            raise RuntimeError(f"client {self.i}: no complete answer (finish_reason {finish!r})")
        self.session = block["session"]
        self.stored_answers += bool(block.get("stored_answer"))
        self.acknowledged.append((question, text))
        self.unanswered = False


def stored(db, session: str) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(db)) as raw:
        return [(role, text.strip()) for role, text in raw.execute("SELECT role, text FROM turns WHERE session_id = ? ORDER BY idx", (session,))]


def said(client: Client) -> list[tuple[str, str]]:
    return [turn for q, a in client.acknowledged for turn in (("user", q.strip()), ("assistant", a.strip()))]


def test_a_server_killed_mid_soak_loses_no_acknowledged_turn_and_the_clients_finish(tiny, tmp_path):
    db = tmp_path / "pages.db"
    clients = [Client(i) for i in range(CLIENTS)]
    lock, url = threading.Condition(), {}
    waiting, errors = set(), []

    def converse(client: Client) -> None:
        for turn in range(TURNS):
            question = user_message(client.i, turn, "soak")
            hang_up = HANG_UP.get(client.i) == turn
            while True:
                with lock:
                    served_by = url["now"]
                try:
                    client.ask(served_by, question, hang_up)
                    break
                except HungUp:
                    hang_up = False  # and ask again at once
                except Exception as e:  # the server died under it: wait for the next one, then ask again
                    client.unanswered = True
                    with lock:
                        if url["now"] == served_by:
                            errors.append(f"{type(e).__name__}: {e}"[:200])
                            waiting.add(client.i)
                            lock.notify_all()
                            lock.wait_for(lambda: url["now"] != served_by, timeout=600)
                        waiting.discard(client.i)
            with lock:
                lock.notify_all()

    with Server(tiny, db, engine="hf") as first:
        url["now"] = first.url
        threads = [threading.Thread(target=converse, args=(c,), daemon=True) for c in clients]
        for thread in threads:
            thread.start()
        with lock:
            assert lock.wait_for(lambda: sum(len(c.acknowledged) for c in clients) >= KILL_AT, timeout=600)
        first.stop(signal.SIGKILL)
        # every client still talking finds the server gone
        with lock:
            assert lock.wait_for(lambda: waiting == {c.i for c in clients if len(c.acknowledged) < TURNS}, timeout=300), (waiting, errors)
            acknowledged = sum(len(c.acknowledged) for c in clients)
    assert KILL_AT <= acknowledged < CLIENTS * TURNS and not [e for e in errors if "Error code" in e], errors  # cut, never an HTTP error
    for client in clients:
        if client.acknowledged:
            kept = stored(db, client.session)
            assert kept[: len(said(client))] == said(client), client.i  # in order, once
            assert len(kept) - len(said(client)) <= 2 and all(role == "user" for role, _ in kept[len(said(client)) :: 2])
    with Server(tiny, db, engine="hf") as second:
        started = time.perf_counter()
        with lock:
            url["now"] = second.url
            lock.notify_all()
        for thread in threads:
            thread.join(600)
        assert not any(thread.is_alive() for thread in threads)
        finished = time.perf_counter() - started
    assert all(len(c.acknowledged) == TURNS for c in clients)
    assert all(clients[i].stored_answers >= 1 for i in HANG_UP)
    for client in clients:
        assert stored(db, client.session) == said(client), client.i  # everything, once, in order
    print(f"\nkilled after {acknowledged} of {CLIENTS * TURNS} turns; {len(errors)} requests cut; "
          f"{sum(c.stored_answers for c in clients)} answered from the store (resent questions); after the restart the rest took {finished:.0f} s")
