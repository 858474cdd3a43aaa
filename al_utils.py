"""Shared helpers for the AL scripts: errors and atomic files, the run directory, common flags,
records and validation (prompt templates and tokenisation live in al_prompts.py, loss scoring and
generation in al_scoring.py, strategies and selection in al_strategies.py).

Conventions (see README): a score is a per-example mean NLL over the scored tokens only; higher
means "more uncertain" and sorts first ("top"). Bad input raises InputError whose message reads
`FILE:LINE: FIELD: message`; the scripts print it as `error: ...` and exit 2.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from importlib.metadata import version
from typing import Any

import numpy as np
from tqdm import tqdm

# ----------------------------------------------------------------------------------------------
# errors and atomic files


class InputError(Exception):
    """Bad input found before any work: printed as one `error: ...` line, exit code 2."""


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def run_cli(main: Callable[[], Any]) -> None:
    """Run a script's main(); an InputError becomes one clear line on stderr and exit code 2, a
    full disk (or quota) one line naming the file and exit code 1."""
    try:
        main()
    except InputError as e:
        # under torchrun every rank validates the same way; rank 0 speaks, every rank exits 2
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        # every write is temp + rename, so what is on disk is the last complete version of each file
        print(f"error: {e.filename or '(a file)'}: {e.strerror} ({errno.errorcode[e.errno]}); nothing was left "
              "half-written: free space, then run again with --resume", file=sys.stderr)
        sys.exit(1)


class _PhaseLine(tqdm):
    """A progress bar writing into a file (nohup, SLURM logs): no carriage-return frames, one line
    when the phase ends, saying what it did and how long it took."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.sp = None  # tqdm's close() then writes nothing of its own

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        return True

    def close(self) -> None:
        if not self.disable:  # tqdm's close() sets disable: a second close writes nothing
            of = f"/{self.total}" if self.total else ""
            with contextlib.suppress(ValueError, OSError):  # the file may be gone at exit
                self.fp.write(f"{self.desc}: {self.n}{of} {self.unit}s in "
                              f"{self.format_interval(self._time() - self.start_t)}\n")
        super().close()


def progress_bar(iterable: Iterable | None = None, *, desc: str, enabled: bool = True, **kw: Any) -> tqdm:
    """The progress bar every loop uses, on stderr: tqdm's bar on a terminal, one line per phase
    (_PhaseLine) when stderr is a file."""
    cls = tqdm if sys.stderr.isatty() else _PhaseLine
    return cls(iterable, desc=desc, disable=not enabled, file=sys.stderr, **kw)


UMASK = os.umask(0)
os.umask(UMASK)  # (reading the umask means setting it: put it straight back)


def atomic_write_text(path: str, text: str) -> None:
    """Write via a temp file in the same directory + rename, so readers never see half a file."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600; results should be as readable as open() makes them
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a failed write() or fsync() names no file
            raise OSError(e.errno, e.strerror, path) from e
        raise


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Build a folder in <path>.tmp and rename it into place (replacing an old one) only once the
    block completes: a crash leaves no half folder at `path`, and the next call clears the .tmp."""
    tmp = path.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    yield tmp
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.replace(tmp, path)


def atomic_savefig(fig, path: str, **kw) -> None:
    """matplotlib figure -> file, via a temp file + rename like every other write."""
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{os.getpid()}{ext}"  # keeps the extension: savefig picks the format from it
    fig.savefig(tmp, **kw)
    os.replace(tmp, path)


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------------------------
# the run directory (README "Run directory"): every path of it is spelled here, nowhere else


@dataclass(frozen=True)
class RunPaths:
    run: str  # <model_path> without a trailing /
    ckpt: str  # the latest round's trained model, beside the run directory: <run>_sharded
    state: str
    selected: str
    labels: str  # annotators' answers imported so far
    lock: str
    rounds: str

    def round_dir(self, rnd: int) -> str:
        return os.path.join(self.rounds, str(rnd))

    def round_file(self, rnd: int, name: str) -> str:
        """rounds/<rnd>/<name>: selected.jsonl, scores.jsonl, metrics.json, scores.png, to_annotate.jsonl"""
        return os.path.join(self.round_dir(rnd), name)


CKPT_SUFFIX = "_sharded"


def run_paths(model_path: str) -> RunPaths:
    run = model_path.rstrip("/")
    return RunPaths(run, run + CKPT_SUFFIX, *(os.path.join(run, f) for f in (
        "state.json", "selected.json", "labels.jsonl", ".lock", "rounds")))


def run_of_checkpoint(ckpt: str) -> RunPaths:
    """The run directory a loop checkpoint X_sharded belongs to (X)."""
    return run_paths(ckpt.rstrip("/").removesuffix(CKPT_SUFFIX))


def read_state(run: str) -> dict | None:
    """An AL run directory's state.json, or None where there is no run."""
    f = run_paths(run).state
    if not os.path.isfile(f):
        return None
    with open(f) as fh:
        return json.load(fh)


# ----------------------------------------------------------------------------------------------
# flags every script shares

TEMPLATES = ("alpaca", "chat")  # --prompt_template (al_prompts.py renders them)

RUNTIME = "run control (may change between a run and its --resume: not part of what it selects or trains)"


def add_common_args(p: argparse.ArgumentParser, seed_help: str = "seed of every random draw",
                    template_default: str | None = "alpaca") -> Any:
    """--model_config_path, --prompt_template and --seed (part of what a run is), --threads,
    --no_progress and --deterministic (how it runs), defined once for every script. Returns the
    runtime group for the script's own runtime flags: runtime_flags() reads it back."""
    g = p.add_argument_group("model, prompt template and seed")
    g.add_argument("--model_config_path", default=None,
                   help="HF folder with config + tokenizer (default: the checkpoint's own)")
    g.add_argument("--prompt_template", default=template_default, choices=TEMPLATES,
                   help="alpaca: the original's instruction template; chat: the tokenizer's own chat template "
                        "(user turn = instruction + input, assistant turn = answer)" + (
                            "" if template_default else "; default: the one the checkpoint was trained with "
                            "(recorded beside its weights), else alpaca"))
    g.add_argument("--seed", type=int, default=42, help=seed_help)
    rt = p.add_argument_group(RUNTIME)
    rt.add_argument("--config", default=None, metavar="FILE.yaml",
                    help="settings from a YAML file: keys are the flag names without dashes (e.g. lr: 5.0e-5, "
                         "save_opt: true); flags on the command line override it")
    rt.add_argument("--print_config", action="store_true",
                    help="print the effective settings as YAML (loadable by --config) and exit")
    rt.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    rt.add_argument("--no_progress", action="store_true", help="no progress bars")
    rt.add_argument("--deterministic", action="store_true",
                    help="CUDA: deterministic kernels, so a rerun or a resumed run repeats the same numbers and "
                         "picks (on CPU they always do; the flag changes nothing there); torch then raises on ops with "
                         "no deterministic CUDA kernel (top-p sampling's cumsum: eval_generate.py refuses --top_p < 1)")
    return rt


def add_save_opt_args(g: Any, default: bool) -> None:
    """--save_opt / --dont_save_opt: one setting under both of the original's names."""
    x = g.add_mutually_exclusive_group()
    on, off = ("(default)", "") if default else ("", "(default)")
    x.add_argument("--save_opt", dest="save_opt", action="store_true", default=default,
                   help=f"save the optimizer state with the checkpoint {on}".rstrip())
    x.add_argument("--dont_save_opt", dest="save_opt", action="store_false",
                   help=f"save the model without optimizer state {off}".rstrip())


NOT_BEFORE = object()  # setting(before=...) left out: runs made before the setting did its default


def setting(default: Any, help: str, flag: str | None = None, choices: tuple | None = None,
            type: Callable | None = None, metavar: str | None = None, section: str | None = None,
            before: Any = NOT_BEFORE) -> Any:
    """A config dataclass field declared once: its default, its help, its flag (default: the
    field's name), its choices, its type where the default does not say it (None), the --help
    section it is listed under when not its class's, and `before`: what runs made before the
    setting existed did where that is not its default (they resume doing it: before_values). A
    field whose default is False is an on-switch (store_true). add_config_args makes the flags,
    config_from reads them back."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices, "type": type,
                                            "metavar": metavar, "section": section, "before": before})


def _declared(cls: type) -> dict[str, Any]:
    """flag name (without dashes) -> field, for the fields of `cls` declared with setting()."""
    return {f.metadata["flag"] or f.name: f for f in fields(cls) if "help" in f.metadata}


def add_config_args(g: Any, cls: type, section: str | None = None) -> None:
    """One flag per field of `cls` declared with setting() for `section` (None: the class's own),
    in declaration order."""
    for flag, f in _declared(cls).items():
        m = f.metadata
        if m["section"] != section:
            continue
        if f.default is False:
            action = g.add_argument(f"--{flag}", action="store_true", help=m["help"])
        else:
            kind = {} if m["choices"] else {"type": m["type"] or type(f.default)}
            action = g.add_argument(f"--{flag}", **kind, default=f.default, choices=m["choices"],
                                    metavar=m["metavar"], help=m["help"])
        if m["before"] is not NOT_BEFORE:
            action.before = m["before"]  # read back by before_values


def before_values(p: argparse.ArgumentParser) -> dict[str, Any]:
    """{dest: value} of the flags declared with setting(before=...): what a run made before the flag
    existed did (its state.json lacks the flag)."""
    return {a.dest: a.before for a in p._actions if hasattr(a, "before")}


def config_from(cls: type, args: argparse.Namespace, **more: Any) -> Any:
    """`cls` from the parsed flags of its setting() fields (one that does not apply, None, keeps
    its default); `more` sets the others."""
    given = {f.name: getattr(args, flag) for flag, f in _declared(cls).items()}
    return cls(**{k: v for k, v in given.items() if v is not None}, **more)


def flag_of(cls: type, name: str) -> str:
    """The flag of a config field (for error messages that name what the user typed)."""
    return "--" + next(flag for flag, f in _declared(cls).items() if f.name == name)


def waiting_line(run: str, wait: dict) -> str:
    """What a run waiting for labels says (state.json `in_round`), when it stops and under --status."""
    head = (f"waiting for labels: {wait['waiting_for_labels']} of round {wait['round']}'s {wait['batch']} examples "
            f"are in {wait['exported_to']}")
    if "label_studio_config" in wait:  # a Label Studio batch: tasks to import, its export to bring back
        todo = "import them into the project" if wait["waiting_for_labels"] == wait["batch"] else \
            "they are already in the project (this file lists what is still pending)"
        return (f"{head} (Label Studio tasks; the project's labeling configuration: {wait['label_studio_config']}); "
                f"{todo}, annotate, export the project as JSON, then: python acquisition_AL.py --model_path {run} "
                "--labels EXPORT.json")
    return f"{head}; fill their `output`, then: python acquisition_AL.py --model_path {run} --labels FILE"


def _settings(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Config key -> its flag's action: every long flag without its dashes (--help, --config and
    --print_config aside; --dont_save_opt is a key too, the inverse of save_opt)."""
    return {s[2:]: a for a in p._actions for s in a.option_strings
            if s.startswith("--") and a.dest not in ("help", "config", "print_config")}


def _typed(a: argparse.Action, v: Any, where: str) -> Any:
    """One YAML value as its flag would have parsed it; a wrong type is one line naming the key."""
    kind = a.type or str
    name = {int: "an integer", float: "a number", str: "a string"}.get(kind, "a value")
    if isinstance(v, bool) or isinstance(v, (list, dict)) or (kind is int and not isinstance(v, int)):
        raise InputError(f"{where}: expected {name}, got {type(v).__name__} {v!r}")
    if kind is str and not isinstance(v, str):
        raise InputError(f"{where}: expected {name}, got {type(v).__name__} {v!r}")
    try:
        v = kind(v)  # float: YAML reads 1e-3 (no dot) as a string, which float() takes
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: expected {name}, got {v!r} ({e})") from None
    if a.choices is not None and v not in a.choices:
        raise InputError(f"{where}: {v!r} is not one of {', '.join(map(str, a.choices))}")
    return v


def load_config(path: str, p: argparse.ArgumentParser) -> dict[str, Any]:
    """A --config file as {dest: value}, each value checked as its flag would be. YAML through the
    safe loader (a config file someone sends you runs no code)."""
    import yaml

    if not os.path.isfile(path):
        raise InputError(f"--config: {path}: no such file")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise InputError(f"{path}{at}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of settings (key: value), got {type(data).__name__}")
    known, out = _settings(p), {}
    for key, v in data.items():
        a = known.get(str(key))
        if a is None:
            raise InputError(f"{path}: {key}: unknown setting (keys are the flag names without dashes; see --help)")
        out[a.dest] = _setting(a, v, f"{path}: {key}")
    return out


def _setting(a: argparse.Action, v: Any, where: str) -> Any:
    """A config file's value for one flag, as the flag would have parsed it."""
    if v is None:
        if a.default is not None or a.required:
            raise InputError(f"{where}: expected a value, got null")
        return None
    if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(v, bool):
            raise InputError(f"{where}: expected true or false, got {v!r}")
        return v if isinstance(a, argparse._StoreTrueAction) else not v
    if a.nargs in ("+", "*"):
        if not isinstance(v, list) or (a.nargs == "+" and not v):
            raise InputError(f"{where}: expected a list, got {type(v).__name__} {v!r}")
        return [_typed(a, x, where) for x in v]
    return _typed(a, v, where)


def effective_config(p: argparse.ArgumentParser, args: argparse.Namespace, skip: Iterable[str] = ()) -> dict:
    """{dest: value} of every setting, in --help order (what --print_config writes and a run records)."""
    seen, skip = set(), {"help", "config", "print_config", *skip}
    out = {}
    for a in p._actions:
        if a.dest not in skip and a.dest not in seen and a.option_strings:
            seen.add(a.dest)
            out[a.dest] = getattr(args, a.dest)
    return out


def parse_flags(p: argparse.ArgumentParser, argv: list[str] | None = None,
                recorded: Callable[[list[str], dict], dict] | None = None) -> argparse.Namespace:
    """Parse the command line over --config FILE over `recorded(argv, config)` (a run's recorded
    settings, when it is continued) over the parser's defaults; with --print_config print the
    effective settings as YAML and exit 0 (nothing is checked or created)."""
    import yaml

    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    cfg_path = pre.parse_known_args(argv)[0].config
    cfg = load_config(cfg_path, p) if cfg_path else {}
    defaults = {**(recorded(argv, cfg) if recorded else {}), **cfg}
    known = {a.dest for a in p._actions}
    p.set_defaults(**{k: v for k, v in defaults.items() if k in known})
    for a in p._actions:
        if a.dest in defaults and defaults[a.dest] is not None:
            a.required = False  # given by the file or the run: the command line may leave it out
    args = p.parse_args(argv)
    if args.print_config:
        sys.stdout.write(yaml.safe_dump(effective_config(p, args), sort_keys=False, default_flow_style=False))
        sys.exit(0)
    return args


def runtime_flags(p: argparse.ArgumentParser, *more_titles: str) -> set[str]:
    """Destinations of the flags in the RUNTIME group and the groups titled `more_titles`
    (argparse keeps groups in _action_groups)."""
    titles = {RUNTIME, *more_titles}
    return {a.dest for g in p._action_groups if g.title in titles for a in g._group_actions}


def check_common_args(args: argparse.Namespace) -> None:
    if args.seed < 0:  # numpy's seeded streams refuse negative seeds
        raise InputError("--seed: must be >= 0")
    if args.threads < 0:
        raise InputError("--threads: must be >= 0")


def kill_point(name: str, rnd: int) -> None:
    """Crash-safety test hook: with AL_KILL_AT=<name>:<round> in the environment the process
    SIGKILLs itself here (points: scoring, selected, training, checkpoint_save); with
    AL_KILL_RANK=<r> only that rank of a torchrun launch does."""
    if os.environ.get("AL_KILL_AT") == f"{name}:{rnd}" and \
            os.environ.get("AL_KILL_RANK", os.environ.get("RANK", "0")) == os.environ.get("RANK", "0"):
        os.kill(os.getpid(), signal.SIGKILL)


def answer_words(text: str) -> int:
    """What an annotator writes, counted in whitespace-separated words (comparable across tokenizers)."""
    return len(text.split())


def round_rng(seed: int, rnd: int, purpose: int) -> np.random.Generator:
    """Independent, reproducible random streams per (seed, round, purpose): a resumed run draws
    exactly what the uninterrupted run drew, with no RNG state to carry."""
    return np.random.default_rng([seed, rnd, purpose])


def describe(x: np.ndarray) -> str:
    if len(x) == 0:
        return "n/a"
    return f"mean {np.mean(x):.3f} min {np.min(x):.3f} max {np.max(x):.3f}"


# ----------------------------------------------------------------------------------------------
# a run directory's state across calls: the recorded spec, what a resume may change, chaining


# what one invocation says, not what the run is: never recorded, never taken from the record
PER_INVOCATION = ("model_path", "resume", "resume_checkpoint_path", "overwrite", "labels", "stop_after_round",
                  "no_progress", "status")


def recorded_spec(argv: list[str], cfg: dict) -> dict:
    """The settings a continued run recorded (state.json `spec`), so that `--model_path RUN --labels
    FILE` or `--model_path RUN --resume` need nothing else; a chained run (--resume_checkpoint_path)
    starts from the previous run's. Empty for a new run, or a run made before runs recorded them."""
    pre = argparse.ArgumentParser(add_help=False)
    for f in ("--model_path", "--resume_checkpoint_path", "--labels"):
        pre.add_argument(f)
    pre.add_argument("--resume", action="store_true")
    a = pre.parse_known_args(argv)[0]
    get = lambda k: getattr(a, k) or cfg.get(k)  # noqa: E731
    if not (get("resume") or get("labels")) or not get("model_path"):
        return {}
    state, where = read_state(get("model_path")), run_paths(get("model_path")).state
    if state is None and get("resume_checkpoint_path"):
        prev = run_of_checkpoint(get("resume_checkpoint_path"))
        state, where = read_state(prev.run), prev.state
    if state is not None and "spec" not in state and not (
            any(a.startswith("--init_checkpoint_path") for a in argv) or "init_checkpoint_path" in cfg):
        raise InputError(f"--resume: {where}: this run was made before runs recorded their settings: give its "
                         "flags again (its state.json `command` holds them)")
    # None marks a flag the run did not use: the parser's default stands in (a changed strategy is
    # then refused by the resume's comparison, not by a None where a number belongs)
    return {k: v for k, v in (state or {}).get("spec", {}).items() if v is not None}


def check_same(state: dict, flags: dict, where: str, default: Callable[[str], Any]) -> None:
    """Refuse a changed run flag. A flag the run's state does not know was added after it was made:
    at `default(flag)` (what runs made before it did; unused: None) it is what that run did, so a run
    made before stays resumable
    (save_opt was not recorded before: any value). After a round whose loss became non-finite
    (state `failed`), --lr may change: the one exception, recorded in the round log."""
    old = state["flags"]
    free = {"lr"} if state.get("failed") else set()
    diff = [f"{k}: {old.get(k)!r} -> {flags.get(k)!r}" for k in sorted(set(old) | set(flags))
            if old.get(k) != flags.get(k) and k not in free
            and not (k not in old and (k == "save_opt" or flags[k] in (None, default(k))))]
    if diff:
        raise InputError(f"--resume: {where}: flags or pool differ from the run being resumed: " + "; ".join(diff))


def check_world(state: dict, where: str, w: int) -> None:
    """Training batches are split over the ranks, so a run continues only with the world size it
    started with (its results are reproducible for one world size; see docs/design.md)."""
    was = state.get("world_size")
    if was is not None and was != w:
        raise InputError(f"--resume: {where}: the run was started with {was} process(es) and is resumed with {w}; "
                         f"resume it with {was} (torchrun --nproc_per_node/--nnodes), or start a new run")


def prepare_run_dir(paths: RunPaths, overwrite: bool, resume: bool, chain_from: str | None) -> None:
    """Rank 0: clear an overwritten run, or seed a chained run with the rounds of the run whose
    checkpoint `chain_from` is."""
    if os.path.isfile(paths.state) and overwrite and not resume:
        for p in (paths.rounds, paths.state, paths.selected, paths.labels, paths.ckpt):
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
    if resume and not os.path.isfile(paths.state) and chain_from:
        prev = run_of_checkpoint(chain_from)
        prev_state = read_state(prev.run)
        shutil.copytree(prev.rounds, paths.rounds, dirs_exist_ok=True)
        if os.path.isfile(prev.labels):
            shutil.copy2(prev.labels, paths.labels)
        prev_state["chained_from"] = prev.run
        prev_state["model_source"] = chain_from
        atomic_write_json(paths.state, prev_state)


def provenance() -> dict:
    """What made a run: the command line, the code's git commit, the main packages' versions."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"command": sys.argv, "git_commit": commit,
            "versions": {m: version(m) for m in ("torch", "transformers", "numpy", "scikit-learn")}}


def plot_hist(scores: list[float], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(scores, bins=50)
    ax.set_title(title)
    ax.set_xlabel("score")
    ax.set_ylabel("examples")
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def run_status(model_path: str | None) -> str:
    """What --status prints: a run's progress from its state.json, read only."""
    if not model_path:
        raise InputError("--status: give the run: --model_path RUN")
    paths = run_paths(model_path)
    state = read_state(paths.run)
    if state is None:
        raise InputError(f"--model_path: {paths.run}: no run here (no state.json)")
    words = state["flags"].get("budget_unit") == "answer_words"
    log = state["round_log"]
    spent = log[-1]["answer_words" if words else "labelled"] if log else 0
    lines = [f"run {paths.run}: {state['rounds_done'] + 1} round(s) done, {spent} of {state.get('budget', '?')} "
             f"{'answer words' if words else 'examples'} labelled"
             + (" (finished)" if log and spent >= state.get("budget", spent + 1) else "")]
    wait, failed = state.get("in_round", {}), state.get("failed")
    if wait.get("waiting_for_labels"):
        lines.append(waiting_line(paths.run, wait))
    elif wait:
        lines.append(f"round {wait['round']}: stopped after its {wait['finished']}; --resume goes on")
    if failed:
        lines.append(f"round {failed['round']}: training loss became {failed['loss']} at step {failed['step']} "
                     f"(--lr {failed['lr']}); go on with --resume and a lower --lr")
    if log:
        last = log[-1]
        names = {"train_loss": "train loss", "heldout_loss": "held-out", "test_loss": "test"}
        losses = [f"{n} {last[k]:.4f}" for k, n in names.items() if last.get(k) is not None]
        lines.append(f"round {last['round']}: " + " | ".join(losses))
    if os.path.isdir(paths.ckpt):
        lines.append(f"model: {paths.ckpt}; labelled set: {paths.selected}")
    return "\n".join(lines)
