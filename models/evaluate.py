"""The controller's metrics, computed by the same code as `bench traces` and `bench probes`,
and the model card written from them."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Sequence

from paged_context.bench import probes as bench_probes
from paged_context.bench import traces as bench_traces
from paged_context.controller import FEATURES, Controller, LearnedPolicy
from paged_context.pages import Turn, segment
from paged_context.policies import CLASSICAL_ONLINE
from paged_context.sim import synthetic
from paged_context.sim import traces as tr
from paged_context.sim.conversations import Conversation

PREFETCH_SPECS = ("lru+bm25", "arc+bm25", "learned+prefetch")
GRID_SPECS = (*CLASSICAL_ONLINE, "belady", "learned")
TARGETS = {"traces_cr_at_8": 1.45, "locomo_any": 90.0, "locomo_all": 80.0}


def evaluate_traces(checkpoint: Path, traces: Sequence[tuple[int, Sequence]] | None = None) -> dict:
    traces = traces or [(s, tr.generate(s)) for s in bench_traces.SEEDS]
    result = bench_traces.run(traces, bench_traces.CAPACITIES, (*CLASSICAL_ONLINE, "changepoint", "learned"), betas=(), controller=checkpoint)
    pols = result["policies"]
    per_k = {}
    for k in map(str, bench_traces.CAPACITIES):
        best = min(CLASSICAL_ONLINE, key=lambda n: pols[n]["fault_rate"][k])
        per_k[k] = {
            "learned": pols["learned"]["fault_rate"][k],
            "learned_cr": pols["learned"]["competitive_ratio"][k],
            "best_classical": best,
            "best_classical_rate": pols[best]["fault_rate"][k],
            "changepoint": pols["changepoint"]["fault_rate"][k],
            "changepoint_cr": pols["changepoint"]["competitive_ratio"][k],
            "belady": pols["belady"]["fault_rate"][k],
        }
    return {"per_capacity": per_k, "learned_cr_at_8": per_k["8"]["learned_cr"] if "8" in per_k else None}


def evaluate_probes(checkpoint: Path, convs: Sequence[Conversation], boundaries=bench_probes.BOUNDARIES, k: int = 5, budget: int = 3) -> dict:
    class Quiet:
        def update(self, n: int = 1) -> None:
            pass

    grid = bench_probes.run_grid(convs, boundaries, (*GRID_SPECS, *PREFETCH_SPECS), k, "heuristic", Quiet(), checkpoint, budget)
    out: dict = {"probes": sum(len(c.probes) for c in convs), "boundaries": {}}
    for b in boundaries:
        out["boundaries"][b] = {
            s: {"any": c["availability"], "all": c["availability_all"], "prefetched": c["prefetched_per_probe"]}
            for s, c in grid[b]["policies"].items()
        }
    mean = lambda spec, field: statistics.fmean(out["boundaries"][b][spec][field] for b in boundaries)  # noqa: E731
    out["average"] = {s: {"any": mean(s, "any"), "all": mean(s, "all")} for s in (*GRID_SPECS, *PREFETCH_SPECS)}
    return out


def scoring_latency(checkpoint: Path, pages: int = 100, repeats: int = 50) -> dict:
    """Milliseconds to load the checkpoint (uncached) and to score `pages` pages."""
    started = time.perf_counter()
    controller = Controller.read(checkpoint)
    load_ms = (time.perf_counter() - started) * 1000
    turns = [Turn(i, "user" if i % 2 == 0 else "assistant", f"turn {i} about topic {i % 13} and Lisbon {i % 7}") for i in range(pages * 4)]
    policy = LearnedPolicy(controller)
    policy.start(pages)
    policy.attach(segment(turns, "fixed_4"))
    for page_id in range(1, pages + 1):
        policy.on_admit(page_id, page_id)
    policy.on_request("what about Lisbon and topic 3?")
    keys = list(range(1, pages + 1))
    started = time.perf_counter()
    for _ in range(repeats):
        policy.controller.score(policy.features(keys, pages + 1))
    return {"load_ms": load_ms, f"score_{pages}_pages_ms": (time.perf_counter() - started) * 1000 / repeats}


def evaluate(checkpoint: Path, locomo: Sequence[Conversation] | None, synthetic_n: int = 30) -> dict:
    metrics = {"traces": evaluate_traces(checkpoint), "latency": scoring_latency(checkpoint)}
    metrics["synthetic"] = evaluate_probes(checkpoint, synthetic.generate_many(synthetic_n, 0))
    if locomo:
        metrics["locomo"] = evaluate_probes(checkpoint, locomo)
    return metrics


def model_card(metrics: dict, report: dict, checkpoint: Path, crossval: dict | None = None) -> str:
    cfg = report["config"]
    t = metrics["traces"]["per_capacity"]
    lines = [
        "# Page Controller: model card",
        "",
        f"`{checkpoint.name}`: {report['parameters']:,} parameters, {checkpoint.stat().st_size / 1024:.1f} KiB, safetensors.",
        "A two-layer GELU MLP plus a linear skip scoring each page's future utility from the features below;",
        "the policy evicts the lowest-scoring resident page and prefetches the highest-scoring non-resident",
        "ones. The skip starts as the log of the change-point posterior's next-reference probability (the",
        "`changepoint` policy) and the layers at zero, so training starts from that rule.",
        "",
        "## Training",
        "",
        "DAgger over the network's own rollouts (`paged-context train-controller`, `models/train.py`): every",
        "round acts as the network trained so far (round 0: the skip alone). On block traces, about "
        f"{cfg['rollouts']} evictions",
        f"per trace and cache size are labelled by rollouts: each of the {cfg['rollout_candidates']} lowest-scored pages and the least recently used one is evicted in a copy of the run, the",
        f"network decides alone for {cfg['rollout_horizon']} references, and the pages that cost the fewest faults are the target.",
        f"Conversations run at {', '.join(map(str, cfg['ks']))} resident pages; there every eviction is labelled with every page",
        "an optimal offline schedule may drop (imitation of Belady), every request with the pages it went on to use.",
        f"{cfg['rounds']} rounds, {cfg['epochs']} epochs each, seed {cfg['seed']}, listwise cross-entropy plus",
        f"next-use distance regression (weight {cfg['regression']}). Prefetch threshold: {report['prefetch_threshold']:.3f}",
        "(the score above which 95% of the pages requests went on to use lie).",
        "",
        "On block traces the network stays level with the rule it starts from (compare the `learned` and",
        "`changepoint` columns below): imitating Belady there made it worse, rollouts do not.",
        "",
        f"- Neural Paging synthetic traces, seeds 1000..{999 + cfg['trace_seeds']} (evaluation uses 42..51), cache sizes {', '.join(map(str, cfg['capacities']))}",
        f"- planted-fact synthetic conversations, seeds 10000..{9999 + cfg['synthetic']} (evaluation uses 0..29)",
        f"- LoCoMo: {cfg['locomo'] or 'not used'}" + (f" (conversations {', '.join(cfg['locomo_ids'])})" if cfg.get("locomo_ids") else ""),
        f"- boundaries {', '.join(cfg['boundaries'])}; k = {', '.join(map(str, cfg['ks']))} resident pages; prefetch budget {cfg['prefetch_budget']}",
        f"- decisions recorded: " + ", ".join(f"{g} {n:,}" for g, n in sorted(report["decisions"].items())),
        f"- training time: {report['train_seconds']:.0f} s on {report['device']}",
        "",
        "Features: " + ", ".join(f"`{f}`" for f in FEATURES) + ".",
        "",
        "## Metrics",
        "",
        "Neural Paging protocol (seeds 42..51), fault rate:",
        "",
        "| K_b | learned | competitive ratio | changepoint (its prior alone) | its ratio | best classical online | its fault rate | Belady |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {v['learned']:.3f} | {v['learned_cr']:.3f} | {v['changepoint']:.3f} | {v['changepoint_cr']:.3f} | {v['best_classical']} | {v['best_classical_rate']:.3f} | {v['belady']:.3f} |"
        for k, v in t.items()
    ]
    for name in ("locomo", "synthetic"):
        if name not in metrics:
            continue
        m = metrics[name]
        lines += [
            "",
            f"{name} probes ({m['probes']}), % with any / all evidence pages in context, k = 5 (+ up to 3 prefetched):",
            "",
            "| policy | fixed_20 | pages prefetched per probe | average of 5 boundaries |",
            "|---|---|---|---|",
        ]
        for spec in (*GRID_SPECS, *PREFETCH_SPECS):
            f20, avg = m["boundaries"]["fixed_20"][spec], m["average"][spec]
            lines.append(
                f"| {spec} | {f20['any']:.1f} / {f20['all']:.1f} | {f20['prefetched']:.2f} | {avg['any']:.1f} / {avg['all']:.1f} |"
            )
    if crossval:
        lines += ["", crossval["text"]]
    lat = metrics["latency"]
    lines += [
        "",
        f"Loading the checkpoint takes {lat['load_ms']:.1f} ms and scoring 100 pages {lat['score_100_pages_ms']:.2f} ms (CPU, NumPy).",
        "",
        "Reproduce: `paged-context train-controller --out models/controller.safetensors` (add `--cross-validate`",
        "for the held-out LoCoMo figures).",
    ]
    return "\n".join(lines) + "\n"
