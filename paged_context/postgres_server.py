"""A throwaway PostgreSQL server: `initdb` into a fresh folder, `pg_ctl start` listening
on a Unix socket in that folder only (no TCP), fsync on, stopped and removed at the end.
The tests' fixture and `bench store` start theirs with this.

PostgreSQL refuses to run as root; run as root, the server runs as the user `nobody`
(the folder handed over to it), and the caller, root, still reaches its socket.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

BINARIES = ("initdb", "pg_ctl", "postgres")
FALLBACK_BINDIR = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "postgres"


def find_bindir() -> Path | None:
    """Where initdb, pg_ctl and postgres are: `pg_config --bindir`, else Debian's
    /usr/lib/postgresql/15/bin, else the folder of the `initdb` on PATH; None if nowhere."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        try:
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.TimeoutExpired):
            pass
    candidates.append(FALLBACK_BINDIR)
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).resolve().parent)
    for folder in candidates:
        if all((folder / name).is_file() and os.access(folder / name, os.X_OK) for name in BINARIES):
            return folder
    return None


class PostgresServer:
    """`with PostgresServer() as server:` a running server; `server.url()` its libpq URL,
    `server.create_database(name)` a fresh database's."""

    def __init__(self, parent: str | Path | None = None, bindir: Path | None = None, settings: dict[str, str] | None = None, folder: str | Path | None = None):
        """A server in a new folder in `parent` (default: the temporary folder), which the
        server's user (`nobody` when run as root) must be able to enter. `folder`: in that
        folder instead, kept with its data when the server stops, and started again from
        it next time (`paged-context cluster --postgres DIR`)."""
        found = bindir or find_bindir()
        if found is None:
            raise FileNotFoundError("no PostgreSQL binaries (initdb, pg_ctl, postgres): install PostgreSQL (Debian: apt-get install postgresql-15)")
        self.bindir = Path(found)
        self.keep = folder is not None
        if self.keep:
            self.folder = Path(folder).resolve()
            self.folder.mkdir(parents=True, exist_ok=True)
        else:
            self.folder = Path(tempfile.mkdtemp(prefix="pgc-", dir=parent))  # short: a socket's path has at most 107 bytes
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.settings = {"listen_addresses": "''", "unix_socket_directories": shlex.quote(str(self.folder)), "fsync": "on", **(settings or {})}
        self._user = None
        if os.geteuid() == 0:
            self._user = pwd.getpwnam("nobody")
        self.running = False

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        as_user = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []} if self._user else {}
        done = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]], cwd=self.folder, env=env, capture_output=True, text=True, timeout=timeout, **as_user
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stdout[-1000:]}{done.stderr[-2000:]}\n{log}")
        return done

    def start(self) -> "PostgresServer":
        if self._user:
            os.chown(self.folder, self._user.pw_uid, self._user.pw_gid)
        if not (self.data / "PG_VERSION").exists():  # a kept folder has its data already
            # --no-sync (a throwaway server): initdb's own final flush only; the running server syncs every commit
            fast = [] if self.keep else ["--no-sync"]
            self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C", *fast)
        options = " ".join(f"-c {name}={value}" for name, value in self.settings.items())
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log), "-o", options)
        self.running = True
        return self

    def halt(self) -> None:
        """Stop the server and keep its data: `start` runs it again (an outage, in tests)."""
        if self.running:
            self._run("pg_ctl", "stop", "-w", "-t", "60", "-m", "fast", "-D", str(self.data))
            self.running = False

    def stop(self) -> None:
        try:
            self.halt()
        finally:
            if not self.keep:
                shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@/{quote(database)}?host={quote(str(self.folder), safe='/')}"

    def create_database(self, name: str) -> str:
        """A new, empty database; its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def __enter__(self) -> "PostgresServer":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
