"""A run's settings: config files, --print_config, the spec a run records and continues with, the
settings a resume may and may not change, the prompt template a checkpoint records."""
import gc
import json

import pytest
import yaml

import acquisition_AL
import eval_generate
import fsdp_utils
from al_utils import InputError, effective_config
from conftest import write_jsonl
from test_annotation import fill, pools, same_result  # noqa: F401  (pools: a fixture)

BASE = ["--file_path", "p.jsonl", "--init_checkpoint_path", "m", "--model_path", "runs/x", "--al_data_fraction", "90"]


def spec_of(argv):
    return effective_config(acquisition_AL.parser(), acquisition_AL.parse_args(argv))


def printed(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        acquisition_AL.parse_args(argv + ["--print_config"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_every_flag_in_help_print_config_and_spec(capsys):
    """A setting declared once shows up everywhere: --help, --print_config and the recorded spec."""
    p = acquisition_AL.parser()
    text = p.format_help()
    cfg = yaml.safe_load(printed(BASE, capsys))
    for a in p._actions:
        if a.dest in ("help", "config", "print_config"):
            continue
        assert all(s in text for s in a.option_strings), a.option_strings
        assert a.dest in cfg
    assert set(cfg) == set(spec_of(BASE))


def test_config_file_with_override_equals_command_line(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("sampling_strategy: less\nsave_opt: true\nlr: 1e-3\nepochs: 2\nstratification_strategy: bucket\n"
                 "num_k: 3\n"
                 "file_path: p.jsonl\ninit_checkpoint_path: m\nal_data_fraction: 90\n")
    from_file = spec_of(["--config", str(f), "--model_path", "runs/x", "--epochs", "1"])
    typed = spec_of(BASE + ["--sampling_strategy", "less", "--save_opt", "--lr", "0.001", "--epochs", "1",
                            "--stratification_strategy", "bucket", "--num_k", "3"])
    assert from_file == typed and from_file["epochs"] == 1 and from_file["lr"] == 0.001
    # what --print_config writes loads back as the same settings
    (tmp_path / "printed.yaml").write_text(printed(BASE + ["--config", str(f)], capsys))
    assert spec_of(["--config", str(tmp_path / "printed.yaml")]) == spec_of(BASE + ["--config", str(f)])
    f.write_text("dont_save_opt: true\n")  # the inverse switch is a key too
    assert spec_of(BASE + ["--config", str(f)])["save_opt"] is False
    f.write_text("num_k: 3\n")  # a setting the strategy ignores is refused from a file as from a flag
    with pytest.raises(InputError, match="--num_k: 3 has no effect"):
        spec_of(BASE + ["--config", str(f)])


def test_annotation_campaign_continues_by_name(pools, tiny_model, tmp_path, capsys):  # noqa: F811
    """Three imports with --model_path and --labels alone equal the run that typed every flag
    (the oracle run, which test_annotation shows equal to the annotation run retyping them)."""
    from test_annotation import run

    oracle, bare, answers = pools
    run(oracle, tiny_model, tmp_path / "oracle")
    work = tmp_path / "ann"
    run(bare, tiny_model, work, "--annotate_out", str(tmp_path / "batch.jsonl"))
    before = (work / "state.json").read_bytes()
    capsys.readouterr()
    acquisition_AL.main(["--model_path", str(work), "--status"])  # read only, needs no other flag
    assert capsys.readouterr().out == (
        f"run {work}: 0 round(s) done, 0 of 120 examples labelled\n"
        f"waiting for labels: 40 of round 0's 40 examples are in {tmp_path / 'batch.jsonl'}; fill their `output`, "
        f"then: python acquisition_AL.py --model_path {work} --labels FILE\n")
    assert (work / "state.json").read_bytes() == before
    for k in range(3):
        acquisition_AL.main(["--model_path", str(work),
                             "--labels", fill(tmp_path / "batch.jsonl", answers, tmp_path / f"f{k}.jsonl")])
        if k < 2:  # the next batch went to the recorded --annotate_out, with the recorded flags
            assert f"--model_path {work} --labels FILE" in capsys.readouterr().err
    state = json.load(open(work / "state.json"))
    assert state["rounds_done"] == 2 and state["spec"]["annotate_out"] == str(tmp_path / "batch.jsonl")
    capsys.readouterr()
    acquisition_AL.main(["--model_path", str(work), "--status"])
    assert capsys.readouterr().out.startswith(f"run {work}: 3 round(s) done, 120 of 120 examples labelled (finished)\n")
    same_result(work, tmp_path / "oracle")
    # a setting given again with its value is accepted, a different one refused with the difference
    with pytest.raises(InputError, match=r"flags or pool differ .*: lr: 0.001 -> 0.002"):
        acquisition_AL.main(["--model_path", str(work), "--resume", "--lr", "0.002"])


def test_a_run_made_before_specs_asks_for_its_flags(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "state.json").write_text(json.dumps({"flags": {}, "rounds_done": 0}))
    with pytest.raises(InputError, match="made before runs recorded their settings: give its flags again"):
        acquisition_AL.parse_args(["--model_path", str(tmp_path / "old"), "--resume"])


def test_resume_may_not_flip_save_opt_under_less(pool, tiny_model, tmp_path):
    rows = [json.loads(line) for line in open(pool)]
    p, target = write_jsonl(tmp_path / "p.jsonl", rows[:60]), write_jsonl(tmp_path / "t.jsonl", rows[60:64])
    argv = ["--file_path", p, "--init_checkpoint_path", tiny_model, "--model_path", str(tmp_path / "r"),
            "--al_data_fraction", "40", "--num_acquisition_samples", "20", "--sampling_strategy", "less",
            "--target_file", target,
            "--epochs", "1", "--grad_accum", "2", "--train_max_length", "128", "--model_max_length", "128",
            "--threads", "2", "--no_progress", "--save_opt"]
    acquisition_AL.main(argv + ["--stop_after_round", "0"])
    assert fsdp_utils.checkpoint_meta(str(tmp_path / "r_sharded"))["prompt_template"] == "alpaca"
    without = [a for a in argv if a != "--save_opt"] + ["--resume"]
    assert acquisition_AL.parse_args(without).save_opt  # not given: the recorded value
    with pytest.raises(InputError, match="save_opt: True -> False"):
        acquisition_AL.main(without + ["--dont_save_opt"])


def test_non_finite_loss_stops_and_a_lower_lr_goes_on(pool, tiny_model, tmp_path, capsys):
    """A loss that becomes infinite stops the round (nothing saved, the state says where); a resume
    may lower --lr from that round on, and the change is recorded."""
    p = write_jsonl(tmp_path / "p.jsonl", [json.loads(line) for line in open(pool)][:40])
    argv = ["--file_path", p, "--init_checkpoint_path", tiny_model, "--model_path", str(tmp_path / "r"),
            "--al_data_fraction", "16", "--num_acquisition_samples", "16", "--epochs", "2", "--grad_accum", "1",
            "--train_batch_size", "4", "--train_max_length", "128", "--model_max_length", "128", "--threads", "2",
            "--no_progress", "--warmup_ratio", "0"]
    with pytest.raises(SystemExit) as e:
        acquisition_AL.run_cli(lambda: acquisition_AL.main(argv + ["--lr", "1e30"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert err[0].startswith("error: round 0: training loss became ") and "--resume --lr 1e+29" in err[0]
    state = json.load(open(tmp_path / "r" / "state.json"))
    assert state["rounds_done"] == -1 and state["failed"]["round"] == 0
    assert not (tmp_path / "r_sharded").exists()
    del e  # the failed run's frames (and the run lock its process would have released on exit)
    gc.collect()
    acquisition_AL.main(["--model_path", str(tmp_path / "r"), "--resume", "--lr", "1e-3"])
    state = json.load(open(tmp_path / "r" / "state.json"))
    assert state["rounds_done"] == 0 and "failed" not in state and state["flags"]["lr"] == 1e-3
    assert state["changes"] == [{"from_round": 0, "lr": 1e-3, "was": 1e30}]


def test_eval_uses_the_template_a_checkpoint_was_trained_with(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    assert eval_generate.template_of(str(d), None, False) == "alpaca"  # nothing recorded: the default
    (d / "al_checkpoint.json").write_text(json.dumps({"prompt_template": "chat"}))
    assert eval_generate.template_of(str(d), None, False) == "chat"
    assert eval_generate.template_of(str(d), "chat", False) == "chat"
    with pytest.raises(InputError, match="trained with --prompt_template chat, not alpaca"):
        eval_generate.template_of(str(d), "alpaca", False)
    assert eval_generate.template_of(str(d), "alpaca", True) == "alpaca"


@pytest.mark.parametrize("name", ["quickstart", "targeted_smollm2", "annotation"])
def test_example_configs_parse(name):
    """configs/: every key known and typed, every setting used by its strategy."""
    from conftest import ROOT

    args = acquisition_AL.parse_args(["--config", f"{ROOT}/configs/{name}.yaml", "--model_path", "runs/x",
                                      "--al_data_fraction", "100"])
    assert args.model_path == "runs/x" and args.al_data_fraction == 100


def test_a_training_setting_is_declared_once():
    """TrainConfig's fields are the training flags: default, type and help come from the field."""
    from dataclasses import fields

    from al_training import TrainConfig

    acts = {a.dest: a for a in acquisition_AL.parser()._actions}
    declared = [f for f in fields(TrainConfig) if "help" in f.metadata]
    assert len(declared) == 10
    for f in declared:
        a = acts[f.metadata["flag"] or f.name]
        assert (a.default, a.type, a.help) == (f.default, type(f.default), f.metadata["help"])
    with pytest.raises(InputError, match="--train_max_length: must be >= 1"):
        TrainConfig(max_length=0)


@pytest.mark.parametrize("where", ["al_training.TrainConfig", "al_scoring.ScoreConfig", "al_selection.SelectConfig",
                                   "al_similarity.TargetConfig", "al_lora.LoraSpec", "al_annotation.AnnotationConfig"])
def test_every_config_declares_its_flags(where):
    """Each config's setting() fields are acquisition_AL.py's flags: default, help and choices from the
    field, an on-switch where the default is False; and every declared flag belongs to one field."""
    import importlib
    from dataclasses import fields

    mod, name = where.split(".")
    cls = getattr(importlib.import_module(mod), name)
    acts = {a.dest: a for a in acquisition_AL.parser()._actions}
    declared = [f for f in fields(cls) if "help" in f.metadata]
    assert declared
    for f in declared:
        a = acts.pop(f.metadata["flag"] or f.name)
        assert (a.default, a.help, a.choices) == (f.default, f.metadata["help"], f.metadata["choices"])
        assert (a.nargs == 0) == (f.default is False)  # store_true
    assert cls() == cls(**{f.name: f.default for f in declared})  # the defaults pass the class's own checks


def test_strategy_names_match_the_strategy_table():
    import al_selection
    import al_strategies

    assert tuple(al_strategies.STRATEGIES) == al_selection.STRATEGY_NAMES
