"""`paged-context cluster`: several replicas of the paging server behind nginx, on one
machine, sharing one page store.

Each replica is `paged-context serve --port P --db DB ...` (every option this command
does not know is passed to each of them: the model, the engine, paging options). nginx
runs in the foreground as a child, with its configuration, pid file, logs and temporary
files in the run directory, and routes each request by its `X-Session-Id` header
(consistent hashing), so a session is answered by one replica while that one lives; when
a replica dies its sessions go to the others, which read them from the shared store.
Replicas take turns on a session through the store's per-session lock whatever the
routing, so a request without the header (routed by nginx as if its key were empty) is
answered correctly too, only without the affinity.

The same upstream block (`nginx_config`) fronts replicas on several machines: see the
README, "Several replicas".
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from paged_context.bench.servers import Launched, free_port

NGINX_HELP = "nginx is not installed: apt-get install -y nginx-light (or nginx), or give its path with --nginx"


def nginx_config(ports: list[int], listen: str, run_dir: Path, fail_timeout: float = 10, hosts: list[str] | None = None) -> str:
    """nginx's configuration: `listen` (host:port) in front of the replicas at
    hosts[i]:ports[i] (127.0.0.1 by default), one session to one replica by
    `X-Session-Id`, the next replica when one fails; every path nginx writes is in
    `run_dir`."""
    hosts = hosts or ["127.0.0.1"] * len(ports)
    servers = "\n".join(f"        server {host}:{port} max_fails=1 fail_timeout={fail_timeout:g}s;" for host, port in zip(hosts, ports))
    user = "user root root;\n" if os.geteuid() == 0 else ""  # workers keep the run directory's owner
    return f"""# written by paged-context cluster
daemon off;
worker_processes 1;
{user}pid {run_dir}/nginx.pid;
error_log {run_dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format replicas '$time_iso8601 "$request" $status session=$http_x_session_id replica=$upstream_addr $request_time s';
    access_log {run_dir}/nginx-access.log replicas;
    client_body_temp_path {run_dir}/nginx-tmp/body;
    proxy_temp_path {run_dir}/nginx-tmp/proxy;
    fastcgi_temp_path {run_dir}/nginx-tmp/fastcgi;
    uwsgi_temp_path {run_dir}/nginx-tmp/uwsgi;
    scgi_temp_path {run_dir}/nginx-tmp/scgi;
    client_max_body_size 0;  # the replicas enforce --max-request-bytes
    upstream paged_context {{
        # one session, one replica (while it lives); no header: an empty key
        hash $http_x_session_id consistent;
{servers}
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://paged_context;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            # a dead replica's sessions go to the next one; a request already sent to
            # it is not sent again (POST): the client retries, resending its history
            proxy_next_upstream error timeout http_502;
            proxy_connect_timeout 5s;
            proxy_read_timeout 3600s;  # a long answer, or a request waiting for its session
            proxy_send_timeout 3600s;
            proxy_buffering off;  # streamed answers go out token by token
        }}
    }}
}}
"""


def find_nginx(given: str | None = None) -> str:
    """The nginx binary: `given`, else on PATH or in /usr/sbin (where Debian puts it)."""
    found = shutil.which(given or "nginx") or (None if given else shutil.which("nginx", path="/usr/sbin:/usr/local/sbin"))
    if found is None:
        raise FileNotFoundError(NGINX_HELP)
    return found


class Cluster:
    """The replicas and nginx, started together; `stop()` stops them all."""

    def __init__(self, serve_args: list[str], db: str, replicas: int = 2, listen: str = "127.0.0.1:8000", run_dir: Path | None = None,
                 nginx: str | None = None, fail_timeout: float = 10, timeout: float = 600):
        if replicas < 1:
            raise ValueError("--replicas must be 1 or more")
        self.run_dir = Path(run_dir or tempfile.mkdtemp(prefix="paged-context-cluster-")).resolve()
        (self.run_dir / "nginx-tmp").mkdir(parents=True, exist_ok=True)
        self.url = "http://" + listen
        nginx = find_nginx(nginx)
        self.replicas: list[Launched] = []
        self.nginx: Launched | None = None
        try:
            for i in range(replicas):
                port = free_port()
                command = [sys.executable, "-m", "paged_context", "serve", *serve_args, "--port", str(port), "--db", db]
                self.replicas.append(Launched(command, port, self.run_dir / f"replica-{i}.log", timeout, wait=False))
            config = self.run_dir / "nginx.conf"
            config.write_text(nginx_config([r.port for r in self.replicas], listen, self.run_dir, fail_timeout))
            for replica in self.replicas:
                replica.up()
            port = int(listen.rsplit(":", 1)[1])
            command = [nginx, "-p", str(self.run_dir), "-c", str(config), "-e", str(self.run_dir / "nginx-error.log")]
            self.nginx = Launched(command, port, self.run_dir / "nginx.log", 30, wait=False)
            self.nginx.url = self.url  # nginx may listen on another address than 127.0.0.1
            self.nginx.up()
        except BaseException:
            self.stop()
            raise
        (self.run_dir / "cluster.json").write_text(json.dumps(self.describe(), indent=2))

    def describe(self) -> dict:
        """Where everything is: the URL, and each replica's port, pid and log."""
        return {
            "url": self.url,
            "run_dir": str(self.run_dir),
            "nginx": {"pid": self.nginx.process.pid, "config": str(self.run_dir / "nginx.conf")} if self.nginx else None,
            "replicas": [{"url": r.url, "port": r.port, "pid": r.process.pid, "log": str(r.log_path)} for r in self.replicas],
        }

    def stop(self) -> None:
        for process in ([self.nginx] if self.nginx else []) + self.replicas:
            process.stop(signal.SIGTERM, timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def local_postgres(folder: Path, database: str = "paged_context"):
    """A PostgreSQL server with its data in `folder` (made on first use, kept), started;
    returns it and the URL of its `database` (created if missing)."""
    import psycopg

    from paged_context.postgres_server import PostgresServer

    server = PostgresServer(folder=folder).start()
    try:
        return server, server.create_database(database)
    except psycopg.errors.DuplicateDatabase:
        return server, server.url(database)
    except BaseException:
        server.stop()
        raise


def main(args) -> None:
    from paged_context.models.default_model import home

    def stop(signum, frame):
        raise KeyboardInterrupt

    if args.postgres and args.db:
        raise ValueError("give --db or --postgres, not both")
    # SIGTERM as Ctrl-C; and SIGINT too where a shell started the command in the background with it ignored
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    try:
        with contextlib.ExitStack() as started:
            db = args.db or str(home() / "sessions.db")
            if args.postgres:
                server, db = local_postgres(args.postgres)
                started.callback(server.stop)
            cluster = started.enter_context(
                Cluster(args.serve_args, db, args.replicas, f"{args.host}:{args.port}", args.run_dir, args.nginx, args.fail_timeout, args.startup_timeout)
            )
            ports = ", ".join(str(r.port) for r in cluster.replicas)
            print(f"paged-context cluster: {cluster.url} (nginx) in front of {len(cluster.replicas)} replicas on ports {ports}, store {db}; "
                  f"logs in {cluster.run_dir}. Clients send X-Session-Id. Ctrl-C stops.", flush=True)
            watch(cluster)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def watch(cluster: Cluster) -> None:
    """Until nginx or every replica exits (SystemExit): say when a replica does."""
    gone: set[int] = set()
    while cluster.nginx.process.poll() is None:
        for i, replica in enumerate(cluster.replicas):
            if i not in gone and replica.process.poll() is not None:
                gone.add(i)
                print(f"paged-context cluster: replica {i} (port {replica.port}) exited with code {replica.process.returncode}; "
                      f"its sessions go to the others (log: {replica.log_path})", file=sys.stderr, flush=True)
        if len(gone) == len(cluster.replicas):
            raise SystemExit("paged-context cluster: every replica has exited")
        time.sleep(1)
    raise SystemExit(f"paged-context cluster: nginx exited with code {cluster.nginx.process.returncode} (log: {cluster.run_dir / 'nginx-error.log'})")


def add_arguments(p) -> None:
    p.add_argument("--replicas", type=int, default=2, help="how many `paged-context serve` replicas to start (default 2)")
    p.add_argument("--host", default="127.0.0.1", help="the address nginx listens on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="the port nginx listens on (default 8000); replicas take free ports")
    p.add_argument("--db", help="the page store every replica shares, as `serve --db` takes it (default: $PAGED_CONTEXT_HOME/sessions.db)")
    p.add_argument(
        "--postgres", type=Path, metavar="DIR",
        help="start a PostgreSQL server of its own for the store, its data kept in DIR (initdb on first use; needs PostgreSQL's binaries); instead of --db",
    )
    p.add_argument("--run-dir", type=Path, help="where nginx's configuration, pid file and logs and the replicas' logs go (default: a new temporary directory)")
    p.add_argument("--nginx", help="the nginx binary (default: nginx on PATH or in /usr/sbin)")
    p.add_argument("--fail-timeout", type=float, default=10, help="seconds nginx sends a failed replica nothing before trying it again (default 10)")
    p.add_argument("--startup-timeout", type=float, default=600, help="seconds a replica may take to come up (default 600)")
    p.set_defaults(serve_args=[])

