"""The ``larimar`` command's parsing (larimar/cli): one config mechanism, errors that name the key."""

import pytest

from larimar.cli import COMMANDS, main
from larimar.cli.eval import parse_args
from larimar.evaluation.config import EvalConfig


def test_eval_flags_and_key_value_overrides_are_the_same_settings():
    flags = parse_args(
        [
            "zsre",
            "--model",
            "m",
            "--data",
            "d",
            "--batch-size",
            "8",
            "--no-subjects",
            "--sizes",
            "1,2",
            "--editor-opt",
            "layer=3",
            "--editor-opt",
            "v_steps=2",
            "--editor",
            "rome",
        ]
    )
    pairs = parse_args(
        [
            "zsre",
            "--model",
            "m",
            "--data",
            "d",
            "batch_size=8",
            "use_subjects=false",
            "sizes=[1,2]",
            "editor=rome",
            "editor_options=[layer=3, v_steps=2]",
        ]
    )
    assert flags == pairs
    assert flags.batch_size == 8 and not flags.use_subjects and flags.sizes == [1, 2]
    assert flags.editor_options == ["layer=3", "v_steps=2"]
    # what was not given keeps EvalConfig's own default: the parser holds no second copy of it
    assert flags.eval_cap == EvalConfig("zsre", "m", "d").eval_cap
    assert parse_args(["zsre", "--model", "m", "--data", "d", "--scope-model", "none"]).scope_model is None


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["zsre", "--model", "m", "--data", "d", "eval_capp=3"], "eval_capp"),
        (["zsre", "--model", "m", "--data", "d", "--limit", "0"], "--limit"),
        (["zsre", "--model", "m", "--data", "d", "batch_size=many"], "batch_size"),
        (["zsre", "--data", "d"], "--model"),
    ],
)
def test_eval_errors_name_the_key(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2 and named in capsys.readouterr().err


def test_the_dispatcher_lists_every_command_and_refuses_unknown_ones(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    with pytest.raises(SystemExit) as exit_info:
        main(["trian"])
    assert exit_info.value.code == 2 and "unknown command 'trian'" in capsys.readouterr().err
    assert main(["recipes"]) == 0 and "larimar-smol-v2" in capsys.readouterr().out.split()


def test_serve_settings_errors_name_the_key():
    from larimar.config import ConfigError
    from larimar.serving.schemas import load_settings

    settings = load_settings({"overrides": ["limits.max_tokens=64", "default_slots=32"]}, {"model": "larimar-smol-v2"})
    assert settings.limits.max_tokens == 64 and settings.default_slots == 32 and settings.model == "larimar-smol-v2"
    for bad, named in [
        ("limits.bogus=1", "limits.bogus"),
        ("default_slots=0", "default_slots"),
        ("scope_threshold=2", "scope_threshold"),
        ("decoder_precision=fp16", "decoder_precision"),
        ("decoder_batch_size=0", "decoder_batch_size"),
    ]:
        with pytest.raises(ConfigError, match=named):
            load_settings({"overrides": [bad]}, {"model": "larimar-smol-v2"})
    # the decoder's precision: int8 by default on CPU, as trained on GPUs, int8 refused there
    assert settings.decoder_dtype == "int8"
    gpu = load_settings({"overrides": ["decoder_device=cuda"]}, {"model": "larimar-smol-v2"})
    assert gpu.decoder_dtype == "fp32"
    with pytest.raises(ConfigError, match="int8 runs on CPU only"):
        load_settings({"overrides": ["decoder_device=cuda", "decoder_precision=int8"]}, {"model": "larimar-smol-v2"})
