"""Training the Page Controller: DAgger over the controller's own rollouts, under accelerate.

One script does the whole run (`paged-context train-controller`, or the same under
`accelerate launch`):

1. Roll out the controller trained so far on training data and record decisions with a
   label. On block traces about `rollouts` evictions per trace and cache size are
   labelled by rollouts of the learner: each of the lowest-scored candidates, and the
   least recently used one, is evicted in a copy of the run, the controller then decides
   alone for `rollout_horizon` references, and the candidates that paid the fewest faults
   are the target (a cost-to-go label: what the controller's own future makes best, not
   what Belady's would). Conversations run at several cache sizes (`ks`), and there
   every eviction is labelled by imitation of Belady: the resident pages an optimal
   offline schedule may drop (Belady's victim and every page as good, see
   `optimal_evictions`); every request with the pages it then used (what prefetch
   should bring). The untrained network is its skip alone, the change-point A0 rule,
   so round 0 already acts sensibly, and no round takes the expert's moves, so the
   network learns from its own states.
2. Train on everything recorded so far: a listwise cross-entropy per decision (softmax
   over the candidates' scores, negated for evictions), plus a regression of the score on
   minus the log distance to the next use, groups of decisions weighted so each data
   source counts the same whatever its size.

Imitation labels work for traces too (`keep`), but on them the network drifted from its
prior to more faults (CR 1.454 at K_b = 8 against the prior's 1.440); rollout labels keep
it close (1.447; see the README).

Training data never overlaps evaluation: Neural Paging traces use seeds from 1000 (the
benchmark uses 42..51) and synthetic conversations seeds from 10000 (the benchmark uses
0..29). LoCoMo dev conversations are used when a file is given; held-out conversations
must not be.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
import zipfile
from bisect import bisect_left
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from paged_context.controller import FEATURES, Controller, LearnedPolicy
from paged_context.policies import ResidentSet, count_faults, next_uses
from paged_context.policy_registry import make_policy
from paged_context.processes import cores, map_in_order
from paged_context.sim import synthetic
from paged_context.sim import traces as tr
from paged_context.sim.conversations import Conversation, load_locomo
from paged_context.sim.probes import simulate

DISTANCE_CAP = 5000  # steps; "never again" counts as this far
# How much each source weighs in the loss, whatever its number of decisions.
GROUP_SHARES = {
    "traces/evict": 0.4,
    "traces/rollout": 0.4,
    "synthetic/evict": 0.15,
    "synthetic/prefetch": 0.15,
    "locomo/evict": 0.15,
    "locomo/prefetch": 0.15,
}


@dataclass
class TrainConfig:
    seed: int = 0
    trace_seeds: int = 20  # Neural Paging traces from seed 1000, one per cache size each
    capacities: tuple[int, ...] = (2, 4, 6, 8, 10, 12, 16)
    synthetic: int = 40  # planted-fact conversations from seed 10000
    locomo: str | None = None  # a LoCoMo-format file of training conversations
    locomo_ids: tuple[str, ...] | None = None  # train on these of its conversations only
    boundaries: tuple[str, ...] = ("fixed_5", "fixed_10", "fixed_20", "exchange_5", "topic_shift", "session")
    # resident pages in conversations: each conversation runs at every one, so text pages are
    # scored sensibly at a session's small and large caches too, not only at the benchmark's 5
    ks: tuple[int, ...] = (2, 5, 10)
    prefetch_budget: int = 3
    rounds: int = 3
    keep: float = 0.0  # share of trace evictions labelled by imitation of Belady (conversations: all)
    rollouts: int = 40  # trace evictions labelled by rollouts of the learner, about, per trace and cache size
    rollout_horizon: int = 64  # references each rollout runs
    rollout_candidates: int = 3  # the lowest-scored candidates that get a rollout (and the least recently used)
    epochs: int = 10
    batch: int = 512  # decisions per step
    lr: float = 3e-3
    hidden: int = 64
    regression: float = 1.0  # weight of the next-use distance regression beside the listwise loss
    mixed_precision: str = "no"


@dataclass
class Decisions:
    """Recorded decisions: candidate features, the oracle's target weights, and whether
    the decision picks the page to drop (evict) or the pages to bring (prefetch)."""

    x: list[np.ndarray] = field(default_factory=list)
    target: list[np.ndarray] = field(default_factory=list)
    distance: list[np.ndarray] = field(default_factory=list)  # log1p(steps to next use), capped
    group: list[str] = field(default_factory=list)

    def add(self, group: str, x: np.ndarray, target: np.ndarray, distance: np.ndarray) -> None:
        self.x.append(x)
        self.target.append(target / target.sum())
        self.distance.append(np.log1p(np.minimum(distance, DISTANCE_CAP)).astype(np.float32))
        self.group.append(group)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for g in self.group:
            out[g] += 1
        return dict(out)

    def extend(self, other: Decisions) -> None:
        self.x += other.x
        self.target += other.target
        self.distance += other.distance
        self.group += other.group

    def save(self, path: Path) -> None:
        """An .npz file (what np.savez_compressed writes, at zlib's fastest level: the same
        size here, in less than half the time)."""
        sizes = np.array([len(t) for t in self.target])
        arrays = dict(x=np.concatenate(self.x), target=np.concatenate(self.target), distance=np.concatenate(self.distance), sizes=sizes, group=np.array(self.group))
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            for name, array in arrays.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, array, allow_pickle=False)

    @classmethod
    def load(cls, path: Path) -> Decisions:
        data = np.load(path)
        cuts = np.cumsum(data["sizes"])[:-1]
        split = lambda name: list(np.split(data[name], cuts))  # noqa: E731
        return cls(split("x"), split("target"), split("distance"), [str(g) for g in data["group"]])


class Recorder(LearnedPolicy):
    """Acts as the controller and records decisions with their labels: a `rollout_keep`
    share of evictions labelled by rollouts, a `keep` share by Belady, every prefetch by
    the pages its request used."""

    def __init__(self, controller: Controller, source: str, sink: Decisions, rng: random.Random, keep: float, subgroup: str = "", rollout: tuple[float, int, int] = (0.0, 0, 0)):
        super().__init__(controller)  # no shortlist: training scores every candidate
        self.source, self.sink, self.rng, self.subgroup = source, sink, rng, subgroup
        self.keep = keep
        self.rollout_keep, self.horizon, self.rollout_candidates = rollout
        self.pending: tuple[np.ndarray, list] | None = None

    def start(self, capacity, future=None):
        super().start(capacity, future)
        self.future = list(future or ())
        self.next_at = next_uses(self.future)
        self.uses: dict = defaultdict(list)
        for i, key in enumerate(self.future):
            self.uses[key].append(i)
        self.used_since: set = set()

    def _next_use(self, key, step: int) -> float:
        uses = self.uses[key]
        i = bisect_left(uses, step)
        return uses[i] if i < len(uses) else math.inf

    def on_hit(self, key, step):
        super().on_hit(key, step)
        self.used_since.add(key)

    def on_admit(self, key, step):
        super().on_admit(key, step)
        self.used_since.add(key)

    def victim(self, incoming, step):
        keys = list(self.resident)
        x = self.features(keys, step)
        scores = self.controller.score(x)
        draw = self.rng.random()
        if draw < self.rollout_keep:
            due = np.array([self._next_use(k, step + 1) for k in keys])
            # the lowest-scored pages, and the least recently used one: the move that a
            # working-set shift calls for, which the prior scores high for its old references
            lru = int(np.argmin([self.history.last[self.history.slot[k]] for k in keys]))
            tried = np.unique([*np.argsort(scores, kind="stable")[: self.rollout_candidates], lru])
            faults = np.array([self.rollout_faults(keys[i], incoming, step) for i in tried])
            target = np.zeros(len(keys), dtype=np.float32)
            target[tried[faults == faults.min()]] = 1.0
            self.sink.add(f"{self.source}/rollout{self.subgroup}", x, target, due - step)
        elif draw < self.rollout_keep + self.keep:
            due = np.array([self._next_use(k, step + 1) for k in keys])
            target = optimal_evictions(keys, due, incoming, step, self.future, self.next_at)
            self.sink.add(f"{self.source}/evict{self.subgroup}", x, target.astype(np.float32), due - step)
        return keys[int(np.argmin(scores))]

    def rollout_faults(self, evicted, incoming, step: int) -> int:
        """Faults over the next `horizon` references when `evicted` makes room for
        `incoming` now and the current controller decides every eviction after."""
        clone = self.fork()
        resident = set(self.resident) - {evicted} | {incoming}
        clone.on_evict(evicted)
        clone.on_admit(incoming, step)
        faults = 0
        for t in range(step + 1, min(step + 1 + self.horizon, len(self.future))):
            key = self.future[t]
            if key in resident:
                clone.on_hit(key, t)
                continue
            faults += 1
            out = clone.victim(key, t)
            resident.remove(out)
            clone.on_evict(out)
            resident.add(key)
            clone.on_admit(key, t)
        return faults

    def on_request(self, text):
        self.finish()
        super().on_request(text)

    def prefetch(self, candidates, budget, step, threshold=None):
        if not candidates:
            return []
        candidates = list(candidates)
        x = self.features(candidates, step)  # once: recorded, and what the choice is made from
        self.pending = (x, candidates, np.array([self._next_use(c, step) for c in candidates]) - step)
        self.used_since = set()
        return self._best(candidates, x, budget, -math.inf) if budget > 0 else []

    def finish(self) -> None:
        """Label the last prefetch with the pages its request went on to use."""
        if self.pending is not None:
            x, candidates, distance = self.pending
            target = np.array([c in self.used_since for c in candidates], dtype=np.float32)
            if target.any():
                self.sink.add(f"{self.source}/prefetch", x, target, distance)
            self.pending = None


def optimal_evictions(keys: list, due: np.ndarray, incoming, step: int, future: Sequence, next_at: Sequence | None = None) -> np.ndarray:
    """Which resident pages an optimal offline schedule may drop now. Belady's victim v (used
    farthest ahead) is one; for every other page i, Belady is run from both caches (i
    dropped, v dropped) in lockstep until they hold the same pages: i is optimal too when
    both paid the same faults by then. One label per page instead of Belady's single
    victim, so equally good choices are no longer told apart at random in the targets.
    `next_at` is `next_uses(future)` (where each reference's page is used next), which a
    caller labelling many decisions on one future computes once."""
    v = int(np.argmax(due))
    optimal = due == math.inf
    optimal[v] = True
    if len(future) <= step or future[step] != incoming:
        return optimal  # not a plain request sequence: Belady's choice alone
    if next_at is None:
        next_at = next_uses(future)
    for i in np.flatnonzero(~optimal):
        optimal[i] = _extra_faults(keys, due, i, v, step, future, next_at) == 0
    return optimal


def _extra_faults(keys, due, i, v, step, future, next_at) -> int:
    """Belady's faults from the cache without page i minus those from the cache without v.
    The caches share `common` and differ in one page each: `kept` (i, in the cache that
    dropped v) and `other` (v, in the cache that dropped i); the difference never grows."""
    common = {k: float(d) for j, (k, d) in enumerate(zip(keys, due)) if j not in (i, v)}
    common[future[step]] = next_at[step]  # the incoming page
    kept, other = (keys[i], float(due[i])), (keys[v], float(due[v]))
    extra = 0
    for t in range(step + 1, len(future)):
        key = future[t]
        if key in common:
            common[key] = next_at[t]
            continue
        far = max(common, key=common.get)
        if key == kept[0] or key == other[0]:
            # one cache hits, the other faults and drops its farthest page
            miss = other if key == kept[0] else kept
            extra += 1 if key == kept[0] else -1
            if miss[1] >= common[far]:
                return extra  # it drops its own odd page: the caches are equal now
            dropped = (far, common.pop(far))
            common[key] = next_at[t]
            kept, other = (dropped, miss) if key == kept[0] else (miss, dropped)
            continue
        # both fault and drop their farthest page
        kept_out, other_out = kept[1] >= common[far], other[1] >= common[far]
        if kept_out and other_out:
            return extra
        dropped = (far, common.pop(far))
        common[key] = next_at[t]
        if kept_out:
            kept = dropped
        elif other_out:
            other = dropped
    return extra


def collect(cfg: TrainConfig, controller: Controller, round_: int, convs: dict[str, list[Conversation]], progress, workers: int = 1) -> Decisions:
    """Roll out `controller` on every job of `collection_jobs`, on `workers` processes; the
    result does not depend on how many."""
    sink = Decisions()
    for part in map_in_order(_collect_one, [(cfg, controller, round_, job) for job in collection_jobs(cfg, convs)], workers, progress):
        sink.extend(part)
    return sink


def collection_jobs(cfg: TrainConfig, convs: dict[str, list[Conversation]]) -> list[tuple]:
    """Every training trace at every cache size, every conversation at every boundary and
    each of `ks` resident pages."""
    jobs = [("traces", seed, capacity) for seed in range(1000, 1000 + cfg.trace_seeds) for capacity in cfg.capacities]
    jobs += [(source, conv, (boundary, k)) for source, conversations in convs.items() for conv in conversations for boundary in cfg.boundaries for k in cfg.ks]
    return jobs


def _collect_one(cfg: TrainConfig, controller: Controller, round_: int, job: tuple) -> Decisions:
    source, item, setting = job
    sink = Decisions()
    # one stream per job, so the decisions kept do not depend on the order jobs run in
    rng = random.Random(f"{cfg.seed}/{round_}/{source}/{getattr(item, 'id', item)}/{setting}")
    if source == "traces":
        trace = tr.generate(item)
        # as many rollouts at every cache size, though small caches evict far more often
        share = min(1.0, cfg.rollouts / max(1, count_faults(trace, setting, make_policy("lru"))))
        policy = Recorder(controller, source, sink, rng, cfg.keep, f"@{setting}", (share, cfg.rollout_horizon, cfg.rollout_candidates))
        cache = ResidentSet(setting, policy, future=trace)
        for key in trace:
            cache.access(key)
    else:
        boundary, k = setting
        policy = Recorder(controller, source, sink, rng, 1.0)
        simulate(item, boundary, policy, k, prefetch="learned", budget=cfg.prefetch_budget)
        policy.finish()
    return sink


def _flatten(data: Decisions, device):
    import torch

    sizes = torch.tensor([len(t) for t in data.target])
    seg = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    counts = data.counts()
    # "traces/evict@8": a base group's share is split evenly between its subgroups
    subgroups = defaultdict(int)
    for g in counts:
        subgroups[g.split("@")[0]] += 1
    shares = {g: GROUP_SHARES.get(g.split("@")[0], 0.1) / subgroups[g.split("@")[0]] for g in counts}
    total = sum(shares.values())
    weight = torch.tensor([shares[g] / total / counts[g] for g in data.group])
    sign = torch.tensor([1.0 if g.endswith("/prefetch") else -1.0 for g in data.group])
    return (
        torch.from_numpy(np.concatenate(data.x)).float().to(device),
        torch.from_numpy(np.concatenate(data.target)).float().to(device),
        torch.from_numpy(np.concatenate(data.distance)).float().to(device),
        seg.to(device),
        sizes,
        weight.to(device),
        sign.to(device),
    )


def listwise_loss(scores, target, seg, n_seg, weight, sign):
    """Cross-entropy between each decision's target and the softmax of its candidates'
    (signed) scores, weighted per decision."""
    import torch

    logits = scores * sign[seg]
    peak = torch.full((n_seg,), -torch.inf, device=scores.device).scatter_reduce(0, seg, logits.detach(), "amax")
    z = torch.zeros(n_seg, device=scores.device).index_add(0, seg, torch.exp(logits - peak[seg]))
    logp = logits - peak[seg] - torch.log(z)[seg]
    per_decision = -torch.zeros(n_seg, device=scores.device).index_add(0, seg, target * logp)
    return (per_decision * weight).sum() / weight.sum()


def train_round(net, optimizer, accelerator, data: Decisions, cfg: TrainConfig, round_: int, progress) -> float:
    import torch

    x, target, distance, seg, sizes, weight, sign = _flatten(data, accelerator.device)
    starts = torch.cumsum(sizes, 0) - sizes
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + round_)
    n = len(sizes)
    loss_value = float("nan")
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=generator)
        batches = [order[i : i + cfg.batch] for i in range(0, n - cfg.batch + 1, cfg.batch)] or [order]
        mine = batches[accelerator.process_index :: accelerator.num_processes]
        for ids in mine:
            size = sizes[ids]
            first = torch.cumsum(size, 0) - size
            rows = (starts[ids].repeat_interleave(size) + torch.arange(int(size.sum())) - first.repeat_interleave(size)).to(x.device)
            local = torch.repeat_interleave(torch.arange(len(ids)), size).to(x.device)
            with accelerator.autocast():
                scores = net(x[rows])
            w = weight[ids.to(x.device)]
            loss = listwise_loss(scores.float(), target[rows], local, len(ids), w, sign[ids.to(x.device)])
            if cfg.regression:
                # the score as minus the log distance to the next use, each row weighted as its decision
                row_w = w.repeat_interleave(size.to(x.device)) / size.to(x.device).repeat_interleave(size.to(x.device)).float()
                loss = loss + cfg.regression * (row_w * (scores.float() + distance[rows]) ** 2).sum() / w.sum()
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            loss_value = loss.item()
        progress()
    return loss_value


def to_controller(net, metadata: dict[str, str]) -> Controller:
    tensors = {k: v.detach().float().cpu().numpy() for k, v in net.state_dict().items()}
    return Controller(tensors, {"features": ",".join(FEATURES), **metadata})


def run(cfg: TrainConfig, work: Path, out: Path, resume: bool = False, workers: int | None = None) -> dict:
    """The whole training run: writes the checkpoint to `out` (the training report in its
    metadata) and returns the report. Rollouts run on `workers` processes (default: the
    cores this process may use, shared between accelerate's processes)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm import tqdm

    from .controller import ControllerNet, save_checkpoint

    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    workers = workers or max(1, cores() // accelerator.num_processes)
    set_seed(cfg.seed)
    torch.use_deterministic_algorithms(True)
    work.mkdir(parents=True, exist_ok=True)
    if not resume and accelerator.is_main_process:
        for old in work.glob("round_*"):  # a fresh run must not resume from another run's rounds
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    (work / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    convs = {"synthetic": synthetic.generate_many(cfg.synthetic, 10_000)}
    if cfg.locomo:
        convs["locomo"] = [c for c in load_locomo(cfg.locomo) if cfg.locomo_ids is None or c.id in cfg.locomo_ids]
    net = ControllerNet(cfg.hidden)
    # the layers learn a correction to the skip's prior: decay pulls them, not the prior, to zero
    layers = [p for name, p in net.named_parameters() if not name.startswith("skip.")]
    optimizer = torch.optim.AdamW([{"params": layers}, {"params": net.skip.parameters(), "weight_decay": 0.0}], lr=cfg.lr, weight_decay=1e-4)
    net, optimizer = accelerator.prepare(net, optimizer)
    model = accelerator.unwrap_model(net)
    data, first_round, losses = Decisions(), 0, []
    done = sorted(int(p.parent.name.split("_")[1]) for p in work.glob("round_*/done"))
    if resume and done:
        first_round = done[-1] + 1
        for r in range(first_round):
            data.extend(Decisions.load(work / f"round_{r}" / "decisions.npz"))
        accelerator.load_state(str(work / f"round_{done[-1]}" / "state"))
        losses = json.loads((work / f"round_{done[-1]}" / "done").read_text())["losses"]
        accelerator.print(f"resuming after round {done[-1]} with {len(data.target)} decisions")
    steps_per_round = len(collection_jobs(cfg, convs)) + cfg.epochs
    bar = tqdm(total=steps_per_round * (cfg.rounds - first_round), desc="train-controller", disable=not accelerator.is_main_process or None)
    started = time.time()
    for round_ in range(first_round, cfg.rounds):
        controller = to_controller(model, {})
        new = collect(cfg, controller, round_, convs, bar.update, workers)
        data.extend(new)
        if round_ == 0 and not (resume and done):
            model.fit_scaling(torch.from_numpy(np.concatenate(data.x)).float())
        losses.append(train_round(net, optimizer, accelerator, data, cfg, round_, bar.update))
        folder = work / f"round_{round_}"
        folder.mkdir(exist_ok=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(folder / "state"))
        if accelerator.is_main_process:
            new.save(folder / "decisions.npz")
            (folder / "done").write_text(json.dumps({"losses": losses, "decisions": len(data.target)}))
    bar.close()
    threshold = prefetch_threshold(to_controller(model, {}), data)
    report = {
        "config": asdict(cfg),
        "losses": losses,
        "decisions": data.counts(),
        "prefetch_threshold": threshold,
        "train_seconds": round(time.time() - started, 1),
        "device": f"{accelerator.device} ({torch.get_num_threads()} threads)",
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if accelerator.is_main_process:
        save_checkpoint(model, out, {"train_report": json.dumps(report), "prefetch_threshold": repr(threshold)})
    return report


def prefetch_threshold(controller: Controller, data: Decisions, keep: float = 0.95) -> float:
    """The score above which `keep` of the pages requests went on to use lie: prefetching
    stops at pages scoring lower than nearly everything that was ever worth fetching."""
    useful = [
        s
        for x, target, g in zip(data.x, data.target, data.group)
        if g.endswith("/prefetch")
        for s in controller.score(x)[target > 0]
    ]
    return float(np.quantile(useful, 1 - keep)) if useful else -math.inf


def crossvalidate(cfg: TrainConfig, work: Path, conversations: list[Conversation], workers: int | None = None) -> dict:
    """Two folds over the LoCoMo conversations: each half is scored by a controller trained
    on the other half (plus the same traces and synthetic data)."""
    from .evaluate import evaluate_probes

    ids = sorted(c.id for c in conversations)
    folds = [ids[0::2], ids[1::2]]
    results = []
    for i, held_out in enumerate(folds):
        fold_cfg = TrainConfig(**{**asdict(cfg), "locomo_ids": tuple(x for x in ids if x not in held_out)})
        checkpoint = work / f"fold_{i}" / "controller.safetensors"
        run(fold_cfg, work / f"fold_{i}", checkpoint, workers=workers)
        results.append((held_out, evaluate_probes(checkpoint, [c for c in conversations if c.id in held_out])))
    total = sum(r["probes"] for _, r in results)

    def pooled(spec: str, field: str, where: str = "fixed_20") -> float:
        return sum(r["boundaries"][where][spec][field] * r["probes"] for _, r in results) / total

    specs = list(results[0][1]["boundaries"]["fixed_20"])
    rows = [f"| {s} | {pooled(s, 'any'):.1f} / {pooled(s, 'all'):.1f} |" for s in specs]
    text = "\n".join(
        [
            f"Held-out LoCoMo (2-fold cross-validation: folds {folds[0]} and {folds[1]}; each scored by a controller",
            f"that never saw it; {total} probes), fixed_20, % with any / all evidence pages in context:",
            "",
            "| policy | fixed_20 |",
            "|---|---|",
            *rows,
        ]
    )
    return {"folds": folds, "fixed_20": {s: {"any": pooled(s, "any"), "all": pooled(s, "all")} for s in specs}, "text": text}


def add_arguments(p) -> None:
    defaults = TrainConfig()
    p.add_argument("--out", type=Path, default=Path("out/controller/controller.safetensors"), help="checkpoint to write (the model card and metrics go beside it)")
    p.add_argument("--work", type=Path, default=Path("out/controller/work"), help="recorded decisions and accelerate state per round, for --resume")
    p.add_argument("--resume", action="store_true", help="continue after the last finished round in --work")
    p.add_argument("--locomo", type=Path, help="LoCoMo-format training conversations (default: the dev split when present; 'none' to skip)")
    p.add_argument("--rounds", type=int, default=defaults.rounds, help=f"DAgger rounds (default {defaults.rounds})")
    p.add_argument("--epochs", type=int, default=defaults.epochs, help=f"epochs per round (default {defaults.epochs})")
    p.add_argument("--trace-seeds", type=int, default=defaults.trace_seeds, help=f"training traces per cache size (default {defaults.trace_seeds})")
    p.add_argument("--synthetic", type=int, default=defaults.synthetic, help=f"synthetic training conversations (default {defaults.synthetic})")
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of everything random in training (default 0)")
    p.add_argument("--workers", type=int, help="processes for the rollouts (default: every core, shared between accelerate's processes)")
    p.add_argument("--mixed-precision", default=defaults.mixed_precision, choices=["no", "fp16", "bf16"], help="accelerate mixed precision (default no)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation and model card after training")
    p.add_argument("--cross-validate", action="store_true", help="also train two LoCoMo folds and report held-out figures in the card")


def main(args) -> dict:
    from paged_context.sim.conversations import default_locomo_path

    from .evaluate import evaluate, model_card

    skip = args.locomo is not None and str(args.locomo).lower() == "none"
    locomo = None if skip else (args.locomo or default_locomo_path())
    cfg = TrainConfig(
        seed=args.seed,
        trace_seeds=args.trace_seeds,
        synthetic=args.synthetic,
        locomo=str(locomo) if locomo else None,
        rounds=args.rounds,
        epochs=args.epochs,
        mixed_precision=args.mixed_precision,
    )
    report = run(cfg, args.work, args.out, resume=args.resume, workers=args.workers)
    print(f"wrote {args.out} ({report['train_seconds']:.0f} s of training)")
    if args.no_eval:
        return report
    conversations = load_locomo(locomo) if locomo else None
    metrics = evaluate(args.out, conversations)
    crossval = crossvalidate(cfg, args.work / "crossval", conversations, args.workers) if args.cross_validate and conversations else None
    summary = {"train": report, "metrics": metrics, "crossval": crossval}
    (args.out.parent / "controller_metrics.json").write_text(json.dumps(summary, indent=2))
    card = model_card(metrics, report, args.out, crossval)
    (args.out.parent / "MODEL_CARD.md").write_text(card)
    print(card)
    return summary
