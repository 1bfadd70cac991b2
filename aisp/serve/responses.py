"""The one code path from engine deltas to OpenAI responses (STYLE.md #19).

Contract:
- `chunks(stream, fmt)` turns a request's `RequestOutput` deltas (text included: the engine
  client's front end detokenizes and applies stop strings) into OpenAI chunk
  dicts: exactly one chunk per engine delta (one token per decode step, so a streaming client's
  gaps between chunks are inter-token latencies), the last one carrying `finish_reason` (and
  vLLM's `stop_reason`: the stop string, the stop token id, or null for eos/length), then one
  usage chunk (`choices: []`).
- Streaming sends those chunks as SSE (the usage chunk only with stream_options.include_usage);
  the non-streaming response is `fold(fmt, chunks)`, the same sequence folded, so text, usage and
  finish_reason of the two modes cannot diverge.
- Shapes: completions `text_completion` chunks with `choices[0].text`; chat
  `chat.completion.chunk` with `choices[0].delta.content`, the first chunk also carrying
  `delta.role = "assistant"`. The role rides on the first token's chunk instead of a chunk of its
  own before any token, so a client's time to the first chunk is its time to the first token.
- With `continuous_usage` (vLLM's stream_options.continuous_usage_stats) every chunk also
  carries `usage`: the prompt tokens, the output tokens so far (this chunk's included) and their
  total; the final usage-only chunk still follows.
- With `return_token_ids` (vLLM's extra) each chunk's choice carries its `token_ids` and the
  first one `prompt_token_ids`; the fold concatenates them.
- No tokenizer (a weights-only model): text stays "" and token ids are the output.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from aisp.engine.client import RequestStream

__all__ = ["ResponseFormat", "chunks", "fold"]


@dataclass(frozen=True)
class ResponseFormat:
    """Which endpoint's shapes to produce, and the response's identity."""

    chat: bool
    response_id: str
    created: int
    model: str
    prompt_token_ids: tuple[int, ...]
    return_token_ids: bool = False
    continuous_usage: bool = False

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self.response_id, "object": obj, "created": self.created,
                "model": self.model, "choices": choices}

    def chunk(self, text: str, token_ids: tuple[int, ...], first: bool,
              finish_reason: str | None, stop_reason: int | str | None,
              num_output_tokens: int) -> dict[str, Any]:
        """One choice chunk; `num_output_tokens` counts the request's tokens so far."""
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["delta"] = {"role": "assistant", "content": text} if first else {"content": text}
        else:
            choice["text"] = text
        choice.update(logprobs=None, finish_reason=finish_reason, stop_reason=stop_reason)
        if self.return_token_ids:
            choice["token_ids"] = list(token_ids)
            if first:
                choice["prompt_token_ids"] = list(self.prompt_token_ids)
        chunk = self._envelope([choice])
        if self.continuous_usage:
            chunk["usage"] = self.usage(num_output_tokens)
        return chunk

    def usage(self, num_output_tokens: int) -> dict[str, int]:
        n = len(self.prompt_token_ids)
        return {"prompt_tokens": n, "completion_tokens": num_output_tokens,
                "total_tokens": n + num_output_tokens}

    def usage_chunk(self, num_output_tokens: int) -> dict[str, Any]:
        chunk = self._envelope([])
        chunk["usage"] = self.usage(num_output_tokens)
        return chunk


async def chunks(stream: RequestStream, fmt: ResponseFormat) -> AsyncIterator[dict[str, Any]]:
    """One chunk per engine delta, then the usage chunk (see the module docstring)."""
    num_output_tokens = 0
    first = True
    async for out in stream:
        num_output_tokens += len(out.new_token_ids)
        if out.finished:
            assert num_output_tokens == len(out.output_token_ids), "deltas add up to the output"
        yield fmt.chunk(out.text_delta, out.new_token_ids, first,
                        out.finish_reason if out.finished else None,
                        out.stop_reason if out.finished else None, num_output_tokens)
        first = False
    yield fmt.usage_chunk(num_output_tokens)


def fold(fmt: ResponseFormat, sequence: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The non-streaming response: the chunk sequence folded into one object."""
    texts: list[str] = []
    token_ids: list[int] = []
    finish_reason = stop_reason = usage = None
    for chunk in sequence:
        if not chunk["choices"]:   # the final usage chunk (not a per-chunk running count)
            usage = chunk["usage"]
        for choice in chunk["choices"]:
            texts.append(choice["delta"]["content"] if fmt.chat else choice["text"])
            token_ids.extend(choice.get("token_ids", ()))
            finish_reason, stop_reason = choice["finish_reason"], choice["stop_reason"]
    text = "".join(texts)
    choice: dict[str, Any] = {"index": 0}
    if fmt.chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    choice.update(logprobs=None, finish_reason=finish_reason, stop_reason=stop_reason)
    if fmt.return_token_ids:
        choice["token_ids"] = token_ids
        choice["prompt_token_ids"] = list(fmt.prompt_token_ids)
    return {"id": fmt.response_id, "object": "chat.completion" if fmt.chat else "text_completion",
            "created": fmt.created, "model": fmt.model, "choices": [choice], "usage": usage}
