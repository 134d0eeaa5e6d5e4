"""Config presets, overrides and their errors."""

import pytest

from cosalign.config import (
    MATCHES,
    ConfigError,
    from_dict,
    load_config,
    resolve_preset,
    to_dict,
)
from cosalign.methods import apply_method, method_config


def test_presets_load_and_round_trip():
    for name in ("minicity", "gta5_to_cityscapes", "synthia_to_cityscapes", "cityscapes_to_acdc",
                 "cityscapes_to_darkzurich"):
        cfg = load_config(name)
        assert to_dict(from_dict(to_dict(cfg))) == to_dict(cfg)


def test_override_sets_typed_value():
    cfg = load_config("minicity", ["align.tau=0.7", "optim.lr=1", "data.source.size=[64, 32]",
                                   "model.weights=null"])
    assert cfg.align.tau == 0.7
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.data.source.size == (64, 32)
    assert cfg.model.weights is None


def test_exponent_notation_is_a_float():
    # YAML 1.1 reads 1e-3 (no dot) as a string; users type it on the command line
    cfg = load_config("minicity", ["loss.ent=1e-3", "optim.lr=2.5E-4"])
    assert cfg.loss.ent == 1e-3 and cfg.optim.lr == 2.5e-4
    with pytest.raises(ConfigError, match="loss.ent: expected float"):
        load_config(None, ["loss.ent=small"])
    with pytest.raises(ConfigError, match="train.iters: expected int"):
        load_config(None, ["train.iters=1e3"])


def test_unknown_key_names_the_nearest_and_the_section_keys():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["loss.lamda=1"])
    assert "loss.lamda" in str(e.value) and "keys of loss: aux, cos, ent" in str(e.value)
    with pytest.raises(ConfigError, match="did you mean align.tau"):
        load_config(None, ["loss.tua=0.5"])  # loss.tau is align.tau's old name
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(None, ["loss=1"])


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="train.iters: expected int"):
        load_config(None, ["train.iters=abc"])
    with pytest.raises(ConfigError, match="expected 2 values"):
        load_config(None, ["data.source.size=[1, 2, 3]"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["align.tau"])


def test_bad_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss:\n  tau: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(str(bad))
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("loss:\n  nope: 1\n")
    with pytest.raises(ConfigError, match="wrong.yaml.*loss.nope"):
        load_config(str(wrong))
    with pytest.raises(ConfigError, match="presets"):
        resolve_preset("no_such_preset")


def test_methods_set_loss_weights():
    cfg = apply_method(load_config("minicity"), "minent")
    assert (cfg.loss.cos, cfg.loss.ent, cfg.loss.ent_aux) == (0.0, 1e-3, 2e-4)
    ours = apply_method(load_config("minicity"), "ours")
    assert ours.loss.cos == load_config("minicity").loss.cos > 0
    with pytest.raises(ConfigError, match="unknown method"):
        apply_method(load_config("minicity"), "no_such_method")


def test_overrides_win_over_the_method():
    cfg = method_config("minicity", ["loss.ent=0.01"], method="minent")
    assert cfg.loss.ent == 0.01 and cfg.loss.ent_aux == 2e-4
    with pytest.raises(ConfigError, match="needs loss.cos > 0"):
        method_config("minicity", ["loss.cos=0"], method="ours")


@pytest.mark.parametrize("key, bad", [("align.match", "bar"), ("model.bn", "foo"),
                                      ("align.reference", "foo"), ("train.amp", "fp8"),
                                      ("data.source.dataset", "kitti"), ("align.matmul", "tf32")])
def test_a_value_outside_the_fields_choices_is_an_error_naming_them(key, bad):
    with pytest.raises(ConfigError, match=f"{key}: expected one of .*got '{bad}'"):
        load_config(None, [f"{key}={bad}"])
    cfg = load_config(None)
    assert cfg.align.match in MATCHES


def test_keys_of_the_old_layout_load_as_their_new_names(tmp_path):
    """Configs and checkpoints written before 0.2 kept the alignment's and the dictionary's
    settings under loss:; they load unchanged."""
    cfg = load_config(None, ["loss.tau=0.7", "loss.capacity=50", "loss.bf16_matmul=false"])
    assert (cfg.align.tau, cfg.dictionary.capacity, cfg.align.matmul) == (0.7, 50, "fp32")
    old = to_dict(load_config("minicity"))
    old["loss"].update({"tau": 0.6, "start_iter": 7, "per_image": 3, "bf16_matmul": None})
    del old["align"], old["dictionary"]
    back = from_dict(old)
    assert (back.align.tau, back.align.start_iter, back.dictionary.per_image,
            back.align.matmul) == (0.6, 7, 3, "auto")


def test_a_presets_methods_section_applies_to_that_method_only(tmp_path):
    cfg = method_config("gta5_to_cityscapes", [], "dacs")
    assert (cfg.data.batch_size, cfg.data.source.crop, cfg.train.iters) == (2, (512, 512), 250000)
    assert method_config("gta5_to_cityscapes", [], "ours").data.batch_size == 1
    assert method_config("gta5_to_cityscapes", ["data.batch_size=4"], "dacs").data.batch_size == 4
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods:\n  dacs:\n    data: {batchsize: 2}\n")
    with pytest.raises(ConfigError, match="bad.yaml.*data.batchsize"):
        load_config(str(bad))  # checked when loaded, whatever the method
    bad.write_text("methods:\n  dacs: 3\n")
    with pytest.raises(ConfigError, match="methods.dacs: expected a mapping"):
        load_config(str(bad))


def test_the_depths_offered_are_the_resnets_built():
    from cosalign.config import DEPTHS
    from cosalign.models.resnet import BLOCKS_PER_DEPTH

    assert DEPTHS == tuple(sorted(BLOCKS_PER_DEPTH))
