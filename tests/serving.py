"""`paged-context serve` in a subprocess for the tests that talk to it over HTTP, and the
engine flags that make the tiny random model's window small."""

import json
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path

from paged_context.bench.servers import Launched, free_port

WINDOW = 1024
TINY = [
    "--served-model-name", "tiny", "--page-tokens", "192", "--resident", "1", "2", "--default-max-tokens", "32",
    "--max-model-len", str(WINDOW), "--dtype", "float32", "--kv-cache-memory-bytes", str(256 << 20), "--gpu-memory-utilization", "0.2",
]  # vLLM flags are parsed, and ignored, by --engine hf


class Server:
    """`paged-context serve` in a subprocess, with small HTTP helpers."""

    def __init__(self, model, db, engine="vllm", extra=(), options=TINY, logs=None):
        """`db`: a SQLite file (the log goes beside it) or a postgresql:// URL (give `logs`, a folder)."""
        self.port = free_port()
        self.log = Path(logs) / f"server.{self.port}.log" if logs else Path(db).with_suffix(f".{self.port}.log")
        self.command = [sys.executable, "-m", "paged_context", "serve", "--model", str(model), "--port", str(self.port), "--db", str(db), "--engine", engine, *options, *extra]

    def __enter__(self):
        self.launched = Launched(self.command, self.port, self.log, timeout=300)
        self.url = self.launched.url
        return self

    def stop(self, sig=signal.SIGTERM):
        self.launched.stop(sig)

    def __exit__(self, *exc):
        self.stop()

    def client(self, key="none"):
        from openai import OpenAI

        return OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120)

    def get(self, path, key=None):
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {key}"} if key else {})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path, body: bytes, headers=None):
        request = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
