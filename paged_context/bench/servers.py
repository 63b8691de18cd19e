"""The two servers the serving benchmarks compare: `paged-context serve` and stock vLLM's
OpenAI server, started as subprocesses on the same model and engine flags, each up once
its /health answers and stopped (with its engine's workers) when the benchmark is done."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Sequence

# what both servers get before the benchmark's own engine flags (which may override them):
# the paging server's small-machine defaults, spelled out so stock vLLM runs the same
# engine, and cached-token reporting, which stock vLLM gives only when asked
SHARED_FLAGS = (
    "--enforce-eager", "--block-size", "32", "--kv-cache-memory-bytes", str(1 << 30), "--gpu-memory-utilization", "0.3",
    "--enable-prompt-tokens-details",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Launched:
    """A server process (and its engine's workers, one process group), up once its
    /health answers; stopped with `stop`. `wait=False` returns at once: several servers
    then start together, and `up()` waits for each."""

    def __init__(self, command: list[str], port: int, log: Path, timeout: float = 600, wait: bool = True):
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.log_path = log
        self.log = open(log, "w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.deadline = time.monotonic() + timeout
        if wait:
            self.up()

    def up(self) -> None:
        """Wait until /health answers (RuntimeError, with the log's end, if it never does)."""
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=5)
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > self.deadline:
                    self.stop(signal.SIGKILL)
                    raise RuntimeError(f"the server did not come up:\n{self.log_path.read_text()[-4000:]}") from None
                time.sleep(1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        """Signal the process group and wait for the server; SIGKILL after `timeout` s."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


@contextlib.contextmanager
def served(model: Path, engine_flags: Sequence[str], work: Path, paged: bool, own_flags: Sequence[str] = ()) -> Iterator[str]:
    """The paging server (`paged`) or stock vLLM's, serving `model` under its directory's
    name with `engine_flags`, and `own_flags`, which only this one takes; yields its base
    URL. Its log (and the paging server's page store) is in `work`."""
    port = free_port()
    entry = ["paged_context", "serve", "--db", str(work / "pages.db")] if paged else ["vllm.entrypoints.launchers.api_server.entry"]
    flags = ["--port", str(port), *own_flags, "--model", str(model), "--served-model-name", model.name, *SHARED_FLAGS, *engine_flags]
    server = Launched([sys.executable, "-m", *entry, *flags], port, work / ("paged.log" if paged else "unpaged.log"))
    try:
        yield server.url
    finally:
        server.stop()
