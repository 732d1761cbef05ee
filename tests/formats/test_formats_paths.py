"""Path problems and unknown content: clear errors, never a blocked read, never a torch import."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from bninspect.errors import InvalidFileError, PathProblemError
from bninspect.formats import open_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def alarm():
    """Fail instead of hanging: a blocked open() is interrupted after 10 s."""

    def fire(signum, frame):
        raise TimeoutError("open_checkpoint blocked")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_missing_and_directory(tmp_path):
    with pytest.raises(PathProblemError, match="no such file"):
        open_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(PathProblemError, match="is a directory"):
        open_checkpoint(tmp_path)
    with pytest.raises(PathProblemError, match="not a directory"):
        (tmp_path / "file").write_bytes(b"x")
        open_checkpoint(tmp_path / "file" / "child.pt")


def test_fifo_is_never_opened(tmp_path, alarm):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    with pytest.raises(PathProblemError, match="FIFO"):
        open_checkpoint(fifo)


def test_character_device(alarm):
    with pytest.raises(PathProblemError, match="character device"):
        open_checkpoint("/dev/zero")


def test_symlinks(tmp_path):
    dangling = tmp_path / "dangling.pt"
    dangling.symlink_to(tmp_path / "gone.pt")
    with pytest.raises(PathProblemError, match="dangling symlink"):
        open_checkpoint(dangling)
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.symlink_to(b)
    b.symlink_to(a)
    with pytest.raises(PathProblemError, match="symlink loop"):
        open_checkpoint(a)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable(tmp_path):
    path = tmp_path / "secret.pt"
    path.write_bytes(b"PK\x03\x04")
    path.chmod(0)
    with pytest.raises(PathProblemError, match="permission denied"):
        open_checkpoint(path)


def _tar_bytes(tmp_path) -> bytes:
    member = tmp_path / "storages"
    member.write_bytes(b"\x00" * 16)
    out = tmp_path / "old.tar"
    with tarfile.open(out, "w") as tf:
        tf.add(member, arcname="storages")
    return out.read_bytes()


def _zip_bytes(tmp_path) -> bytes:
    out = tmp_path / "other.zip"
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("readme.txt", "hello")
    return out.read_bytes()


CONTENT = {
    "empty": (lambda tmp: b"", "the file is empty"),
    "text": (lambda tmp: b"model weights go here\n", "a text file"),
    "json": (lambda tmp: b'{"state_dict": {}}', "JSON text"),
    "png": (lambda tmp: b"\x89PNG\r\n\x1a\n" + bytes(64), "a PNG image"),
    "random": (lambda tmp: bytes(range(7, 200, 3)), "unrecognised binary data (starts with 07 0a 0d"),
    "old tar format": (_tar_bytes, "tar archive"),
    "plain pickle": (lambda tmp: b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94.", "plain Python pickle"),
    "other zip": (_zip_bytes, "without data.pkl"),
    "git lfs pointer": (lambda tmp: b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", "Git LFS pointer"),
}


@pytest.mark.parametrize("case", list(CONTENT))
def test_unknown_content_says_what_it_looks_like(tmp_path, case):
    make, text = CONTENT[case]
    path = tmp_path / "model.pt"  # the extension promises a checkpoint; the content decides
    path.write_bytes(make(tmp_path))
    with pytest.raises(InvalidFileError) as info:
        open_checkpoint(path)
    assert text in info.value.message


@pytest.mark.torch
def test_safe_readers_do_not_import_torch(tmp_path):
    """open_checkpoint on safetensors, a zip .pt and a TorchScript archive leaves torch unimported."""
    import torch
    from safetensors.torch import save_file

    from tests.formats.craft import trained_net

    net = trained_net()
    torch.save({"state_dict": net.state_dict()}, tmp_path / "a.pt")
    save_file(net.state_dict(), tmp_path / "a.safetensors")
    torch.jit.save(torch.jit.script(net), tmp_path / "a.ts")
    check = (
        "import sys\n"
        "from bninspect.formats import open_checkpoint\n"
        "for name in sys.argv[1:]:\n"
        "    ckpt = open_checkpoint(name)\n"
        "    [t.numpy() for t in ckpt.tensors.values()]\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", check, *(str(tmp_path / n) for n in ("a.pt", "a.safetensors", "a.ts"))],
                         check=True, timeout=120, capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.torch
def test_no_descriptor_outlives_its_checkpoint(tmp_path):
    import gc

    import torch
    from safetensors.torch import save_file

    torch.save({"bn.running_var": torch.ones(3)}, tmp_path / "a.pt")
    save_file({"bn.running_var": torch.ones(3)}, tmp_path / "a.safetensors")
    before = len(os.listdir("/proc/self/fd"))
    gc.disable()  # descriptors must close by reference counting alone
    try:
        for _ in range(50):
            for name in ("a.pt", "a.safetensors"):
                ckpt = open_checkpoint(tmp_path / name)
                ckpt.tensors["bn.running_var"].numpy()
                del ckpt
    finally:
        gc.enable()
    assert len(os.listdir("/proc/self/fd")) <= before
