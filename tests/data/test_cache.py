"""The encoded-dataset cache: reused while the dataset is unchanged, rebuilt when a clip changes in place."""

import numpy as np

from vidpost.data.cache import load_or_build_cache
from vidpost.data.dataset import DatasetWriter
from vidpost.models.wan import WanVideoModel


def test_a_clip_replaced_in_place_rebuilds_the_cache(tmp_path):
    dataset, cache = tmp_path / "ds", tmp_path / "cache"
    with DatasetWriter(dataset) as writer:
        for i in range(2):
            writer.add(np.full((3, 16, 16, 3), 40 * i, np.uint8), f"clip {i}")
    model = WanVideoModel.build_tiny("pixel", patch_size=(1, 4, 4))
    first = load_or_build_cache(dataset, model, cache, dtype="float32", progress=False)
    info = (cache / "cache.json").stat().st_mtime_ns
    again = load_or_build_cache(dataset, model, cache, dtype="float32", progress=False)
    assert (cache / "cache.json").stat().st_mtime_ns == info and np.array_equal(again.latents, first.latents)
    np.save(dataset / "clips" / "000001.npy", np.full((3, 16, 16, 3), 250, np.uint8))  # metadata.jsonl unchanged
    rebuilt = load_or_build_cache(dataset, model, cache, dtype="float32", progress=False)
    assert np.array_equal(rebuilt.latents[0], first.latents[0])
    assert not np.array_equal(rebuilt.latents[1], first.latents[1])
