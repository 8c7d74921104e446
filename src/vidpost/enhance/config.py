"""Config of a prompt enhancer: which backend, where its model is, how it is prompted, how rewrites are checked.

    backend: hf                       # toy | hf | openai
    path: models/Qwen2.5-1.5B-Instruct
    instruction: {words: 80, language: English}
    generation: {max_new_tokens: 200, temperature: 0.0}

    backend: openai
    openai: {base_url: http://gpu-box:8000/v1, model: Qwen/Qwen2.5-7B-Instruct, api_key_env: OPENAI_API_KEY}

The API key is never part of a config: `openai.api_key_env` names the environment variable that holds it, so a
saved config (or a log of one) cannot leak it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vidpost.config import Config

BACKENDS = ("toy", "hf", "openai")


class InstructionConfig(Config):
    words: int = Field(80, ge=5, description="word budget the system prompt asks the rewrite to stay near (hf, openai)")
    language: str = Field("English", min_length=1, description="language the rewrite is written in (hf, openai)")
    few_shot: bool = Field(True, description="show the built-in worked examples before the prompt (hf, openai)")
    system_prompt: str | None = Field(
        None, description="replace the built-in system prompt entirely (hf, openai); null: the built-in one"
    )


class GenerationConfig(Config):
    max_new_tokens: int = Field(200, ge=1, description="most tokens generated per rewrite")
    temperature: float = Field(0.0, ge=0, description="sampling temperature; 0 = greedy (deterministic)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass (only when temperature > 0)")
    seed: int = Field(0, description="seed of the sampling generator (local backends; sent to servers that accept it)")
    batch_size: int = Field(16, ge=1, description="prompts per forward batch (local) or concurrent requests (openai)")


class CheckConfig(Config):
    max_words: int = Field(250, ge=1, description="a rewrite with more words than this falls back to the prompt")
    shapeworld: bool | None = Field(
        None, description="a rewrite must parse as a canonical ShapeWorld caption; null: on for toy, off otherwise"
    )
    intent: bool | None = Field(
        None,
        description="a rewrite must keep everything the ShapeWorld prompt states (enhance/intent.py), and "
        "the toy reads the prompt in its training words; null: on where shapeworld is",
    )


class OpenAIConfig(Config):
    base_url: str = Field(..., description="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    model: str | None = Field(None, description="model name sent with each request; null: the first the server lists")
    api_key_env: str = Field(
        "OPENAI_API_KEY", min_length=1, description="environment variable holding the API key (the key is never saved)"
    )
    send_api_key: bool = Field(
        True,
        description="send the key of api_key_env (a bare http:// URL given on the command line sends none "
        "unless it is this machine: the key would cross the network in clear text to a host no config named)",
    )
    timeout_s: float = Field(60.0, gt=0, description="seconds to wait for one reply before retrying")
    retries: int = Field(2, ge=0, description="retries of a failed request (with backoff) before falling back")

    @model_validator(mode="after")
    def _http(self) -> OpenAIConfig:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {self.base_url!r} must start with http:// or https://")
        return self


class EnhancerConfig(Config):
    backend: Literal[BACKENDS] = Field(  # type: ignore[valid-type]  # Literal of a tuple: pydantic reads it
        ..., description="toy (ShapeWorld LM) | hf (local causal LM) | openai (server)"
    )
    path: str | None = Field(None, description="model directory of the toy and hf backends")
    openai: OpenAIConfig | None = Field(None, description="the endpoint of the openai backend")
    instruction: InstructionConfig = Field(default_factory=InstructionConfig, description="the chat system prompt")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="decoding")
    check: CheckConfig = Field(default_factory=CheckConfig, description="validation of every rewrite")

    @model_validator(mode="after")
    def _backend_fields(self) -> EnhancerConfig:
        local = self.backend in ("toy", "hf")
        if local and self.path is None:
            raise ValueError(f"backend {self.backend} needs path (a model directory)")
        if local and self.openai is not None:
            raise ValueError(f"backend {self.backend} takes no openai section (that is the openai backend's)")
        if self.backend == "openai" and (self.openai is None or self.path is not None):
            raise ValueError("backend openai needs an openai section (base_url, model) and no path")
        return self

    @property
    def checks_shapeworld(self) -> bool:
        """Whether rewrites must be canonical ShapeWorld captions (check.shapeworld, defaulting per backend)."""
        return self.backend == "toy" if self.check.shapeworld is None else self.check.shapeworld

    @property
    def checks_intent(self) -> bool:
        """Whether rewrites must keep what the prompt states (check.intent, defaulting to checks_shapeworld)."""
        return self.checks_shapeworld if self.check.intent is None else self.check.intent
