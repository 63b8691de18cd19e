"""Hooks into transformers' `generate` for recall calls: stop when a call is complete,
constrain a call's arguments once it has begun, and stream the answer without ever
showing a call."""

from __future__ import annotations

import functools
from typing import Callable, Collection

import torch
from transformers import LogitsProcessor, StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from paged_context.calls import CallGrammar, CallSyntax, visible_end


@functools.lru_cache(maxsize=4)
def _grammar(tokenizer, syntax: CallSyntax) -> CallGrammar:
    """Decodes every vocabulary entry once per tokenizer (a few seconds)."""
    return CallGrammar(syntax, tokenizer.batch_decode([[i] for i in range(len(tokenizer))]))


class _Generated:
    """Decodes what a row has generated so far (everything after the prompt)."""

    def __init__(self, tokenizer, prompt_length: int):
        self.tokenizer, self.prompt_length = tokenizer, prompt_length

    def text(self, input_ids: torch.LongTensor, row: int) -> str:
        return self.tokenizer.decode(input_ids[row, self.prompt_length :], skip_special_tokens=True)


class RecallConstraint(LogitsProcessor, _Generated):
    """Once a recall call has begun, only tokens that keep it a well-formed call naming
    distinct recallable pages are allowed: even a tiny model cannot write a bad call."""

    def __init__(self, tokenizer, syntax: CallSyntax, allowed: Collection[int], max_ids: int, prompt_length: int):
        _Generated.__init__(self, tokenizer, prompt_length)
        self.grammar = _grammar(tokenizer, syntax)
        self.allowed, self.max_ids = set(allowed), max_ids

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row in range(input_ids.shape[0]):
            partial = self.grammar.partial(self.text(input_ids, row))
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


class RecallStop(StoppingCriteria, _Generated):
    """Stops a row as soon as it holds a closed recall call."""

    def __init__(self, tokenizer, syntax: CallSyntax, prompt_length: int):
        _Generated.__init__(self, tokenizer, prompt_length)
        self.syntax = syntax

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = []
        for row in range(input_ids.shape[0]):
            text = self.text(input_ids, row)
            start = text.find(self.syntax.marker)
            done.append(start >= 0 and text.find(self.syntax.close, start + len(self.syntax.marker)) >= 0)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class AnswerStream(BaseStreamer):
    """Passes generated text to `on_text` as it comes, holding back anything that could be
    the start of a recall call and everything from a call on."""

    def __init__(self, tokenizer, syntax: CallSyntax, on_text: Callable[[str], None]):
        self.tokenizer, self.syntax, self.on_text = tokenizer, syntax, on_text
        self.ids: list[int] = []
        self.sent = 0
        self.prompt_seen = False

    def _emit(self, final: bool) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        start = self.syntax.find(text)
        safe = start[0] if start else len(text) if final else visible_end(text, [self.syntax])
        if safe > self.sent:
            self.on_text(text[self.sent : safe])
            self.sent = safe

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() hands over the prompt first
            self.prompt_seen = True
            return
        self.ids += value.reshape(-1).tolist()
        self._emit(final=False)

    def end(self) -> None:
        self._emit(final=True)
