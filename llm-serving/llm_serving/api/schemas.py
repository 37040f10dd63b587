"""Request bodies of every route, validated by pydantic, and their translation to SamplingParams.

Validation is strict (no "3" for 3, no 3.0 for an integer, no NaN), except that booleans may be
the strings "True"/"False" (the contest judge sends them). A null value means "absent" (TGI and
OpenAI clients send nulls for unset options). Unknown fields are errors. Rules that depend on the
served model (top_k <= vocabulary size) read the validation context: `{"vocab_size": int}`.
Failures carry the rule text as the pydantic message (error type "rule"), which
`errors.from_validation_error` turns into a 400 naming the field.
"""
from __future__ import annotations

import secrets
from typing import Annotated, Any, Callable, List, Literal, Optional, Tuple, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator,
                      ValidationInfo, field_validator, model_validator)
from pydantic_core import PydanticCustomError

from ..messages import SamplingParams

MAX_STOPS = 4
SEED_LIMIT = 2 ** 63        # seeds are int64 on the model side


def _fail(rule: str) -> PydanticCustomError:
    return PydanticCustomError("rule", "{rule}", {"rule": rule})


def _rule(check: Callable[[Any], bool], rule: str) -> AfterValidator:
    def validate(value: Any) -> Any:
        if not check(value):
            raise _fail(rule)
        return value
    return AfterValidator(validate)


def _bool_string(value: Any) -> Any:
    # Only the exact spellings: "yes"/"1" would hide a client bug.
    return {"True": True, "true": True, "False": False, "false": False}.get(value, value) \
        if isinstance(value, str) else value


def _top_k(value: int, info: ValidationInfo) -> int:
    vocab = (info.context or {}).get("vocab_size")
    if value <= 0 or (vocab is not None and value > vocab):
        raise _fail(f"must satisfy 0 < top_k <= {vocab if vocab is not None else 'vocabulary size'}")
    return value


def _stops(value: Any) -> Tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise _fail(f"must be a non-empty string or a list of at most {MAX_STOPS} non-empty strings")
    return tuple(stops)


def _reject(value: Any) -> Any:
    raise _fail("not supported by this server: leave it out or null")


Bool = Annotated[bool, BeforeValidator(_bool_string)]
PositiveInt = Annotated[int, _rule(lambda v: v > 0, "must be an integer > 0")]
PositiveFloat = Annotated[float, _rule(lambda v: v > 0, "must be > 0")]
TopK = Annotated[int, AfterValidator(_top_k)]
TopP = Annotated[float, _rule(lambda v: 0 < v <= 1, "must satisfy 0 < top_p <= 1")]
Seed = Annotated[int, _rule(lambda v: 0 <= v < SEED_LIMIT, "must be an integer with 0 <= seed < 2**63")]
Stops = Annotated[Tuple[str, ...], PlainValidator(_stops)]
Unsupported = Annotated[Any, PlainValidator(_reject)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_absent(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


# ---- legacy (PROTOCOL.md §1) -----------------------------------------------------------------

class LegacyParameters(Body):
    do_sample: Bool = False
    top_k: TopK = 3
    top_p: TopP = 1.0
    temperature: Annotated[float, _rule(lambda v: v > 0, "must be > 0 (use do_sample=false for greedy)")] = 1.0
    repetition_penalty: PositiveFloat = 1.0
    max_new_tokens: PositiveInt = 300
    return_full_text: Bool = True
    seed: Seed = 0
    stop: Stops = ()
    # Text-generation-inference fields that clients send; accepted and without effect here.
    return_protocol: Optional[str] = None
    details: Optional[Bool] = None
    top_n_tokens: Optional[int] = None
    truncate: Optional[int] = None
    typical_p: Optional[float] = None
    watermark: Optional[Bool] = None
    decoder_input_details: Optional[Bool] = None

    def sampling_params(self) -> SamplingParams:
        if not self.do_sample:      # greedy: the sampling fields were validated but do not apply
            return SamplingParams(self.max_new_tokens, repetition_penalty=self.repetition_penalty,
                                  seed=self.seed)
        return SamplingParams(self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p, repetition_penalty=self.repetition_penalty, seed=self.seed)


class LegacyRequest(Body):
    inputs: str = ""        # empty or absent: Error203 after tokenisation, like the original
    parameters: LegacyParameters = Field(default_factory=LegacyParameters)
    stream: Bool = False


# ---- OpenAI-compatible -----------------------------------------------------------------------

class StreamOptions(Body):
    include_usage: Bool = False


class OpenAIRequest(Body):
    """Fields common to /v1/completions and /v1/chat/completions."""
    model: str
    max_tokens: PositiveInt = 16
    temperature: Annotated[float, _rule(lambda v: 0 <= v <= 2, "must satisfy 0 <= temperature <= 2 (0 = greedy)")] = 1.0
    top_p: TopP = 1.0
    seed: Optional[Seed] = None     # absent: a fresh random seed per request
    stop: Stops = ()
    n: Annotated[int, _rule(lambda v: v == 1, "must be 1 (one choice per request)")] = 1
    stream: Bool = False
    stream_options: Optional[StreamOptions] = None
    presence_penalty: Annotated[float, _rule(lambda v: v == 0, "must be 0 (not supported)")] = 0.0
    frequency_penalty: Annotated[float, _rule(lambda v: v == 0, "must be 0 (not supported)")] = 0.0
    logit_bias: Annotated[dict, _rule(lambda v: not v, "must be empty (not supported)")] = Field(default_factory=dict)
    user: Optional[str] = None      # accepted, ignored
    # Extensions (as in vLLM): the engine supports them, the OpenAI API has no field for them.
    top_k: Optional[TopK] = None
    repetition_penalty: PositiveFloat = 1.0

    @field_validator("stream_options")
    @classmethod
    def _options_need_stream(cls, value: StreamOptions, info: ValidationInfo) -> StreamOptions:
        if not info.data.get("stream"):
            raise _fail("only allowed when stream is true")
        return value

    @property
    def max_new_tokens(self) -> int:
        return self.max_tokens

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def sampling_params(self) -> SamplingParams:
        seed = self.seed if self.seed is not None else secrets.randbelow(SEED_LIMIT)
        if self.temperature == 0:
            return SamplingParams(self.max_new_tokens, repetition_penalty=self.repetition_penalty, seed=seed)
        return SamplingParams(self.max_new_tokens, temperature=self.temperature, top_k=self.top_k or 0,
                              top_p=self.top_p, repetition_penalty=self.repetition_penalty, seed=seed)


def _prompt(value: Any) -> Union[str, List[int]]:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        return value
    raise _fail("must be a string or a list of token ids (one prompt per request)")


class CompletionRequest(OpenAIRequest):
    prompt: Annotated[Union[str, List[int]], PlainValidator(_prompt)]
    echo: Annotated[Bool, _rule(lambda v: not v, "must be false (not supported)")] = False
    best_of: Annotated[int, _rule(lambda v: v == 1, "must be 1 (not supported)")] = 1
    logprobs: Unsupported = None
    suffix: Unsupported = None


def _content(value: Any) -> str:
    """A message's content: a string, or a list of text parts (joined)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                       and isinstance(p.get("text"), str) and len(p) == 2 for p in value):
        return "".join(p["text"] for p in value)
    raise _fail('must be a string or a list of {"type": "text", "text": <string>} parts')


class ChatMessage(Body):
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, PlainValidator(_content)]
    name: Optional[str] = None      # accepted, ignored (the Llama-2 template has no names)


class ChatCompletionRequest(OpenAIRequest):
    messages: Annotated[List[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Optional[PositiveInt] = None     # the newer name of max_tokens
    logprobs: Annotated[Bool, _rule(lambda v: not v, "must be false (not supported)")] = False
    top_logprobs: Unsupported = None

    @property
    def max_new_tokens(self) -> int:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
