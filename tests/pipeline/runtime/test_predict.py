"""The release's preprocessing of uint8 sets: normalized a slice at a time, memory-mapped or not."""

import numpy as np

from pipeline.runtime.predict import Normalized, normalize
from pipeline.runtime.sessions import run_batches


class Identity:
    """Stands in for an onnxruntime session: returns its input, so run_batches shows what it was fed."""

    def run(self, outputs, feed):
        return [next(iter(feed.values()))]


def test_normalized_slices_are_the_whole_set_normalized(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (70, 3, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "x.npy", pixels)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.6, 0.7]
    expected = normalize(pixels, mean, std)
    for source in (pixels, np.load(tmp_path / "x.npy", mmap_mode="r")):
        inputs = Normalized(source, mean, std)
        assert len(inputs) == 70 and inputs.shape == (70, 3, 4, 4)
        np.testing.assert_array_equal(inputs[10:30], expected[10:30])
        np.testing.assert_array_equal(run_batches(Identity(), inputs, batch=32), expected)
