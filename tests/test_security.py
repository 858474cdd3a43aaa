"""No secrets in the tree; weights load only through safetensors / weights_only; no remote code."""
import os
import re

from conftest import ROOT

SKIP_DIRS = {".git", ".venv", "runs", "models", "out", "__pycache__", ".pytest_cache", ".ruff_cache"}
SECRET_PATTERNS = {
    "OpenAI-style key": r"\bsk-[A-Za-z0-9_-]{20,}",
    "Hugging Face token": r"\bhf_[A-Za-z0-9]{30,}",
    "AWS access key id": r"\bAKIA[0-9A-Z]{16}\b",
    "GitHub token": r"\bgh[pousr]_[A-Za-z0-9]{36}\b",
    "Slack token": r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
}


def tree_files():
    for root, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        for f in files:
            yield os.path.join(root, f)


def secrets_in(text: str) -> list[str]:
    return [name for name, pat in SECRET_PATTERNS.items() if re.search(pat, text)]


def test_patterns_catch_keys():
    fake = "token = '" + "hf_" + "a1B2" * 9 + "'"  # built here so the tree never holds one
    assert secrets_in(fake) == ["Hugging Face token"]
    assert secrets_in("key=" + "sk-" + "x" * 32) == ["OpenAI-style key"]


def test_no_secrets_in_tree():
    hits = []
    for f in tree_files():
        try:
            text = open(f, encoding="utf-8").read()
        except (UnicodeDecodeError, OSError):
            continue
        hits += [f"{os.path.relpath(f, ROOT)}: {name}" for name in secrets_in(text)]
    assert not hits


def test_weights_load_safely():
    py = [f for f in tree_files() if f.endswith(".py") and not f.endswith("test_security.py")]
    scripts = {"acquisition_AL.py", "train_AL.py", "eval_generate.py", "convert_hf_to_fsdp.py", "convert_fsdp_to_hf.py",
               "convert_gguf_to_hf.py", "al_utils.py", "al_strategies.py", "fsdp_utils.py", "bench_sharded_load.py"}
    assert scripts <= {os.path.basename(f) for f in py}  # the walk reaches the files that load weights
    for f in py:
        src = open(f).read()
        for call in re.findall(r"torch\.load\([^)]*\)", src):
            assert "weights_only=True" in call, f"{f}: {call}"
        assert "trust_remote_code=True" not in src, f
        assert not re.search(r"\bpickle\.loads?\(", src), f  # DCP's own .metadata reader aside


class Payload:
    """Unpickling this runs a command: what a crafted .metadata can do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted_checkpoint(tiny_model, tmp_path):
    """A copy of a real sharded checkpoint whose .metadata runs code when unpickled."""
    import pickle
    import shutil

    import convert_hf_to_fsdp

    good = tmp_path / "good"
    convert_hf_to_fsdp.main(["--load_path", tiny_model, "--save_path", str(good)])
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    marker = tmp_path / "pwned"
    with open(bad / ".metadata", "wb") as f:
        pickle.dump(Payload(str(marker)), f)
    return good, bad, marker


def test_crafted_metadata_is_refused_before_it_runs(tiny_model, tmp_path, capsys):
    import subprocess
    import sys

    import pytest
    import torch

    import convert_fsdp_to_hf
    import fsdp_utils
    from al_utils import InputError

    good, bad, marker = crafted_checkpoint(tiny_model, tmp_path)
    why = f"{bad}/.metadata: (pickle): refers to posix.system, which torch.distributed.checkpoint never writes; " \
          "not loading it (unpickling it could run code)"
    with pytest.raises(InputError) as e:
        fsdp_utils.check_weights(str(bad), "--sharded_model")
    assert str(e.value) == f"--sharded_model: {why}"
    for call in (lambda: fsdp_utils.load_dcp(fsdp_utils.load_model(str(good), torch.device("cpu")), str(bad)),
                 lambda: fsdp_utils.has_optimizer_state(str(bad))):
        with pytest.raises(InputError, match="refers to posix.system"):
            call()
    with pytest.raises(InputError) as e:
        convert_fsdp_to_hf.main(["--load_path", str(bad), "--save_path", str(tmp_path / "hf")])
    assert str(e.value) == f"--load_path: {why}"
    # the reproduction: eval on a downloaded sharded checkpoint
    r = subprocess.run([sys.executable, os.path.join(ROOT, "eval_generate.py"), "--sharded_model", str(bad),
                        "--save_file_name", str(tmp_path / "o.json"), "--debug"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().endswith(why)
    assert not marker.exists()  # nothing in the file ran
    # what the suite writes still reads: model, and optimizer state (--save_opt) through train_AL
    assert fsdp_utils.has_optimizer_state(str(good)) is False
    fsdp_utils.load_dcp(fsdp_utils.load_model(str(good), torch.device("cpu")), str(good))
