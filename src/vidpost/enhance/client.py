"""The openai enhancer: any OpenAI-compatible chat endpoint (vLLM, SGLang, llama.cpp server, hosted APIs,
`vidpost enhance serve`) through the official `openai` client.

    backend: openai
    openai:
      base_url: http://gpu-box:8000/v1
      model: Qwen/Qwen2.5-7B-Instruct       # null: the first model the server lists
      api_key_env: OPENAI_API_KEY           # the key is read from this variable, never from a file
      timeout_s: 60
      retries: 2

Each prompt is one chat request (system prompt and worked examples from `instruction.py`), up to
`generation.batch_size` of them in flight at once. A request that still fails after `retries` retries (the
client's own exponential backoff) or times out leaves its prompt unchanged, with one warning per batch naming
the error; nothing ever raises for a server that is down. The key lives only inside the client object: it
is not an attribute of the enhancer, not in its config, and not logged. A variable that is unset sends the
placeholder key "EMPTY", as local servers expect.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import openai
from openai.types.chat import ChatCompletionMessageParam

from vidpost.enhance.base import Enhancer
from vidpost.enhance.config import EnhancerConfig, OpenAIConfig
from vidpost.enhance.instruction import chat_messages
from vidpost.errors import first_line

log = logging.getLogger("vidpost")

NO_KEY = "EMPTY"


def _reason(err: Exception) -> str:
    return f"{type(err).__name__}: {first_line(err)}"


def _message(message: dict[str, str]) -> ChatCompletionMessageParam:
    """One of `chat_messages`' messages as the openai client's type (the same dict)."""
    role, content = message["role"], message["content"]
    if role == "system":
        return {"role": "system", "content": content}
    if role == "assistant":
        return {"role": "assistant", "content": content}
    if role == "user":
        return {"role": "user", "content": content}
    raise ValueError(f"unknown chat role {role!r}")


class OpenAIEnhancer(Enhancer):
    def __init__(self, cfg: EnhancerConfig, name: str) -> None:
        super().__init__(cfg, name)
        assert cfg.openai is not None  # EnhancerConfig requires the openai section for this backend
        o: OpenAIConfig = cfg.openai
        self.endpoint = o
        key = os.environ.get(o.api_key_env) or None
        if key is not None and not o.send_api_key:
            log.warning(
                "enhancer %s: not sending $%s to %s (plain http to another host; name the endpoint in an "
                "enhancer config to send it)",
                name,
                o.api_key_env,
                o.base_url,
            )
            key = None
        elif key is None:
            log.info("enhancer %s: $%s is not set; sending no API key", name, o.api_key_env)
        self._client = openai.OpenAI(
            base_url=o.base_url, api_key=key or NO_KEY, timeout=o.timeout_s, max_retries=o.retries
        )
        self.model_name = o.model

    def _resolve_model(self) -> str:
        if self.model_name is None:
            listed = self._client.models.list().data
            if not listed:
                raise openai.OpenAIError(f"{self.endpoint.base_url} lists no models; set openai.model")
            self.model_name = listed[0].id
        return self.model_name

    def _one(self, model: str, prompt: str) -> str | Exception:
        g = self.cfg.generation
        try:
            reply = self._client.chat.completions.create(
                model=model,
                messages=[_message(m) for m in chat_messages(prompt, self.cfg.instruction)],
                max_tokens=g.max_new_tokens,
                temperature=g.temperature,
                top_p=g.top_p,
                seed=g.seed,
            )
        except openai.OpenAIError as err:  # connection refused, timeout, 4xx/5xx after retries, bad reply
            return err
        if not reply.choices:
            return openai.OpenAIError("the reply holds no choices")
        return reply.choices[0].message.content or ""

    def generate(self, prompts: list[str]) -> list[str | None]:
        try:
            model = self._resolve_model()
        except openai.OpenAIError as err:
            results: list[str | Exception] = [err] * len(prompts)
        else:
            with ThreadPoolExecutor(max_workers=min(self.cfg.generation.batch_size, len(prompts))) as pool:
                results = list(pool.map(partial(self._one, model), prompts))
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            attempts = self.endpoint.retries + 1
            log.warning(
                "enhancer %s: %d of %d requests to %s failed after %d attempt%s (%s); keeping those prompts",
                self.name,
                len(errors),
                len(prompts),
                self.endpoint.base_url,
                attempts,
                "s" * (attempts > 1),
                _reason(errors[0]),
            )
        return [None if isinstance(r, Exception) else r for r in results]
