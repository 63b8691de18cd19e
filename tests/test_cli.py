import subprocess
import sys

import argparse

from paged_context import cli


def run(*args):
    return subprocess.run([sys.executable, "-m", "paged_context", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_commands():
    done = run("--help")
    assert done.returncode == 0 and "bench" in done.stdout
    done = run("bench", "--help")
    assert done.returncode == 0
    assert "traces" in done.stdout and "probes" in done.stdout


def subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_every_command_and_option_is_explained():
    top = cli.parser()
    for name, command in subparsers(top):
        assert command.description, name
        for bench_name, bench in subparsers(command):
            assert bench.description, bench_name
            for action in bench._actions:
                assert action.help, f"bench {bench_name} {action.option_strings}"


def test_usage_errors_exit_2():
    assert run("bench").returncode == 2
    assert run("bench", "traces", "--policies", "clock").returncode == 2


def test_a_pool_size_for_a_sqlite_store_is_refused_before_the_model_loads(tiny, tmp_path):
    done = run("serve", "--model", str(tiny), "--db", str(tmp_path / "pages.db"), "--db-pool-size", "8")
    assert done.returncode == 2 and "--db-pool-size is for a postgresql:// --db" in done.stderr
    assert not (tmp_path / "pages.db").exists()
