"""The package's shape: the core (`paged_context` minus `serve`, `patches`, `models`)
loads without torch, transformers or vLLM, and without the engines or the server."""

import subprocess
import sys
from pathlib import Path

import paged_context

CORE = Path(paged_context.__file__).parent

SCRIPT = """
import importlib, sys

class Unimportable:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "vllm"):
            raise ImportError(f"{name} is made unimportable by this test")

sys.meta_path.insert(0, Unimportable())
for name in sys.argv[1:]:
    importlib.import_module(name)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "vllm") or m.startswith(("paged_context.serve", "paged_context.patches")))
print(len(sys.argv) - 1, leaked)
"""


def core_modules() -> list[str]:
    names = []
    for path in sorted(CORE.rglob("*.py")):
        parts = path.relative_to(CORE.parent).with_suffix("").parts
        if parts[-1] == "__main__":
            continue  # runs the command line
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_the_core_imports_with_torch_and_vllm_unimportable():
    modules = core_modules()
    assert "paged_context.answering" in modules and "paged_context.bench.locomo" in modules and len(modules) > 25
    done = subprocess.run([sys.executable, "-c", SCRIPT, *modules], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [str(len(modules)), "[]"]


def test_the_blocker_does_block():
    done = subprocess.run([sys.executable, "-c", SCRIPT, "paged_context.patches.hf_engine"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "made unimportable by this test" in done.stderr
