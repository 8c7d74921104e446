"""generate: a video that comes out non-finite is written black and counted."""


def test_a_non_finite_video_is_written_black_and_counted(monkeypatch):
    from vidpost.diffusion.config import SamplingConfig, VideoConfig
    from vidpost.generation import generate
    from vidpost.models.wan import WanVideoModel

    model = WanVideoModel.build_tiny("pixel", patch_size=(1, 4, 4))
    real_decode = model.decode

    def decode(latents):  # the second video of each batch diverged
        frames = real_decode(latents)
        frames[1] = float("nan")
        return frames

    monkeypatch.setattr(model, "decode", decode)
    out = generate(
        model,
        ["a red circle", "a blue square", "a green triangle"],
        SamplingConfig(steps=2, guidance=1.0),
        VideoConfig(frames=3, height=16, width=16),
        progress=False,
    )
    assert out.nonfinite == 1 and out.videos.shape[0] == 3
    assert (out.videos[1] == 0).all() and out.videos[0].any()
