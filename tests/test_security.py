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
