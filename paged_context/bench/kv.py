"""`bench kv`: restoring a page's KV from the host pool against recomputing it, for page
sizes of 512, 2,048 and 8,192 tokens, on whatever device is present; and how far the
approximate splice mode drifts from a recompute on the real model."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from tqdm import tqdm

from .report import publish, pyplot, save_figure, table

PAGES = (512, 2048, 8192)
PREFIX = 64  # tokens before the page, as a system prompt would be
# ANCHORS.md section 5: prefill vs pinned restore on the lent H100, 8B Llama shape, bf16
ANCHOR = {512: (44.0, 1.2), 2048: (62.0, 4.9), 8192: (266.0, 19.5)}
# SmolLM2-135M-Instruct's shape (the embedded default model), for random weights
SMOLLM2_SHAPE = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, head_dim=64, rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, tie_word_embeddings=True,
)


def build_model(path: Path | None, device, dtype, max_tokens: int, shape: dict | None = None):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if path is not None:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval(), Path(path).name
    config = LlamaConfig(**(shape or SMOLLM2_SHAPE), max_position_embeddings=max(8192, max_tokens))
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device=device, dtype=dtype).eval(), "random weights, SmolLM2-135M shape"


def _timed(fn, device, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` runs after one warm-up."""
    import torch

    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_page(model, tokens: int, repeats: int) -> dict:
    import copy

    import torch
    from transformers import DynamicCache

    from ..patches.kv_cache import KVCacheManager

    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(tokens)
    ids = torch.randint(10, model.config.vocab_size, (PREFIX + tokens,), generator=generator).tolist()
    manager = KVCacheManager(model)
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(torch.tensor([ids], device=device), past_key_values=cache)
        manager.remember(ids, cache, [PREFIX, PREFIX + tokens])
        prefix = DynamicCache(config=model.config)
        model(torch.tensor([ids[:PREFIX]], device=device), past_key_values=prefix)
        page = torch.tensor([ids[PREFIX:]], device=device)

        def recompute():
            model(page, past_key_values=copy.deepcopy(prefix))

        def restore():
            manager.live = None  # from the host pool, not the live cache
            restored, n = manager.cache_for(ids + [0])
            assert n == PREFIX + tokens

        recompute_s = _timed(recompute, device, repeats)
        restore_s = _timed(restore, device, repeats)
    page_bytes = sum(c.nbytes for c in manager.pool.values() if c.start == PREFIX)
    return {
        "tokens": tokens,
        "kv_bytes": page_bytes,
        "recompute_ms": recompute_s * 1000,
        "restore_ms": restore_s * 1000,
        "restore_gb_s": page_bytes / restore_s / 1e9,
        "speedup": recompute_s / restore_s,
    }


def pinned_bandwidth(nbytes: int, device, repeats: int) -> float:
    """GB/s of a plain pinned host-to-device copy of `nbytes` (CUDA only)."""
    import torch

    host = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    target = torch.empty(nbytes, dtype=torch.uint8, device=device)
    return nbytes / _timed(lambda: target.copy_(host, non_blocking=True), device, repeats) / 1e9


SPLICE_TEXTS = [
    ("My sister Ingrid moved to Oslo last spring and works at a bakery near the harbour.", "Tell me about your weekend plans."),
    ("The kitchen renovation budget is 2,400 dollars and the work starts on May 7.", "What should I cook tonight?"),
    ("I take metformin, 500 mg, twice a day with meals.", "Any tips for sleeping better?"),
]


def splice_study(model, tokenizer) -> list[dict]:
    """Reuse a page's KV after a different prefix (re-rotated) vs recomputing it."""
    from ..patches.kv_cache import splice_divergence

    rows = []
    for fact, other in SPLICE_TEXTS:
        enc = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
        before, segment = enc("user: " + other + "\n"), enc("user: " + fact + "\n")
        context = enc("system: You are a helpful assistant.\nuser: Hello there!\nassistant: Hi! How can I help?\n")
        after = enc("user: What do you remember about that?\nassistant:")
        rows.append({"segment_tokens": len(segment), **splice_divergence(model, before, segment, context, after)})
    return rows


def run(model_path: Path | None, pages, repeats: int, device_name: str | None, dtype_name: str, splice: bool) -> dict:
    import torch

    device = torch.device(device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, dtype_name)
    model, source = build_model(model_path, device, dtype, PREFIX + max(pages))
    result: dict = {"device": str(device), "dtype": dtype_name, "model": source, "prefix_tokens": PREFIX, "pages": []}
    for tokens in tqdm(pages, desc="bench kv", unit="page", disable=None):
        row = measure_page(model, tokens, repeats)
        if device.type == "cuda":
            row["pinned_h2d_gb_s"] = pinned_bandwidth(row["kv_bytes"], device, repeats)
        result["pages"].append(row)
    if splice and model_path is not None:
        from transformers import AutoTokenizer

        result["splice"] = splice_study(model, AutoTokenizer.from_pretrained(model_path))
    return result


def _anchor(tokens: int) -> str:
    if tokens not in ANCHOR:
        return "-"
    recompute, restore = ANCHOR[tokens]
    return f"{recompute:.0f} / {restore:.1f} ms = {recompute / restore:.1f}x"


def report(result: dict) -> str:
    cuda = any("pinned_h2d_gb_s" in r for r in result["pages"])
    out = [
        table(
            ["page tokens", "KV MiB", "recompute ms", "restore ms", "restore GB/s"]
            + (["pinned H2D GB/s"] if cuda else [])
            + ["recompute / restore", "anchor: H100, 8B, bf16"],
            [
                [r["tokens"], f"{r['kv_bytes'] / 2**20:.1f}", f"{r['recompute_ms']:.1f}", f"{r['restore_ms']:.1f}", f"{r['restore_gb_s']:.2f}"]
                + ([f"{r['pinned_h2d_gb_s']:.1f}"] if cuda else [])
                + [f"{r['speedup']:.1f}x", _anchor(r["tokens"])]
                for r in result["pages"]
            ],
            title=f"KV restore vs recompute on {result['device']} ({result['dtype']}, {result['model']}; after a {result['prefix_tokens']}-token prefix)",
        )
    ]
    if result.get("splice"):
        out.append(
            table(
                ["segment tokens", "max abs logit diff", "KL(recompute, splice)", "greedy agreement"],
                [[r["segment_tokens"], f"{r['max_logit_diff']:.3f}", f"{r['kl']:.4f}", f"{r['greedy_agreement']:.2f}"] for r in result["splice"]],
                title="Splice mode (a page's KV reused after another prefix, keys re-rotated) against recompute",
            )
        )
    return "\n\n".join(out)


def plot(result: dict, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    tokens = [r["tokens"] for r in result["pages"]]
    ax.plot(tokens, [r["recompute_ms"] for r in result["pages"]], marker="o", label="recompute")
    ax.plot(tokens, [r["restore_ms"] for r in result["pages"]], marker="o", label="restore")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("page tokens")
    ax.set_ylabel("ms")
    ax.set_title(f"KV restore vs recompute ({result['device']})")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def main(args) -> dict:
    model_path = args.model
    if model_path is None and args.default_model:
        from ..models.default_model import pull

        model_path = pull()
    result = run(model_path, args.pages, args.repeats, args.device, args.dtype, not args.no_splice)
    return publish(result, report(result), args.out, "kv", plot)


def add_arguments(p) -> None:
    p.add_argument("--pages", type=int, nargs="+", default=list(PAGES), metavar="TOKENS", help="page sizes in tokens (default 512 2048 8192)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement, after a warm-up (default 3)")
    p.add_argument("--model", type=Path, help="a local HF model directory (default: random weights of the SmolLM2-135M shape, no download)")
    p.add_argument("--default-model", action="store_true", help="use the embedded default model (pulled if needed), which also runs the splice study")
    p.add_argument("--device", help="torch device (default cuda when available, else cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype (default float32)")
    p.add_argument("--no-splice", action="store_true", help="skip the splice-vs-recompute study (it needs a real model)")
    p.add_argument("--out", type=Path, help="write kv.json and kv.png here")
