"""The README's Python examples run, and print what the README says they print."""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(needs_model: bool = False):
    """The README's Python examples in order; those that load the default model run in
    the slow suite (test_real_model.py)."""
    found = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return [b for b in found if ("HFEngine(" in b) == needs_model]


def expected_output(block: str) -> list[str]:
    """The '# ' comment lines that follow a print(...) call."""
    out, after_print = [], False
    for line in block.splitlines():
        if line.startswith("# ") and after_print:
            out.append(line[2:])
        else:
            after_print = "print(" in line
    return out


def run_and_check(blocks):
    namespace: dict = {}
    for block in blocks:
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            exec(compile(block, str(README), "exec"), namespace)
        assert buffer.getvalue().splitlines() == expected_output(block), block


def test_readme_examples_run_and_print_what_they_claim():
    assert len(blocks()) >= 4
    run_and_check(blocks())
