"""The command line's options for run settings come from the same model fields as the
DAG's Params: same names, defaults and choices, and a new field is a new option."""

from __future__ import annotations

import argparse
from typing import ClassVar

import pytest

from simia.cli import _parser
from simia.settings import (DatasetDesign, GenerationSettings, LLMSettings, SeedSettings,
                            TrainingConfig, defined_settings)
from simia.settings.cli import add_options, options_model
from simia.settings.fields import SettingsModel, setting


def _args(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(list(argv))


@pytest.mark.parametrize("argv, model, extra", [
    (["train-config", "--datasets", "d", "--level", "5", "-o", "x.yaml"], TrainingConfig,
     {"extra": {}}),
    (["build-datasets", "--conversations", "c", "--scores", "s", "-o", "o"], DatasetDesign,
     {}),
    (["generate", "--seeds", "s", "-o", "o"], GenerationSettings, {}),
    (["generate-seeds", "-o", "o"], SeedSettings, {}),
    (["judge", "c", "-o", "o"], LLMSettings, {}),
])
def test_the_options_defaults_build_the_models_defaults(argv, model, extra):
    assert options_model(model, _args(*argv), **extra) == model(**extra)


def test_options_carry_the_param_names_and_choices():
    args = _args("train-config", "--datasets", "d", "--level", "5", "-o", "x.yaml",
                 "--model", "m", "--batch-size", "4", "--no-bf16", "--deepspeed", "zero2")
    cfg = options_model(TrainingConfig, args, extra={})
    assert (cfg.model, cfg.per_device_train_batch_size, cfg.bf16, cfg.deepspeed) == (
        "m", 4, False, "zero2")
    with pytest.raises(SystemExit):
        _args("train-config", "--datasets", "d", "--level", "5", "-o", "x", "--deepspeed",
              "zero9")
    design = options_model(DatasetDesign, _args("build-datasets", "--conversations", "c",
                                                "--scores", "s", "-o", "o", "--levels",
                                                "0,10", "--size", "20", "--shared-clean",
                                                "10", "--threshold", "1"))
    assert (design.levels, design.size, design.shared_clean, design.threshold) == (
        (0, 10), 20, 10, 1)


def test_a_new_setting_field_is_a_new_option_with_its_default():
    class Extra(SettingsModel):
        section: ClassVar[str] = "Training"
        warmup_ratio: float = setting(0.1, ge=0, le=1, title="Warm-up ratio",
                                      description="Share of steps warming up.")

    parser = argparse.ArgumentParser()
    add_options(parser, Extra)
    assert parser.parse_args([]).warmup_ratio == 0.1
    assert parser.parse_args(["--warmup-ratio", "0.2"]).warmup_ratio == 0.2
    assert "Share of steps warming up" in parser.format_help()


def test_every_setting_of_a_cli_model_is_an_option():
    defined = defined_settings()
    help_text = " ".join(_parser()._subparsers._group_actions[0].choices[c].format_help()
                         for c in ("train-config", "build-datasets", "generate", "judge"))
    for model in (TrainingConfig, DatasetDesign, GenerationSettings, LLMSettings):
        for s in defined.values():
            if s.model is model and s.field != "extra":
                assert f"--{s.cli}" in help_text, s.param


def test_a_new_training_field_reaches_the_yaml_and_extra_may_not_set_it(tmp_path):
    from pydantic import ValidationError

    from simia.containers.training import level_train_config

    class WithWarmup(TrainingConfig):
        warmup_ratio: float = setting(0.1, ge=0, le=1, title="Warm-up ratio",
                                      description="Share of steps warming up.")

    yaml = level_train_config(WithWarmup(deepspeed="none"), dataset="d", dataset_dir=tmp_path,
                              output_dir=tmp_path / "out", deepspeed_path=None)
    assert yaml["warmup_ratio"] == 0.1
    assert "warmup_ratio" not in level_train_config(
        TrainingConfig(deepspeed="none"), dataset="d", dataset_dir=tmp_path,
        output_dir=tmp_path / "out", deepspeed_path=None)
    with pytest.raises(ValidationError, match="may not set warmup_ratio"):
        WithWarmup(extra={"warmup_ratio": 0.2})
