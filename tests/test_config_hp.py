"""One style for every hyper-parameter: ``hp(...)`` fields with declared ranges and choices,
checked by ``make_config`` (and by :class:`~detox.attacks.base.Attack` for configs given
directly)."""

import dataclasses
import re

import pytest

from detox.attacks import ATTACKS, make_attack
from detox.config import DataConfig, Range, check_fields, describe_fields, hp, make_config
from detox.defenses.detectors.badloss import BaDLossConfig
from detox.defenses.detectors.base import DETECTORS
from detox.defenses.detectors.ultraclean import UltraCleanConfig
from detox.defenses.filters.base import FILTERS
from detox.defenses.purifiers.base import PURIFIERS
from detox.defenses.purifiers.sampdetox import SampDetoxConfig
from detox.defenses.purifiers.shrinkpad import ShrinkPadConfig
from detox.defenses.repairs.base import REPAIRS
from detox.diffusion.presets import DiffusionTrainConfig
from detox.errors import ConfigError
from detox.pipeline.victims import ExperimentConfig
from detox.training import TrainConfig

PLAIN = (TrainConfig, DataConfig, ExperimentConfig, DiffusionTrainConfig)


def all_configs() -> list[type]:
    """Every registered attack, detector and purifier config, and the plain configs."""
    out = [ATTACKS.get(n).Config for n in ATTACKS.names()]
    out += [DETECTORS.get(n).Config for n in DETECTORS.names()]
    out += [PURIFIERS.get(n).Config for n in PURIFIERS.names()]
    out += [FILTERS.get(n).Config for n in FILTERS.names()]
    out += [REPAIRS.get(n).Config for n in REPAIRS.names()]
    return list(dict.fromkeys([*out, *PLAIN]))


def raises(message: str):
    return pytest.raises(ConfigError, match=re.escape(message))


# -- ranges -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "setting", "message"),
    [
        (TrainConfig, {"lr": -1.0}, "lr=-1.0: expected a value in (0, inf)"),
        (TrainConfig, {"lr": "-1"}, "lr=-1.0: expected a value in (0, inf)"),  # CLI string
        (TrainConfig, {"batch_size": 0}, "batch_size=0: expected a value in [1, inf)"),
        (TrainConfig, {"label_smoothing": 1.5}, "label_smoothing=1.5: expected a value in [0, 1]"),
        (UltraCleanConfig, {"remove_fraction": 1.5}, "remove_fraction=1.5: expected a value in [0, 1]"),
        (BaDLossConfig, {"remove_fraction": 1.5}, "remove_fraction=1.5: expected a value in [0, 1]"),
        (BaDLossConfig, {"eps": 0.0}, "eps=0.0: expected a value in (0, inf)"),
        (SampDetoxConfig, {"t1": -1}, "t1=-1: expected a value in [0, inf)"),
        (SampDetoxConfig, {"stride": 0}, "stride=0: expected a value in [1, inf)"),
        (ShrinkPadConfig, {"fill": 2.0}, "fill=2.0: expected a value in [0, 1]"),
        (DataConfig, {"train_subset": 0}, "train_subset=0: expected a value in [1, inf)"),
        (DataConfig, {"image_size": "-3"}, "image_size=-3: expected a value in [1, inf)"),
        (DiffusionTrainConfig, {"ema_decay": 1.0}, "ema_decay=1.0: expected a value in [0, 1)"),
        (ExperimentConfig, {"test_limit": 0}, "test_limit=0: expected a value in [1, inf)"),
    ],
)  # fmt: skip
def test_declared_range_refuses_out_of_range_values(cls, setting, message):
    with raises(message):
        make_config(cls, **setting)


def test_range_ends_open_and_closed():
    make_config(UltraCleanConfig, remove_fraction=0.0)  # [0, 1]: both ends valid
    make_config(UltraCleanConfig, remove_fraction=1.0)
    make_config(DiffusionTrainConfig, ema_decay=0.0)  # [0, 1): 0 valid, 1 not
    with raises("ratio=0.0: expected a value in (0, 1]"):
        make_attack("badnets", ratio=0.0)
    assert make_attack("badnets", ratio=1.0).config.ratio == 1.0


def test_non_numbers_are_refused_where_a_range_is_declared():
    with raises("lr=True: expected a value (a number) in (0, inf)"):
        make_config(TrainConfig, lr=True)
    with raises("ratio='a lot': expected a value (a number) in (0, 1]"):
        ATTACKS.get("badnets")(config=ATTACKS.get("badnets").Config(ratio="a lot"))


# -- choices ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "setting", "message"),
    [
        (TrainConfig, {"optimizer": "lion"}, "optimizer='lion': expected one of sgd, adamw"),
        (TrainConfig, {"pad_mode": "zero"}, "pad_mode='zero': expected one of reflect, constant"),
        (UltraCleanConfig, {"score_space": "probs"}, "score_space='probs': expected one of logits, softmax"),
        (BaDLossConfig, {"cut": "bogus"}, "cut='bogus': expected one of fraction, probe-quantile"),
        (SampDetoxConfig, {"noise_offset": 2}, "noise_offset=2: expected one of 0, 1"),
        (SampDetoxConfig, {"sampler": "euler"}, "sampler='euler': expected one of ddpm, ddim"),
    ],
)  # fmt: skip
def test_choices_refuse_unknown_values(cls, setting, message):
    with raises(message):
        make_config(cls, **setting)


def test_attack_choices_and_ranges_are_checked_on_every_path():
    with raises("ratio_of='test': expected one of train, target_class"):
        make_attack("badnets", ratio_of="test")
    with raises("pattern='star': expected one of grid, square"):
        make_attack("badnets", pattern="star")
    with raises("ratio_of='test': expected one of train, target_class"):
        make_attack("sig", ratio_of="test")  # SIG redeclares ratio_of: same choices
    # a config given directly (not through make_config) is checked too
    cfg = ATTACKS.get("blended").Config(alpha=1.5)
    with raises("alpha=1.5: expected a value in (0, 1]"):
        ATTACKS.get("blended")(config=cfg)
    with raises("target=-1: expected a value in [0, inf)"):
        make_attack("badnets", target=-1)
    with raises("target=1.5: expected a class index (an integer)"):
        make_attack("badnets", target=1.5)  # integrality: the config's validate()


# -- tuples and None ----------------------------------------------------------------------


def test_tuple_elements_are_checked():
    with raises("median_size=(0, 2): expected every element in [1, inf)"):
        make_config(UltraCleanConfig, median_size=(0, 2))
    with raises("step_milestones=(0.5, 1.5): expected every element in [0, 1]"):
        make_config(TrainConfig, step_milestones="0.5,1.5")
    with raises("block_out_channels=(16, 0): expected every element in [1, inf)"):
        make_config(DiffusionTrainConfig, block_out_channels=(16, 0))
    with raises("luma_weights=(0.3, -0.1, 0.8): expected every element in [0, 1]"):
        make_config(SampDetoxConfig, luma_weights=(0.3, -0.1, 0.8))
    assert make_config(TrainConfig, step_milestones=()).step_milestones == ()


def test_none_skips_the_check():
    check_fields(DataConfig(train_subset=None, test_subset=None, image_size=None))
    check_fields(UltraCleanConfig(known_target=None, known_poisons=None, workers=None))
    check_fields(BaDLossConfig(schedule_epochs=None, batch_size=None))
    check_fields(ATTACKS.get("badnets").Config(ratio_of=None))
    assert make_attack("sig", delta_test=None).config.delta_test is None
    with raises("delta_test=0.0: expected a value in (0, 255]"):
        make_attack("sig", delta_test=0.0)


# -- the one style, enforced ----------------------------------------------------------------


def test_every_field_is_declared_with_hp():
    keys = {"unit", "source", "help", "range", "choices"}
    for cls in all_configs():
        for f in dataclasses.fields(cls):
            where = f"{cls.__name__}.{f.name}"
            assert set(f.metadata) == keys, f"{where} is not declared with hp(...)"
            assert f.metadata["unit"] or f.metadata["help"], f"{where} has no unit or help"


def test_shipped_defaults_and_presets_satisfy_the_declarations():
    for cls in all_configs():
        make_config(cls)
        for preset in getattr(cls, "PRESETS", {}):
            make_config(cls, preset)
    for name in ATTACKS.names():
        attack = ATTACKS.get(name)
        for preset in attack.presets:
            check_fields(attack.preset_config(preset))
            attack(preset=preset)


# -- hp, Range, describe_fields ---------------------------------------------------------------


def test_range_convention():
    r = Range.parse("(0, 1]")
    assert (r.lo, r.hi, r.lo_open, r.hi_open) == (0.0, 1.0, True, False)
    assert 0 not in r and 0.5 in r and 1 in r and 1.0001 not in r and float("nan") not in r
    assert str(Range.parse("[1,)")) == "[1, inf)" and 10**9 in Range.parse("[1,)")
    assert str(Range.parse("( , 0]")) == "(-inf, 0]" and -1e300 in Range.parse("(, 0]")
    for bad in ("0, 1", "[0, inf]", "[1, 0]", "[a, 1]", "[-inf, 0]"):
        with pytest.raises(ValueError):
            Range.parse(bad)


def test_hp_declarations():
    from detox.attacks.base import hp as attacks_hp

    assert attacks_hp is hp  # the attack modules' import keeps working
    with pytest.raises(ValueError, match="default 2"):
        hp(2, "fraction", range="[0, 1]")  # a default outside its own range: caught at once
    with pytest.raises(ValueError, match="one of"):
        hp("c", choices=("a", "b"))
    with pytest.raises(ValueError, match="not both"):
        hp((), default_factory=tuple)

    @dataclasses.dataclass
    class Demo:
        sizes: list[int] = hp(
            unit="pixels", help="window sizes", range="[1, inf)", default_factory=lambda: [3]
        )
        mode: str = hp("a", "a | b", "[open]", choices=("a", "b"))

    assert make_config(Demo).sizes == [3] and Demo().sizes is not Demo().sizes
    with raises("sizes=[3, 0]: expected every element in [1, inf)"):
        make_config(Demo, sizes=[3, 0])
    assert describe_fields(Demo) == [
        {"name": "sizes", "default": [3], "unit": "pixels", "source": "", "help": "window sizes",
         "range": "[1, inf)", "choices": None},
        {"name": "mode", "default": "a", "unit": "a | b", "source": "[open]", "help": "",
         "range": None, "choices": ("a", "b")},
    ]  # fmt: skip


def test_describe_fields():
    rows = {r["name"]: r for r in describe_fields(TrainConfig)}
    assert list(rows) == [f.name for f in dataclasses.fields(TrainConfig)]
    assert rows["lr"]["default"] == 0.01 and rows["lr"]["range"] == "(0, inf)"
    assert rows["optimizer"]["choices"] == ("sgd", "adamw") and rows["optimizer"]["range"] is None
    assert rows["step_milestones"]["default"] == (0.5, 0.75)
    shrink = describe_fields(ShrinkPadConfig())[0]  # an instance works too
    assert shrink["name"] == "shrink" and shrink["source"] == "[BackdoorBox]"
    for cls in all_configs():
        for row in describe_fields(cls):
            assert set(row) == {"name", "default", "unit", "source", "help", "range", "choices"}
