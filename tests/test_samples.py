"""The sample checkpoints: present, small, reproducible, and really trained with the seed's naming."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "sample_checkpoints"
if str(SAMPLES_DIR) not in sys.path:
    sys.path.insert(0, str(SAMPLES_DIR))

import make_samples  # noqa: E402
import sample_models  # noqa: E402

LISTED = [
    "mobilenet_v1_tiny.pt",
    "mobilenet_v1_tiny.safetensors",
    "mobilenet_v1_tiny.ts",
    "mobilenet_v1_tiny_train.ts",
    "mobilenet_v1_tiny_legacy.pt",
    "resnet_tiny.pt",
    "resnet_tiny_lightning.ckpt",
    "resnet_tiny_dp.pth",
    "resnet_tiny_compiled.pt",
    "resnet_tiny_module.pt",
    "norms_tiny.pt",
]
MOBILENET_BN = {"features.2.bn": 32, "features.3.bn": 64, "features.4.bn": 64, "features.5.bn": 128}
RESNET_BN = {
    "bn1": 16,
    "layer1.0.bn1": 16,
    "layer1.0.bn2": 16,
    "layer2.0.bn1": 32,
    "layer2.0.bn2": 32,
    "layer2.0.downsample.1": 32,
}


def load(name: str) -> dict:
    """Load a sample the safe way, as bninspect's users should."""
    return torch.load(SAMPLES_DIR / name, weights_only=True)


def bn_prefixes(state: dict) -> dict[str, int]:
    """BN module prefixes (those with a running_mean) and their channel counts."""
    suffix = ".running_mean"
    return {k[: -len(suffix)]: v.numel() for k, v in state.items() if k.endswith(suffix)}


def assert_trained_bn(state: dict, expected: dict[str, int], prefix: str = "") -> None:
    """Every expected BN has real running statistics and counted exactly STEPS batches."""
    assert bn_prefixes(state) == {prefix + name: c for name, c in expected.items()}
    for name in expected:
        p = prefix + name
        # Fresh BN buffers are exactly 0 (mean) and 1 (var); training moves every channel.
        assert (state[p + ".running_mean"] != 0).all(), p
        assert (state[p + ".running_var"] != 1).all(), p
        assert (state[p + ".running_var"] > 0).all(), p
        assert state[p + ".num_batches_tracked"].item() == make_samples.STEPS, p


def test_every_listed_sample_exists_and_all_are_small() -> None:
    """Every file the README lists and every registered sample is committed; all together stay under 3 MB."""
    missing = [n for n in LISTED + list(make_samples.SAMPLES) if not (SAMPLES_DIR / n).is_file()]
    assert missing == []
    assert set(LISTED) <= set(make_samples.SAMPLES)
    total = sum((SAMPLES_DIR / n).stat().st_size for n in make_samples.SAMPLES)
    assert total < 3 * 1024 * 1024


def test_regenerating_reproduces_identical_tensors(tmp_path: Path) -> None:
    """Rerunning the generators gives the committed tensors bit for bit, on any x86-64 CPU: the
    samples are what the script makes. float64 training and one code path for MKL and torch's
    kernels (make_samples.train_in_float64) made that hold across CPUs; the float32 training
    before it moved weights by 8.4e-4 between an Intel and an AMD machine."""
    names = ["mobilenet_v1_tiny.pt", "drift/calib.pt"]  # a trained model, and the data drawn by randn
    # A fresh process, as a user runs it: the script's determinism settings are process-wide.
    subprocess.run([sys.executable, str(SAMPLES_DIR / "make_samples.py"), "--out", str(tmp_path), *names],
                   check=True, capture_output=True)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.pt")) == sorted(names)
    hint = "differs from the committed sample: regenerate with make_samples.py and commit, or check the script"
    for name in names:
        fresh, committed = torch.load(tmp_path / name, weights_only=True), load(name)
        if isinstance(committed, torch.Tensor):
            fresh, committed = {"": fresh}, {"": committed}
        assert list(fresh) == list(committed)
        for key in committed:
            assert fresh[key].dtype == committed[key].dtype and torch.equal(fresh[key], committed[key]), \
                f"{name}: {key} {hint}"


def test_unknown_sample_name_is_refused(tmp_path: Path) -> None:
    """A mistyped name is a usage error that writes nothing."""
    result = subprocess.run(
        [sys.executable, str(SAMPLES_DIR / "make_samples.py"), "--out", str(tmp_path), "nope.pt"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "unknown sample(s) nope.pt" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_mobilenet_has_the_seed_questions_names_and_shapes() -> None:
    """The keys, order and shapes the seed question printed, with trained statistics."""
    state = load("mobilenet_v1_tiny.pt")
    assert list(state)[:14] == [
        "features.0.weight",
        "features.0.bias",
        "features.2.dw_conv_k3.weight",
        "features.2.bn.weight",
        "features.2.bn.bias",
        "features.2.bn.running_mean",
        "features.2.bn.running_var",
        "features.2.bn.num_batches_tracked",
        "features.3.p_conv_k1.weight",
        "features.3.bn.weight",
        "features.3.bn.bias",
        "features.3.bn.running_mean",
        "features.3.bn.running_var",
        "features.3.bn.num_batches_tracked",
    ]
    assert state["features.0.weight"].shape == (32, 3, 3, 3)
    assert state["features.0.bias"].shape == (32,)
    assert state["features.2.dw_conv_k3.weight"].shape == (32, 1, 3, 3)
    assert state["features.2.bn.running_mean"].shape == (32,)
    assert state["features.3.p_conv_k1.weight"].shape == (64, 32, 1, 1)
    assert state["features.3.bn.running_mean"].shape == (64,)
    assert state["features.4.dw_conv_k3.weight"].shape == (64, 1, 3, 3)
    assert state["features.5.p_conv_k1.weight"].shape == (128, 64, 1, 1)
    assert state["classifier.weight"].shape == (sample_models.NUM_CLASSES, 128)
    assert_trained_bn(state, MOBILENET_BN)


def test_mobilenet_formats_hold_the_same_tensors() -> None:
    """The legacy and safetensors files carry exactly the plain state dict, in their own formats."""
    from safetensors.torch import load_file

    plain = load("mobilenet_v1_tiny.pt")
    legacy = load("mobilenet_v1_tiny_legacy.pt")
    safet = load_file(str(SAMPLES_DIR / "mobilenet_v1_tiny.safetensors"))
    assert not zipfile.is_zipfile(SAMPLES_DIR / "mobilenet_v1_tiny_legacy.pt")
    assert zipfile.is_zipfile(SAMPLES_DIR / "mobilenet_v1_tiny.pt")
    for other in (legacy, safet):
        assert set(other) == set(plain)
        assert all(torch.equal(other[k], plain[k]) for k in plain)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize(("name", "training"), [("mobilenet_v1_tiny.ts", False), ("mobilenet_v1_tiny_train.ts", True)])
def test_torchscript_samples_keep_their_mode(name: str, training: bool) -> None:
    """Each archive keeps the mode it was scripted in and computes what the eager model does in it."""
    # torch.jit.load runs the archive's code: acceptable here, these are our own files.
    scripted = torch.jit.load(str(SAMPLES_DIR / name))
    modes = {n: m.training for n, m in scripted.named_modules() if n.endswith(".bn")}
    assert modes == {name: training for name in MOBILENET_BN}
    plain = load("mobilenet_v1_tiny.pt")
    assert all(torch.equal(v, plain[k]) for k, v in scripted.state_dict().items())
    x, _ = sample_models.synthetic_images(8, seed=5)
    model = sample_models.mobilenet_v1_tiny()
    model.load_state_dict(plain)
    model.train(training)  # the scripted model computes what the eager model does in that mode
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


def test_mobilenet_really_learned_the_synthetic_task() -> None:
    """Training was real: the eval-mode model classifies held-out synthetic images."""
    model = sample_models.mobilenet_v1_tiny()
    model.load_state_dict(load("mobilenet_v1_tiny.pt"))
    model.eval()
    x, y = sample_models.synthetic_images(256, seed=99)  # held out: training used DATA_SEED
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9


def test_resnet_wrappers_only_prefix_the_same_state() -> None:
    """DataParallel and torch.compile change the key prefix and nothing else."""
    plain = load("resnet_tiny.pt")
    assert_trained_bn(plain, RESNET_BN)
    assert plain["layer2.0.downsample.0.weight"].shape == (32, 16, 1, 1)
    for name, prefix in [("resnet_tiny_dp.pth", "module."), ("resnet_tiny_compiled.pt", "_orig_mod.")]:
        wrapped = load(name)
        assert list(wrapped) == [prefix + k for k in plain], name
        assert all(torch.equal(wrapped[prefix + k], v) for k, v in plain.items()), name


def test_lightning_checkpoint_has_real_training_state_and_a_distinct_ema() -> None:
    """The Lightning dict carries the trained weights, optimizer momentum and an EMA that differs."""
    ckpt = load("resnet_tiny_lightning.ckpt")
    plain = load("resnet_tiny.pt")
    assert ckpt["global_step"] == make_samples.STEPS
    main, ema = ckpt["state_dict"], ckpt["state_dict_ema"]
    assert list(main) == ["model." + k for k in plain]
    assert all(torch.equal(main["model." + k], v) for k, v in plain.items())
    assert list(ema) == list(main)
    assert_trained_bn(ema, RESNET_BN, prefix="model.")
    for key, value in main.items():
        if value.is_floating_point():
            assert not torch.equal(ema[key], value), key
    optimizer = ckpt["optimizer_states"][0]
    params = optimizer["param_groups"][0]["params"]
    assert len(params) == sum(1 for k in plain if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert all(optimizer["state"][i]["momentum_buffer"].abs().sum() > 0 for i in params)
    assert ckpt["lr_schedulers"][0]["last_epoch"] == make_samples.STEPS


def test_module_pickle_needs_trust_and_holds_the_trained_resnet() -> None:
    """The full-module pickle fails a safe load and, trusted, is the trained ResNetTiny in eval mode."""
    path = SAMPLES_DIR / "resnet_tiny_module.pt"
    with pytest.raises(Exception, match="sample_models"):
        torch.load(path, weights_only=True)
    model = torch.load(path, weights_only=False)  # our own file, and sample_models is importable
    assert type(model).__module__ == "sample_models" and type(model).__name__ == "ResNetTiny"
    assert not model.training
    plain = load("resnet_tiny.pt")
    assert all(torch.equal(v, plain[k]) for k, v in model.state_dict().items())


def test_norms_sample_has_no_batchnorm() -> None:
    """GroupNorm/LayerNorm only: no running statistics anywhere."""
    state = load("norms_tiny.pt")
    assert not any("running_" in k or "num_batches_tracked" in k for k in state)
    assert {k.rsplit(".", 1)[0] for k in state} == {"conv1", "gn1", "conv2", "norm2", "ln", "head"}
    assert state["norm2.weight"].shape == state["conv2.bias"].shape == (32,)


def test_synthetic_images_are_seeded_and_shift_moves_every_pixel() -> None:
    """Same seed, same data; shift adds a constant to every pixel and leaves the labels."""
    x, y = sample_models.synthetic_images(10, seed=3)
    x2, y2 = sample_models.synthetic_images(10, seed=3)
    xs, ys = sample_models.synthetic_images(10, seed=3, shift=2.0)
    assert x.shape == (10, 3, sample_models.IMAGE_SIZE, sample_models.IMAGE_SIZE) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and set(y.tolist()) <= set(range(sample_models.NUM_CLASSES))
    assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(y, ys)
    torch.testing.assert_close(xs, x + 2.0)
    assert not torch.equal(sample_models.synthetic_images(10, seed=4)[0], x)
