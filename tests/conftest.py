"""Shared fixtures: a tiny MiniCity written once per test session, and the test device.

``COSALIGN_TEST_DEVICE=cuda pytest`` runs every test that trains, resumes, evaluates, predicts
or computes a loss on the GPU (``device`` fixture, ``train.device`` of ``tiny_config``); the
default is the CPU, which is what CI runs. Tests that stay on the CPU whatever the switch say why
in their docstring.
"""

import os
import tempfile

# dataset-check verdicts go to a throwaway cache, not ~/.cache
os.environ.setdefault("COSALIGN_CACHE", tempfile.mkdtemp(prefix="cosalign-test-cache-"))
# `make test` runs the suite in 2 pytest-xdist workers on 2 cores, and some tests start more
# processes (torchrun-like pairs, a killed run, the GPU check's smoke run). Idle OpenMP threads
# sleep instead of spinning (a spinning thread takes a core another process needs: the suite
# took 162 s with spinning threads, 129 s without, on 2 AVX2 cores), and under xdist every
# process computes with one thread. Set before torch is imported; children inherit both.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from cosalign.config import load_config, to_dict  # noqa: E402
from cosalign.engine.checkpoint import save_checkpoint  # noqa: E402
from cosalign.minicity import MiniCitySpec, make_minicity, minicity_config  # noqa: E402
from cosalign.models import build_model  # noqa: E402

# alone (plain pytest), one process computing with two threads
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

TEST_DEVICE = os.environ.get("COSALIGN_TEST_DEVICE", "cpu")


def pytest_configure(config):
    if TEST_DEVICE not in ("cpu", "cuda"):
        raise pytest.UsageError(f"COSALIGN_TEST_DEVICE must be cpu or cuda, got {TEST_DEVICE!r}")
    if TEST_DEVICE == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("COSALIGN_TEST_DEVICE=cuda, but torch sees no CUDA device")


# the tests that start processes or train longest, started first so that the two xdist
# workers finish together (longest first); the order of the others is kept
FIRST = ("test_gpu_check.py", "test_checkpoint.py::test_killed_process", "test_distributed.py",
         "test_self_training.py::test_dacs_under_two_processes",
         "test_accidents.py::test_sigterm", "test_accidents.py::test_a_full_disk_at")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: not any(f in item.nodeid for f in FIRST))


def pytest_report_header(config):
    return f"cosalign test device: {TEST_DEVICE} (COSALIGN_TEST_DEVICE)"


def official_module(name: str):
    """A ``cityscapesscripts`` module, the reference our tables and metrics are tested against.
    It is a dev dependency (``make test`` installs it), so on the CPU its absence is an error; a
    GPU run on a machine's own Python may lack it and then skips those comparisons."""
    import importlib

    if TEST_DEVICE == "cpu":
        return importlib.import_module(name)
    return pytest.importorskip(name, reason="cityscapesscripts is not installed here")


@pytest.fixture
def product_dtypes(monkeypatch) -> list:
    """The dtypes the cosine loss's match=all products ran in, one per block call, in order."""
    import cosalign.losses.cosine as cosine

    seen, real = [], cosine._match_all

    def spy(x_mm, *args):
        seen.append(x_mm.dtype)
        return real(x_mm, *args)

    monkeypatch.setattr(cosine, "_match_all", spy)
    return seen


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device(TEST_DEVICE)

TINY = MiniCitySpec(num_source=12, num_source_val=4, num_target_train=8, num_target_val=4,
                    source_size=(96, 54), target_size=(96, 48), seed=3)


@pytest.fixture(scope="session")
def tiny_minicity(tmp_path_factory):
    root = tmp_path_factory.mktemp("minicity")
    make_minicity(root, TINY, workers=1, progress=False)
    return root


TINY_OVERRIDES = [
    "data.source.size=[64, 36]", "data.target.size=[64, 32]", "data.val.size=[64, 32]",
    # the preset's protocol: random crops of the resized images
    "data.source.crop=[64, 32]", "data.target.crop=[64, 32]",
    "data.batch_size=2", "model.width=0.125", "train.iters=6", "optim.schedule_iters=6",
    "train.log_every=2", "train.eval_every=0", "train.checkpoint_every=3",
    "dictionary.capacity=8", "loss.cos=0.1", "align.tau=0.0", "align.start_iter=0",
    f"train.device={TEST_DEVICE}",
]


@pytest.fixture
def tiny_config(tiny_minicity):
    """MiniCity preset shrunk to seconds: 64x32 inputs, a 1/8-width ResNet-18, 6 iterations."""
    return minicity_config(tiny_minicity, TINY_OVERRIDES)


@pytest.fixture
def checkpoint(tmp_path):
    """An untrained small model saved as a cosalign checkpoint (its config: 48x24 input)."""
    cfg = load_config("minicity", ["model.width=0.125", "data.val.size=[48, 24]",
                                   "data.classes=cityscapes19"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 19)
    # a bias so that predictions spread over several classes
    model.head.branches[0].bias.data = torch.randn(19)
    return save_checkpoint({"model": model.state_dict(), "config": to_dict(cfg), "iteration": 0},
                           tmp_path / "run", 0)
