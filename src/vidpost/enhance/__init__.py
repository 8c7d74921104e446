"""Prompt enhancement: a language model rewrites a user's prompt before the video model sees it.

    config      EnhancerConfig: backend (toy | hf | openai), model path or endpoint, instruction, decoding, checks
    base        the Enhancer interface (`rewrite`), the check of every rewrite and the fallback counters
    instruction the system prompt and worked examples given to chat models (Wan's prompt-extender recipe)
    toy         a tiny Qwen2 with a ShapeWorld word-level tokenizer: save/load, batched decoding with log-probs
    hf          any local transformers causal LM directory
    intent      what a ShapeWorld prompt states, and the check that a rewrite keeps it
    lm          decoding with log-probs and teacher-forced log-probs over a TextFormat (shared by training)
    chat        a chat LM trained as the enhancer: its chat template as a TextFormat, LoRA, the saved folder
    pairs       SFT pairs and GRPO requests: ShapeWorld's or a JSONL file
    trainable   the model section of `vidpost enhance train` (toy or model.path) and the LM it builds
    client      any OpenAI-compatible chat endpoint, through the `openai` client
    server      any enhancer as an OpenAI-compatible endpoint (`vidpost enhance serve`)
    resolve     `--enhancer NAME_OR_DIR` -> an enhancer

Training an enhancer (the toy, or any local chat LM) is `recipes/enhance.py` (`vidpost enhance train`).
"""
