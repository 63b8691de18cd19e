"""The vLLM engine: runs the rounds of `paged_context.answering` on vLLM's `AsyncLLM`.

Every round's prompt is rendered by the session (deterministic, so vLLM's prefix cache
finds the unchanged start) and sent as token ids; recall arguments are constrained by
our logits processor through `SamplingParams.extra_args`, and a forced tool call by
vLLM's structured outputs. Paging itself is the answering loop's.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Callable

from paged_context.answering import Generated, Round, schema_refused
from paged_context.messages import BadRequest
from paged_context.session import Message, PagedSession
from paged_context.templates import CallParser, ChatTemplate


class VLLMEngine:
    def __init__(self, client: Callable[[], object], tokenizer, window: int, parse_calls: CallParser | None = None):
        """`client` returns vLLM's engine client (AsyncLLM) when called. `parse_calls`:
        vLLM's tool parser for the model family (see `vllm_tool_parser.family_parser`)."""
        self.client, self.window = client, window
        self.template = ChatTemplate(tokenizer, parse_calls)

    def count_tokens(self, text: str) -> int:
        return self.template.count_tokens(text)

    def forget(self, session_id: str) -> None:
        """Nothing to drop: vLLM's prefix cache is shared, and evicts on its own."""

    async def complete(self, prompt: str, max_tokens: int) -> str:
        """A plain greedy answer to one user message (no paging): for keyword strategies."""
        from vllm import SamplingParams

        ids = self.template.encode([Message("user", prompt, "task")])
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, repetition_penalty=1.1)
        text = ""
        async for out in self.client().generate({"prompt_token_ids": ids}, params, request_id=f"paged-task-{uuid.uuid4().hex}"):
            text = out.outputs[0].text
        return text

    async def generate(self, round_: Round, session: PagedSession, on_text: Callable[[str], None] | None = None) -> Generated:
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import StructuredOutputsParams

        sampling, recall = round_.sampling, round_.recall
        extra = None
        if recall is not None:
            extra = {
                "paged_recall_syntax": recall.syntax,
                "paged_recall_allowed": list(recall.allowed),
                "paged_recall_max_ids": recall.max_ids,
                "paged_recall_shared": recall.shared,
            }
        params = SamplingParams(
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            logit_bias=dict(sampling.logit_bias) if sampling.logit_bias else None,
            repetition_penalty=sampling.repetition_penalty,
            stop=list(round_.stop) or None,
            include_stop_str_in_output=True,
            structured_outputs=StructuredOutputsParams(json=round_.schema, disable_any_whitespace=True) if round_.schema is not None else None,
            skip_special_tokens=self.template.syntax.name != "hermes",  # <tool_call> is a special token in some vocabularies
            extra_args=extra,
        )
        # salted per API key: sessions of one tenant share cached prefixes (the same
        # document, the same system prompt), and no timing side channel crosses tenants
        prompt = {"prompt_token_ids": round_.prompt, "cache_salt": hashlib.sha256(repr(session.owner).encode()).hexdigest()[:16]}
        text, cached, generated, truncated = "", 0, 0, False
        try:
            async for out in self.client().generate(prompt, params, request_id=f"paged-{uuid.uuid4().hex}"):
                completion = out.outputs[0]
                text, cached, generated = completion.text, out.num_cached_tokens or 0, len(completion.token_ids)
                truncated = completion.finish_reason == "length"
                if completion.finish_reason == "stop" and not isinstance(completion.stop_reason, str) and not params.skip_special_tokens:
                    text = self._without_end(text, completion.token_ids)
                if on_text is not None:
                    on_text(text)
        except (ValueError, VLLMClientError) as e:  # vLLM refused the request: the client's mistake
            if round_.schema is not None:
                raise schema_refused(e) from None
            raise BadRequest(str(e)) from None
        return Generated(text, generated, cached, truncated)

    def _without_end(self, text: str, token_ids) -> str:
        """`text` less the end-of-sequence token that stopped it: with special tokens kept
        (for `<tool_call>`), vLLM writes that token out too (`<|im_end|>`)."""
        tokenizer = self.template.tokenizer
        if not token_ids or token_ids[-1] not in tokenizer.all_special_ids:
            return text
        end = tokenizer.decode(token_ids[-1:], skip_special_tokens=False)
        return text[: -len(end)] if end and text.endswith(end) else text

