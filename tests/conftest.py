"""Shared fixtures: a tiny MiniCity written once per test session."""

import os
import tempfile

# dataset-check verdicts go to a throwaway cache, not ~/.cache
os.environ.setdefault("COSALIGN_CACHE", tempfile.mkdtemp(prefix="cosalign-test-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402

from cosalign.data.minicity import MiniCitySpec, make_minicity  # noqa: E402
from cosalign.demo import minicity_config  # noqa: E402

torch.set_num_threads(2)

TINY = MiniCitySpec(num_source=12, num_source_val=4, num_target_train=8, num_target_val=4,
                    source_size=(96, 54), target_size=(96, 48), seed=3)


@pytest.fixture(scope="session")
def tiny_minicity(tmp_path_factory):
    root = tmp_path_factory.mktemp("minicity")
    make_minicity(root, TINY, workers=1, progress=False)
    return root


@pytest.fixture
def tiny_config(tiny_minicity):
    """MiniCity preset shrunk to seconds: 64x32 inputs, a 1/8-width ResNet-18, 6 iterations."""
    return minicity_config(tiny_minicity, [
        "data.source.size=[64, 36]", "data.target.size=[64, 32]", "data.val.size=[64, 32]",
        "data.batch_size=2", "model.width=0.125", "train.iters=6", "optim.schedule_iters=6",
        "train.log_every=2", "train.eval_every=0", "train.checkpoint_every=3",
        "loss.capacity=8", "loss.cos=0.1", "loss.tau=0.0", "loss.start_iter=0",
    ])
