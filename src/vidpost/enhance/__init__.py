"""Prompt enhancement: a language model rewrites a user's prompt before the video model sees it.

    config      EnhancerConfig: backend (toy | hf | openai), model path or endpoint, instruction, decoding, checks
    base        the Enhancer interface (`rewrite`), the check of every rewrite and the fallback counters
    instruction the system prompt and worked examples given to chat models (Wan's prompt-extender recipe)
    toy         a tiny Qwen2 with a ShapeWorld word-level tokenizer: save/load, batched decoding with log-probs
    hf          any local transformers causal LM directory
    client      any OpenAI-compatible chat endpoint, through the `openai` client
    server      any enhancer as an OpenAI-compatible endpoint (`vidpost enhance serve`)
    resolve     `--enhancer NAME_OR_DIR` -> an enhancer

Training the toy enhancer is `recipes/enhance.py` (`vidpost enhance train`).
"""
