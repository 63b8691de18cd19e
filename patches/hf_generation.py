"""Hooks into transformers' `generate`: constrain a recall call's arguments once it has
begun, constrain a forced tool call to its JSON schema, add a logit bias, and pass the
text on as it is generated."""

from __future__ import annotations

import functools
import json
from typing import Callable, Collection

import torch
from transformers import LogitsProcessor
from transformers.generation.streamers import BaseStreamer

from paged_context.calls import CallGrammar, CallSyntax
from paged_context.answering import schema_refused


@functools.lru_cache(maxsize=4)
def _grammar(tokenizer, syntax: CallSyntax) -> CallGrammar:
    """Decodes every vocabulary entry once per tokenizer (a few seconds)."""
    return CallGrammar(syntax, tokenizer.batch_decode([[i] for i in range(len(tokenizer))]))


class RecallConstraint(LogitsProcessor):
    """Once a recall call has begun, only tokens that keep it a well-formed call naming
    distinct recallable pages are allowed: even a tiny model cannot write a bad call.
    `shared`: the client's tools open calls with the same marker, so only a call that
    names recall is constrained."""

    def __init__(self, tokenizer, syntax: CallSyntax, allowed: Collection[int], max_ids: int, prompt_length: int, shared: bool = False):
        self.tokenizer, self.prompt_length = tokenizer, prompt_length
        self.grammar = _grammar(tokenizer, syntax)
        self.allowed, self.max_ids, self.shared = set(allowed), max_ids, shared

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row in range(input_ids.shape[0]):
            generated = self.tokenizer.decode(input_ids[row, self.prompt_length :], skip_special_tokens=True)
            partial = self.grammar.partial(generated, self.shared)
            if partial is None:
                continue
            # nothing left to name: end here, and validation will say so
            keep = self.grammar.next_tokens(partial, self.allowed, self.max_ids) or [self.tokenizer.eos_token_id]
            mask = torch.full_like(scores[row], float("-inf"))
            mask[keep] = 0.0
            scores[row] = scores[row] + mask
        return scores


class LogitBias(LogitsProcessor):
    """OpenAI's logit_bias: a fixed amount added to the logits of chosen token ids."""

    def __init__(self, bias: dict[int, float]):
        self.ids = torch.tensor(list(bias), dtype=torch.long)
        self.values = torch.tensor(list(bias.values()), dtype=torch.float32)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores[:, self.ids.to(scores.device)] += self.values.to(scores.device, scores.dtype)
        return scores


@functools.lru_cache(maxsize=4)
def _compiler(tokenizer, vocab_size: int):
    import xgrammar

    return xgrammar.GrammarCompiler(xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size))


def schema_constraint(tokenizer, vocab_size: int, schema: dict) -> LogitsProcessor | None:
    """A processor that keeps the output valid JSON for `schema` (xgrammar, the library
    vLLM uses for structured outputs); None without xgrammar, and the model writes freely.
    A schema xgrammar cannot compile is the client's mistake (a BadRequest)."""
    try:
        from xgrammar.contrib.hf import LogitsProcessor as GrammarProcessor
    except ImportError:
        return None
    try:
        grammar = _compiler(tokenizer, vocab_size).compile_json_schema(json.dumps(schema), any_whitespace=False)
    except (RuntimeError, ValueError) as e:
        raise schema_refused(e) from None
    return GrammarProcessor(grammar)


class AnswerStream(BaseStreamer):
    """Passes the text generated so far to `on_text` each time it grows."""

    def __init__(self, tokenizer, on_text: Callable[[str], None]):
        self.tokenizer, self.on_text = tokenizer, on_text
        self.ids: list[int] = []
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() hands over the prompt first
            self.prompt_seen = True
            return
        self.ids += value.reshape(-1).tolist()
        self.on_text(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def end(self) -> None:
        pass
