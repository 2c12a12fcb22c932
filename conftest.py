"""Shared pytest fixtures (pytest loads this file by itself)."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models run several times faster on one thread (no spin-waiting of a second one). Test files that
    run them opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder this process cannot create files in: a chmod 500 folder, or /sys when running as root (root
    ignores permission bits; /sys refuses new files to everyone)."""
    import os
    import tempfile
    from pathlib import Path
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    for candidate in (folder, Path("/sys")):
        try:
            os.close(tempfile.mkstemp(dir=candidate)[0])
        except OSError:
            yield candidate
            break
    else:
        pytest.skip("no folder refuses writing here")
    folder.chmod(0o700)


class Killed(Exception):
    """A test's stand-in for a kill −9 right after a checkpoint was written."""


def killed_after(save, step: int):
    """`save` (sft.save_state, grpo.save_checkpoint), raising Killed once the checkpoint of `step` is written: a
    run stopped there, with nothing in the training loop that knows about tests."""
    def save_then_kill(*args, **kwargs):
        save(*args, **kwargs)
        state = next(a for a in list(args) + list(kwargs.values()) if isinstance(a, dict) and "step" in a)
        if state["step"] == step:
            raise Killed(f"killed after the checkpoint of step {step}")
    return save_then_kill
