"""Constrained recall arguments on vLLM (the v1 engine's batch-level logits-processor
interface, which the CPU build and MRv1 GPU runs use).

A request opts in through its sampling parameters,

    SamplingParams(extra_args={"paged_recall_syntax": "plain", "paged_recall_allowed": [3, 7], "paged_recall_max_ids": 8})

(from the OpenAI API: `"vllm_xargs"` with the same flat keys, since vLLM takes no nested
values there; our server sets them). Once the request's output holds an open recall
call, only tokens that keep it a well-formed call naming distinct allowed pages survive;
with nothing left to name, only end of sequence does. `"paged_recall_shared": true`
says the client's own tools open calls with the same marker (Hermes `<tool_call>`), so
only a call that names recall is constrained. Requests without the keys are untouched.

Load it with `--logits-processors paged_context.patches.vllm_logits:RecallLogitsProcessor`
(or `LLM(..., logits_processors=[RecallLogitsProcessor])`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from paged_context.calls import HERMES, PLAIN, CallGrammar

KEY = "paged_recall_"  # prefix of the extra_args keys: syntax, allowed, max_ids
SYNTAXES = {"plain": PLAIN, "hermes": HERMES}


@dataclass
class _Request:
    grammar: CallGrammar
    allowed: frozenset[int]
    max_ids: int
    shared: bool
    output: list[int]  # vLLM's live list of generated ids
    text: str = ""
    decoded: int = 0  # how many of `output` are in `text`

    def generated(self, token_texts: list[str]) -> str:
        # Token texts concatenate to the decoded text for byte-level vocabularies; a call
        # is ASCII, so the rare multi-byte split before it cannot move the marker.
        if self.decoded < len(self.output):
            self.text += "".join(token_texts[i] for i in self.output[self.decoded :] if i < len(token_texts))
            self.decoded = len(self.output)
        return self.text


def parse_options(extra_args: dict | None) -> tuple[str, frozenset[int], int, bool] | None:
    """The request's recall options, or None when it did not ask for the constraint (no
    `paged_recall_syntax`). Raises ValueError (HTTP 400 at admission) when malformed."""
    extra_args = extra_args or {}
    syntax = extra_args.get(KEY + "syntax")
    if syntax is None:
        return None
    if syntax not in SYNTAXES:
        raise ValueError(f"{KEY}syntax must be one of {sorted(SYNTAXES)}, got {syntax!r}")
    allowed = extra_args.get(KEY + "allowed", [])
    allowed = [allowed] if isinstance(allowed, int) and not isinstance(allowed, bool) else allowed
    if not isinstance(allowed, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in allowed):
        raise ValueError(f"{KEY}allowed must be a list of page ids (non-negative integers), got {allowed!r}")
    max_ids = extra_args.get(KEY + "max_ids", 8)
    if not isinstance(max_ids, int) or isinstance(max_ids, bool) or max_ids < 1:
        raise ValueError(f"{KEY}max_ids must be a positive integer, got {max_ids!r}")
    shared = extra_args.get(KEY + "shared", False)
    if not isinstance(shared, bool):
        raise ValueError(f"{KEY}shared must be true or false, got {shared!r}")
    return syntax, frozenset(allowed), max_ids, shared


class RecallLogitsProcessor(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params) -> None:
        parse_options(sampling_params.extra_args)

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        from transformers import AutoTokenizer

        model = vllm_config.model_config
        tokenizer = AutoTokenizer.from_pretrained(model.tokenizer, trust_remote_code=model.trust_remote_code)
        self.eos = tokenizer.eos_token_id
        self.token_texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        self.grammars: dict[str, CallGrammar] = {}  # built on first use, per syntax
        self.requests: dict[int, _Request] = {}

    def is_argmax_invariant(self) -> bool:
        return False  # it changes what greedy decoding picks

    def _new_request(self, params, prompt_ids, output_ids) -> _Request | None:
        options = parse_options(params.extra_args)
        if options is None:
            return None
        syntax, allowed, max_ids, shared = options
        if syntax not in self.grammars:
            self.grammars[syntax] = CallGrammar(SYNTAXES[syntax], self.token_texts)
        return _Request(self.grammars[syntax], allowed, max_ids, shared, output_ids)

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.requests, batch_update, self._new_request)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for row, request in self.requests.items():
            if row >= logits.shape[0]:
                continue
            partial = request.grammar.partial(request.generated(self.token_texts), request.shared)
            if partial is None:
                continue
            keep = request.grammar.next_tokens(partial, request.allowed, request.max_ids) or [self.eos]
            keep = [i for i in keep if i < logits.shape[1]]
            masked = torch.full_like(logits[row], float("-inf"))
            masked[keep] = logits[row, keep]
            logits[row] = masked
        return logits
