"""OpenAI request bodies -> validated `ParsedRequest`s, and OpenAI error objects.

Contract:
- `parse_completion(body, limits)` and `parse_chat(body, limits)` take the decoded JSON body and
  return a `ParsedRequest` (the prompt or messages, a partial set of SamplingParams fields, the
  stream settings), or raise `ApiError` (a 4xx with `{"error": {message, type, param, code}}`)
  naming the field, the value and what is allowed. Nothing is silently ignored:
  * fields we implement: max_tokens (chat: also max_completion_tokens), temperature, top_p,
    top_k, min_p, seed, stop, stream, stream_options.include_usage, and vLLM's extras ignore_eos,
    min_tokens, stop_token_ids, return_token_ids and stream_options.continuous_usage_stats
    (with include_usage: every streamed chunk also carries `usage`, the prompt, completion and
    total tokens so far; GuideLLM sends it on every streaming request);
  * fields clients commonly send that are accepted only at their no-op value (`NOOP_FIELDS`:
    n=1, best_of=1, logprobs null/false, echo false, presence/frequency_penalty 0, logit_bias
    null/{}, user, ...); any other value is a 400 that says it is unsupported;
  * any other field is a 400 listing the supported names.
- `stream_options` without `stream` is accepted: a non-streaming response always has usage.
  `continuous_usage_stats: true` without `include_usage: true` is a 400 (vLLM ignores it there;
  we say so instead of sending no usage).
- Every text the server will tokenize (the prompt, each message's content, text part and name)
  and every stop string must be valid Unicode: JSON can carry a lone UTF-16 surrogate
  ("\ud800"), which no UTF-8 tokenizer can take; that is a 400 naming the field
  (`prompt`, `prompt[0]`, `messages[1].content`, `messages[0].content[2].text`, `stop[1]`).
- `max_tokens` is left None when unset: the server fills in the remaining context once it knows
  the prompt's length (`max_model_len - prompt tokens`), as OpenAI-compatible servers do.
- SamplingParams itself validates values (ranges, types); the server turns its ValueError into a
  400 whose `param` is the field the message starts with (`sampling_error`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from aisp.engine.sampling_params import SamplingParams

__all__ = ["ApiError", "ParsedRequest", "parse_chat", "parse_completion", "sampling_error"]


class ApiError(Exception):
    """An HTTP error in OpenAI's shape; `status` is the HTTP status code."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param, code)


@dataclass(frozen=True)
class ParsedRequest:
    """A validated completion or chat request (exactly one of `prompt` / `messages` is set)."""

    model: str | None
    prompt: str | tuple[int, ...] | None       # completions
    messages: tuple[dict[str, str], ...] | None  # chat: role/content (content flattened to str)
    sampling: dict[str, Any]     # SamplingParams fields the client set (max_tokens may be absent)
    stream: bool
    include_usage: bool
    return_token_ids: bool
    continuous_usage: bool = False   # usage in every streamed chunk (needs include_usage)


_SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop",
                    "ignore_eos", "min_tokens", "stop_token_ids")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _zero(x: object) -> bool:
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool) and x == 0)


# Field -> (accepts(value), what is supported). Values other than the no-op are refused.
NOOP_FIELDS: dict[str, tuple[Any, str]] = {
    "n": (lambda v: v is None or (_is_int(v) and v == 1), "n=1 only (one choice per request)"),
    "best_of": (lambda v: v is None or (_is_int(v) and v == 1), "best_of=1 only"),
    "logprobs": (lambda v: v is None or v is False, "logprobs are not supported (null or false)"),
    "top_logprobs": (lambda v: v is None or (_is_int(v) and v == 0), "top_logprobs are not "
                     "supported (null or 0)"),
    "echo": (lambda v: v is None or v is False, "echo is not supported (false)"),
    "presence_penalty": (_zero, "presence_penalty is not supported (0 only)"),
    "frequency_penalty": (_zero, "frequency_penalty is not supported (0 only)"),
    "repetition_penalty": (lambda v: v is None or (not isinstance(v, bool)
                                                   and isinstance(v, (int, float)) and v == 1),
                           "repetition_penalty is not supported (1 only)"),
    "logit_bias": (lambda v: v is None or v == {}, "logit_bias is not supported (null or {})"),
    "user": (lambda v: v is None or isinstance(v, str), "user must be a string"),
    "suffix": (lambda v: v is None or v == "", "suffix is not supported (null or \"\")"),
    "tools": (lambda v: v is None or v == [], "tools are not supported (null or [])"),
    "tool_choice": (lambda v: v in (None, "none", "auto"), "tool_choice must be null, \"none\" "
                    "or \"auto\" (no tools are supported)"),
    "parallel_tool_calls": (lambda v: v is None or isinstance(v, bool), "a boolean"),
    "response_format": (lambda v: v is None or v == {"type": "text"},
                        "response_format must be null or {\"type\": \"text\"}"),
    "skip_special_tokens": (lambda v: v is None or v is True, "skip_special_tokens=true only"),
    "include_stop_str_in_output": (lambda v: v is None or v is False,
                                   "include_stop_str_in_output=false only"),
}
_COMPLETION_ONLY = {"prompt", "echo", "suffix", "best_of"}
_CHAT_ONLY = {"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice",
              "parallel_tool_calls", "response_format"}
_COMMON = {"model", "stream", "stream_options", "return_token_ids", *_SAMPLING_FIELDS}
COMPLETION_FIELDS = sorted(_COMMON | _COMPLETION_ONLY | (set(NOOP_FIELDS) - _CHAT_ONLY))
CHAT_FIELDS = sorted(_COMMON | _CHAT_ONLY | (set(NOOP_FIELDS) - _COMPLETION_ONLY))


def _check_fields(body: Any, allowed: list[str], endpoint: str) -> None:
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, not {type(body).__name__}")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise bad_request(f"unknown field(s) {unknown} for {endpoint}; supported fields are "
                          f"{allowed}", param=unknown[0])
    for name, (ok, what) in NOOP_FIELDS.items():
        if name in body and not ok(body[name]):
            raise bad_request(f"{name}={body[name]!r} is not supported: {what}", param=name,
                              code="unsupported_value")


@dataclass(frozen=True)
class _Common:
    sampling: dict[str, Any]
    stream: bool
    include_usage: bool
    continuous_usage: bool
    return_token_ids: bool


_STREAM_OPTIONS = ("include_usage", "continuous_usage_stats")


def _common(body: dict[str, Any]) -> _Common:
    sampling = {k: body[k] for k in _SAMPLING_FIELDS if body.get(k) is not None}
    stop = sampling.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            sampling["stop"] = (_text(stop, "stop"),)
        elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
            sampling["stop"] = tuple(_text(s, f"stop[{i}]") for i, s in enumerate(stop))
        else:
            raise bad_request(f"stop is {stop!r}; it must be a string, a list of strings or null",
                              param="stop")
    if "stop_token_ids" in sampling:
        ids = sampling["stop_token_ids"]
        if not isinstance(ids, list) or not all(_is_int(t) for t in ids):
            raise bad_request(f"stop_token_ids is {ids!r}; it must be a list of integers",
                              param="stop_token_ids")
    stream = _bool(body, "stream")
    options = body.get("stream_options")
    include_usage = continuous = False
    if options is not None:
        if not isinstance(options, dict) or set(options) - set(_STREAM_OPTIONS):
            raise bad_request(f"stream_options is {_short(options)}; it must be an object with "
                              f"the boolean options {list(_STREAM_OPTIONS)}",
                              param="stream_options")
        include_usage = _bool(options, "include_usage", "stream_options.include_usage")
        continuous = _bool(options, "continuous_usage_stats",
                           "stream_options.continuous_usage_stats")
        if continuous and not include_usage:
            raise bad_request("stream_options.continuous_usage_stats is true but include_usage "
                              "is not: usage is sent only with include_usage; set both to true "
                              "for usage in every chunk", param="stream_options")
    return _Common(sampling, stream, include_usage, continuous and stream,
                   _bool(body, "return_token_ids"))


def _bool(body: dict[str, Any], name: str, param: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"{param or name} is {value!r}; it must be true or false",
                          param=param or name)
    return value


def _text(text: str, param: str) -> str:
    """`text` if it is valid Unicode (encodable as UTF-8), else a 400 naming `param`."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise bad_request(f"{param} holds the lone UTF-16 surrogate {text[e.start]!r} at "
                          f"character {e.start:,}, which is not valid Unicode text and cannot be "
                          f"tokenized; send valid text (a surrogate must be half of a pair, as in "
                          f"\"\\ud83d\\ude00\")", param=param, code="invalid_text") from None
    return text


def _model(body: dict[str, Any]) -> str | None:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request(f"model is {model!r}; it must be a string", param="model")
    return model


def parse_completion(body: Any) -> ParsedRequest:
    """/v1/completions: prompt is a string, token ids, or a one-element list of either."""
    _check_fields(body, COMPLETION_FIELDS, "/v1/completions")
    if "prompt" not in body or body["prompt"] is None:
        raise bad_request("prompt is missing; send a string or a list of token ids",
                          param="prompt")
    prompt, param = body["prompt"], "prompt"
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt, param = prompt[0], "prompt[0]"   # a batch of one
    if isinstance(prompt, str):
        _text(prompt, param)
    elif isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        prompt = tuple(prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        raise bad_request(f"prompt is a batch of {len(prompt)} prompts; send one prompt per "
                          f"request", param="prompt", code="unsupported_value")
    else:
        raise bad_request(f"prompt is {_short(prompt)}; it must be a string, a non-empty list of "
                          f"integer token ids, or a list holding exactly one of those",
                          param="prompt")
    c = _common(body)
    return ParsedRequest(_model(body), prompt, None, c.sampling, c.stream, c.include_usage,
                         c.return_token_ids, c.continuous_usage)


def parse_chat(body: Any) -> ParsedRequest:
    """/v1/chat/completions: messages with string (or text-part) content."""
    _check_fields(body, CHAT_FIELDS, "/v1/chat/completions")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request(f"messages is {_short(messages)}; it must be a non-empty list of "
                          f"{{\"role\", \"content\"}} objects", param="messages")
    parsed = tuple(_message(i, m) for i, m in enumerate(messages))
    c = _common(body)
    sampling = c.sampling
    mct = body.get("max_completion_tokens")
    if mct is not None:
        if "max_tokens" in sampling and sampling["max_tokens"] != mct:
            raise bad_request(f"max_tokens ({sampling['max_tokens']!r}) and max_completion_tokens "
                              f"({mct!r}) disagree; send one of them",
                              param="max_completion_tokens")
        sampling["max_tokens"] = mct
    return ParsedRequest(_model(body), None, parsed, sampling, c.stream, c.include_usage,
                         c.return_token_ids, c.continuous_usage)


def _message(i: int, m: Any) -> dict[str, str]:
    param = f"messages[{i}]"
    if not isinstance(m, dict):
        raise bad_request(f"{param} is {_short(m)}; it must be an object with role and content",
                          param=param)
    extra = sorted(set(m) - {"role", "content", "name"})
    if extra:
        raise bad_request(f"{param} has unsupported key(s) {extra}; supported keys are role, "
                          f"content and name (no tool calls)", param=param)
    role = m.get("role")
    if role not in ("system", "developer", "user", "assistant"):
        raise bad_request(f"{param}.role is {role!r}; it must be system, developer, user or "
                          f"assistant", param=f"{param}.role")
    content = m.get("content")
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise bad_request(f"{param}.content has the part {_short(part)}; only "
                                  f"{{\"type\": \"text\", \"text\": ...}} parts are supported",
                                  param=f"{param}.content")
            parts.append(_text(part["text"], f"{param}.content[{j}].text"))
        content = "".join(parts)
    if not isinstance(content, str):
        raise bad_request(f"{param}.content is {_short(content)}; it must be a string or a list "
                          f"of text parts", param=f"{param}.content")
    out = {"role": role, "content": _text(content, f"{param}.content")}
    if m.get("name") is not None:
        if not isinstance(m["name"], str):
            raise bad_request(f"{param}.name must be a string", param=f"{param}.name")
        out["name"] = _text(m["name"], f"{param}.name")
    return out


def sampling_error(error: ValueError) -> ApiError:
    """A SamplingParams ValueError as a 400; its message starts with the offending field."""
    message = str(error)
    names = [f.name for f in dataclasses.fields(SamplingParams)]
    param = next((n for n in names if message.startswith(n + " ")), None)
    return bad_request(message, param=param)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
