"""Command lines: --help as written, one definition per flag, run flags vs run-control flags, flags
that do not apply to the chosen strategy."""
import json
import os
import subprocess
import sys

import pytest

import acquisition_AL
import al_scoring as SC
import al_utils as U
import eval_generate
import train_AL
from conftest import ROOT

BASE = ["--init_checkpoint_path", "m", "--model_path", "r", "--al_data_fraction", "10"]

# every flag of acquisition_AL.py, by what it is: a run's identity (changing it on --resume is refused)
# or run control. A new flag fails this test until it is put in one of the two lists.
RUN = {"file_path", "init_checkpoint_path", "heldout_size", "num_acquisition_samples", "warm_start",
       "model_config_path", "seed", "sampling_strategy", "stratification_strategy", "pick_samples_from",
       "mixed_sampling_factor", "num_k", "decay_k", "cluster_data_fraction", "random_pool_fraction",
       "model_max_length", "score_token_budget", "batch_size", "gen_max_new_tokens", "self_ask_positions",
       "num_clusters", "cluster_embedding", "ifd_max", "lr", "epochs", "train_batch_size", "grad_accum",
       "train_max_length", "weight_decay", "adam_beta1", "adam_beta2", "warmup_ratio", "max_grad_norm",
       "seed_strategy", "max_similarity", "target_file", "target_group_field", "grad_dim", "grad_projection",
       "grad_answers", "shortlist", "budget_unit", "test_file", "prompt_template", "lora_r", "lora_alpha",
       "lora_dropout", "lora_target_modules", "target_aggregation", "target_normalize"}
CONTROL = {"model_path", "al_data_fraction", "resume", "resume_checkpoint_path", "overwrite", "stop_after_round",
           "save_file_name", "plot_ppl_hist", "threads", "no_progress", "deterministic", "save_opt",
           "activation_checkpointing", "annotate_out", "labels", "draft_answers", "draft_max_new_tokens", "config",
           "print_config", "status"}


def test_every_flag_is_classified(tmp_path):
    p = acquisition_AL.parser()
    dests = {a.dest for a in p._actions if a.dest != "help"}
    assert dests == RUN | CONTROL
    assert U.runtime_flags(p, acquisition_AL.ANNOTATION) == CONTROL
    flags = acquisition_AL.run_flags(acquisition_AL.parse_args(BASE), "HASH", annotate=False)
    assert set(flags) == RUN | {"labels_from"} and flags["file_path"] == "HASH"
    # save_opt joins them where the strategy reads what it saves (less: the Adam moments)
    (tmp_path / "t.jsonl").write_text("{}\n")
    less = acquisition_AL.parse_args(BASE + ["--sampling_strategy", "less", "--target_file", str(tmp_path / "t.jsonl"),
                                             "--save_opt"])
    assert acquisition_AL.run_flags(less, "HASH", annotate=False)["save_opt"] is True


@pytest.mark.parametrize("script", ["acquisition_AL.py", "train_AL.py", "eval_generate.py", "convert_fsdp_to_hf.py"])
def test_help_keeps_the_examples_line_breaks(script):
    out = subprocess.run([sys.executable, os.path.join(ROOT, script), "--help"], capture_output=True, text=True,
                         check=True).stdout
    first = next(line for line in open(os.path.join(ROOT, script)) if line.rstrip().endswith("\\"))
    lines = out.splitlines()
    assert first.rstrip() in lines  # the example's first line, backslash included, on its own line
    nxt = lines[lines.index(first.rstrip()) + 1]
    assert nxt.startswith(" " * 8) and nxt.strip()  # and the continuation on the next, as written


def test_shared_flags_are_one_definition():
    """--threads, --seed, --no_progress, --deterministic, --model_config_path: same help in every script."""
    shared = {"threads", "no_progress", "deterministic", "model_config_path"}

    def helps(p):
        return {a.dest: a.help for a in p._actions if a.dest in shared}

    train = train_AL.parser()
    assert helps(acquisition_AL.parser()) == helps(train)
    assert set(helps(train)) == shared
    args = eval_generate.parse_args(["--save_file_name", "x", "--threads", "1", "--no_progress", "--seed", "3",
                                     "--deterministic"])
    assert (args.threads, args.no_progress, args.seed, args.model_config_path, args.deterministic) == \
        (1, True, 3, None, True)


def test_save_opt_one_setting_two_names():
    assert not acquisition_AL.parse_args(BASE).save_opt  # the loop keeps no optimizer state by default
    assert acquisition_AL.parse_args(BASE + ["--save_opt"]).save_opt
    assert not acquisition_AL.parse_args(BASE + ["--dont_save_opt"]).save_opt
    t = ["--init_checkpoint_path", "m", "--data_path", "d", "--save_path", "s"]
    assert train_AL.parser().parse_args(t).save_opt and train_AL.parser().parse_args(t + ["--save_opt"]).save_opt
    assert not train_AL.parser().parse_args(t + ["--dont_save_opt"]).save_opt
    with pytest.raises(SystemExit):
        train_AL.parser().parse_args(t + ["--save_opt", "--dont_save_opt"])


def test_flags_that_do_not_apply_are_recorded_as_unused():
    a = acquisition_AL.parse_args(BASE + ["--sampling_strategy", "cluster", "--num_clusters", "4"])
    assert (a.stratification_strategy, a.pick_samples_from, a.num_k, a.decay_k, a.mixed_sampling_factor) == \
        (None,) * 5
    assert (a.num_clusters, a.gen_max_new_tokens, a.self_ask_positions, a.ifd_max) == (4, None, None, None)
    a = acquisition_AL.parse_args(BASE + ["--stratification_strategy", "bucket", "--num_k", "3", "--decay_k"])
    assert (a.num_k, a.decay_k, a.mixed_sampling_factor) == (3, True, None)
    a = acquisition_AL.parse_args(BASE + ["--stratification_strategy", "mixed", "--pick_samples_from", "uniform"])
    assert a.mixed_sampling_factor is None  # mixed/uniform is a seeded random n: no factor
    # one flag set serves a loop over strategies: scoring-pass settings are accepted by model-free ones
    a = acquisition_AL.parse_args(BASE + ["--sampling_strategy", "random", "--model_max_length", "384"])
    assert (a.model_max_length, a.score_token_budget, a.batch_size) == (None, None, None)
    assert SC.ScoreConfig() == acquisition_AL.score_config(a, progress=True)


@pytest.mark.parametrize("extra, error", [
    (["--sampling_strategy", "cluster", "--stratification_strategy", "bucket"],
     "--stratification_strategy: bucket has no effect with --sampling_strategy cluster (only strategies ranked by "
     "score (cluster and typiclust pick by their own rule) reads it); leave it out"),
    (["--stratification_strategy", "mixed", "--pick_samples_from", "uniform", "--mixed_sampling_factor", "0.5"],
     "--mixed_sampling_factor: 0.5 has no effect with --sampling_strategy forward_ppl --stratification_strategy "
     "mixed (only --stratification_strategy mixed with --pick_samples_from top or bottom reads it); leave it out"),
    (["--ifd_max", "2"], "--ifd_max: 2.0 has no effect with --sampling_strategy forward_ppl (only "
                         "--sampling_strategy ifd reads it); leave it out"),
])
def test_flag_that_would_be_ignored_is_refused(extra, error):
    with pytest.raises(U.InputError) as e:
        acquisition_AL.parse_args(BASE + extra)
    assert str(e.value) == error


def test_cluster_run_records_what_it_used(pool, tiny_model, tmp_path):
    run = tmp_path / "c"
    acquisition_AL.main(["--file_path", pool, "--init_checkpoint_path", tiny_model, "--model_path", str(run),
                         "--al_data_fraction", "60", "--num_acquisition_samples", "30", "--sampling_strategy",
                         "cluster", "--num_clusters", "3", "--epochs", "1", "--train_max_length", "128",
                         "--model_max_length", "128", "--threads", "2", "--no_progress"])
    flags = json.load(open(run / "state.json"))["flags"]
    assert flags["stratification_strategy"] is None and flags["num_clusters"] == 3
    scores = {r["id"]: r for r in map(json.loads, open(run / "rounds" / "1" / "scores.jsonl"))}
    picked = [json.loads(line)["id"] for line in open(run / "rounds" / "1" / "selected.jsonl")]
    # round-robin over clusters, best score first: the first three picks are the three clusters' best
    best = {}
    for r in sorted(scores.values(), key=lambda r: -r["score"]):
        best.setdefault(r["cluster"], r["id"])
    assert picked[:3] == list(best.values())


def test_progress_into_a_file_is_one_line_per_phase(tmp_path):
    """nohup/SLURM logs get no carriage-return frames: one line when a phase ends; a terminal gets
    tqdm's bar."""
    import fcntl
    import os
    import pty
    import re
    import struct
    import termios

    code = "import al_utils\nfor _ in al_utils.progress_bar(range(50), desc='scoring'): pass\n"
    with open(tmp_path / "log", "w") as f:
        subprocess.run([sys.executable, "-c", code], stderr=f, cwd=ROOT, check=True)
    assert re.fullmatch(r"scoring: 50/50 its in \d\d:\d\d\n", (tmp_path / "log").read_text())
    main, term = pty.openpty()
    fcntl.ioctl(term, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a pty starts 0 columns wide
    subprocess.run([sys.executable, "-c", code], stderr=term, cwd=ROOT, check=True)
    os.close(term)
    out = b""
    while True:  # until the terminal's other end reports it closed
        try:
            chunk = os.read(main, 1 << 16)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    assert b"\r" in out and b"scoring: 100%" in out and b"50/50" in out
