"""Replicas sharing one PostgreSQL page store behind nginx (`paged-context cluster`),
with real processes, the real openai client and the tiny random model on the
transformers engine: one writer per session across replicas, a session re-read after
another replica wrote it, a stored answer given again to a client that resends its
question, and a replica killed while eight clients talk through nginx."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("psycopg")

from paged_context.bench.servers import free_port  # noqa: E402
from paged_context.pages import Turn  # noqa: E402
from paged_context.serve.cluster import find_nginx, local_postgres, nginx_config  # noqa: E402
from paged_context.store import open_store  # noqa: E402

pytestmark = pytest.mark.slow
REPLICA_FLAGS = ["--engine", "hf", "--served-model-name", "tiny", "--default-max-tokens", "12", "--session-wait", "2", "--db-pool-size", "8"]


def nginx_or_skip() -> str:
    try:
        return find_nginx()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def test_the_nginx_config_routes_by_session_and_keeps_its_files_in_the_run_dir(tmp_path):
    config = nginx_config([9001, 9002], "127.0.0.1:9000", tmp_path, fail_timeout=7)
    assert "hash $http_x_session_id consistent;" in config
    assert "server 127.0.0.1:9001 max_fails=1 fail_timeout=7s;" in config and "server 127.0.0.1:9002 " in config
    assert "proxy_next_upstream error timeout http_502;" in config and "proxy_buffering off;" in config
    paths = [line.split()[1].rstrip(";") for line in config.splitlines() if line.strip().startswith(("pid ", "error_log ", "access_log ")) or "_temp_path " in line]
    assert len(paths) == 8 and all(p.startswith(str(tmp_path)) for p in paths)
    (tmp_path / "nginx-tmp").mkdir()
    (tmp_path / "nginx.conf").write_text(config)
    checked = subprocess.run([nginx_or_skip(), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "e.log")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_a_kept_postgres_folder_starts_again_with_its_data():
    """`cluster --postgres DIR`: the server's data stays in DIR from one run to the next."""
    from paged_context.postgres_server import find_bindir

    if find_bindir() is None:
        pytest.skip("no PostgreSQL binaries")
    folder = Path(tempfile.mkdtemp(prefix="pgk-"))  # run as root, the server's user must enter it: not under pytest's 0700 folders
    try:
        for run in range(2):
            server, url = local_postgres(folder)
            try:
                with open_store(url) as store:
                    if run == 0:
                        store.create_session("kept", config='{"policy": "lru"}')
                    else:
                        assert store.session("kept").config == '{"policy": "lru"}'
            finally:
                server.stop()
        assert (folder / "data" / "PG_VERSION").exists()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tiny, postgres_server, tmp_path_factory):
    """`paged-context cluster`: two replicas and nginx on one PostgreSQL database."""
    nginx_or_skip()
    url = postgres_server.create_database("cluster")
    run = tmp_path_factory.mktemp("cluster")
    port = free_port()
    command = [sys.executable, "-m", "paged_context", "cluster", "--replicas", "2", "--port", str(port), "--db", url, "--run-dir", str(run), "--model", str(tiny), *REPLICA_FLAGS]
    info = {}
    with open(run / "cluster.out", "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (run / "cluster.json").exists():
            assert process.poll() is None and time.monotonic() < deadline, (run / "cluster.out").read_text()[-4000:]
            time.sleep(0.5)
        info.update(json.loads((run / "cluster.json").read_text()), db=url, store=open_store(url), process=process)
        yield info
    finally:
        if "store" in info:
            info["store"].close()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # as Ctrl-C: the cluster stops nginx and the replicas
        assert process.wait(90) == 0, (run / "cluster.out").read_text()[-4000:]
        for pid in [info["nginx"]["pid"]] + [r["pid"] for r in info["replicas"]] if info else []:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


def client(base: str, session: str):
    from openai import OpenAI

    return OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=120, default_headers={"X-Session-Id": session})


def post(base: str, session: str, messages: list[dict], stream: bool = False, max_tokens: int = 12):
    """The raw HTTP answer: (status, headers, body)."""
    body = json.dumps({"model": "tiny", "messages": messages, "stream": stream, "max_tokens": max_tokens}).encode()
    request = urllib.request.Request(base + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json", "X-Session-Id": session})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def stored(cluster, session: str) -> list[tuple[str, str]]:
    return [(t.role, t.text.strip()) for t in cluster["store"].turns(session)]


def said(messages: list[dict]) -> list[tuple[str, str]]:
    return [(m["role"], (m["content"] or "").strip()) for m in messages]


def test_a_session_held_elsewhere_gets_503_with_retry_after(cluster):
    replica = cluster["replicas"][0]["url"]
    question = [{"role": "user", "content": "is anyone there?"}]
    with cluster["store"].hold("held-elsewhere", 0):
        started = time.monotonic()
        for stream in (False, True):
            status, headers, body = post(replica, "held-elsewhere", question, stream)
            error = json.loads(body)["error"]
            assert status == 503 and int(headers["Retry-After"]) >= 1, body
            assert error["code"] == 503 and "another replica" in error["message"] and error["type"] == "ServiceUnavailableError"
        assert time.monotonic() - started >= 2 * 2  # each waited --session-wait first
    status, _, body = post(replica, "held-elsewhere", question)
    assert status == 200 and stored(cluster, "held-elsewhere")[0] == ("user", "is anyone there?")


def test_a_resent_question_gets_its_stored_answer_and_a_session_written_elsewhere_is_read_again(cluster):
    first, second = (r["url"] for r in cluster["replicas"])
    history = [{"role": "user", "content": "What did I plant in May?"}]
    answer = client(first, "resent").chat.completions.create(model="tiny", messages=history).choices[0].message.content
    # the client never heard it (its replica died, say): it resends, to either replica
    for base in (first, second):
        again = client(base, "resent").chat.completions.create(model="tiny", messages=history)
        assert again.choices[0].message.content == answer and again.model_extra["paged_context"]["stored_answer"]
    chunks = client(second, "resent").chat.completions.create(model="tiny", messages=history, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert stored(cluster, "resent") == said(history + [{"role": "assistant", "content": answer}])
    # a replica stored the next question and died before answering: another one wrote the
    # session since the first replica's last write, so the first reads it again
    history += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And in June?"}]
    with cluster["store"].hold("resent", 5):
        cluster["store"].append_turns("resent", [Turn(2, "user", "And in June?")])
    reply = client(first, "resent").chat.completions.create(model="tiny", messages=history)
    assert not reply.model_extra["paged_context"].get("stored_answer")
    assert stored(cluster, "resent") == said(history + [{"role": "assistant", "content": reply.choices[0].message.content}])


def test_two_replicas_writing_one_session_take_turns(cluster):
    """Two clients send new turns to one session at once, each through its own replica:
    every question is stored once, followed by the answer its client got."""
    retried, answers, errors = [], {}, []

    def talk(name: str, base: str):
        try:
            for k in range(4):
                question = f"client {name} question {k}"
                while True:
                    status, headers, body = post(base, "contended", [{"role": "user", "content": question}], max_tokens=32)
                    if status != 503:
                        break
                    retried.append(name)
                    time.sleep(float(headers["Retry-After"]))
                assert status == 200, body
                answers[question] = json.loads(body)["choices"][0]["message"]["content"].strip()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=talk, args=(name, r["url"])) for name, r in zip("AB", cluster["replicas"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    turns = stored(cluster, "contended")
    assert len(turns) == 16 and [role for role, _ in turns] == ["user", "assistant"] * 8
    assert {text for role, text in turns if role == "user"} == set(answers)
    assert all(turns[i + 1][1] == answers[turns[i][1]] for i in range(0, 16, 2))
    print(f"contended session: {len(retried)} requests answered 503 and retried")


def converse(base: str, session: str, turns: int, stream: bool, progress: list, log: list) -> list[dict]:
    """A stateless client: resends its whole history each turn, and on a connection error
    or a 5xx sends it again until it gets a complete answer."""
    import httpx
    import openai

    talk, history = client(base, session), []
    for k in range(turns):
        history.append({"role": "user", "content": f"{session}, turn {k}: tell me about the Lisbon trams"})
        deadline = time.monotonic() + 180
        while True:
            try:
                if stream:
                    text, finished = "", False
                    for chunk in talk.chat.completions.create(model="tiny", messages=history, max_tokens=24, stream=True):
                        if chunk.choices:
                            text += chunk.choices[0].delta.content or ""
                            finished = finished or chunk.choices[0].finish_reason is not None
                    if not finished:
                        raise httpx.RemoteProtocolError("the stream ended before its answer did")
                else:
                    text = talk.chat.completions.create(model="tiny", messages=history, max_tokens=24).choices[0].message.content
                break
            except (openai.APIConnectionError, openai.APIStatusError, httpx.HTTPError) as e:
                if isinstance(e, openai.APIStatusError) and e.status_code < 500:
                    raise
                log.append((session, k, type(e).__name__))
                assert time.monotonic() < deadline, f"{session} turn {k} never answered: {log}"
                time.sleep(0.3)
        history.append({"role": "assistant", "content": text})
        progress.append(session)
    return history


def test_a_replica_killed_mid_conversation_loses_and_duplicates_nothing(cluster):
    """Eight stateless clients talk through nginx; one replica is SIGKILLed while they do.
    Every session finishes on the survivor, and the store holds exactly what each client
    sent and was answered."""
    base, sessions, turns = cluster["url"], [f"kill-{i}" for i in range(8)], 6
    progress, retries, histories, errors = [], [], {}, []

    def run(i: int, session: str):
        try:
            histories[session] = converse(base, session, turns, stream=i % 2 == 1, progress=progress, log=retries)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((session, e))

    threads = [threading.Thread(target=run, args=(i, s)) for i, s in enumerate(sessions)]
    for t in threads:
        t.start()
    while len(progress) < 2 * len(sessions) and any(t.is_alive() for t in threads):
        time.sleep(0.02)
    victim = cluster["replicas"][0]
    os.kill(victim["pid"], signal.SIGKILL)  # mid-conversation: every session has turns to go
    killed_at = len(progress)
    for t in threads:
        t.join(600)
    assert not errors, errors
    assert killed_at < len(sessions) * turns
    for session in sessions:
        assert stored(cluster, session) == said(histories[session]), session
    access = (cluster["run_dir"] + "/nginx-access.log")
    routed = [line for line in open(access) if "session=kill-" in line]
    victim_addr = f"127.0.0.1:{victim['port']}"
    assert any(line.split("replica=")[1].startswith(victim_addr) for line in routed)  # it had sessions before it died
    print(f"killed after {killed_at} of {len(sessions) * turns} turns; client retries: {len(retries)} {sorted(set(r[2] for r in retries))}")
