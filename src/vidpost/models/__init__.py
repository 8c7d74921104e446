"""Video models behind one small interface (encode prompts, velocity, encode/decode video, train, save/load).

- `wan`: `WanVideoModel`, the diffusers Wan family, from a local checkpoint or built tiny from a config.
- `codecs`: `PixelCodec` (ShapeWorld, pixel space) and `WanVAECodec` (Wan VAE latents).
- `text`: the offline ShapeWorld tokenizer and a tiny UMT5 text encoder.
- `config`: `ModelConfig`.

Nothing is re-exported here: `wan`, `codecs` and `text` import diffusers/transformers (seconds), and code that
only reads a `ModelConfig` should not pay for that.
"""
