"""Every option is checked once, up front, whichever way it arrives (dict, dotted key, TOML,
DitConfig built directly, dataclasses.replace, torch.compile's mode=): NaN/inf, ranges,
multiples, types, policy parameters against the block size, and deep merges into presets."""
import dataclasses
import math
import typing

import pytest
import torch
from hypothesis import given, settings, strategies as st

import ditcompile
from ditcompile.config import (
    SECTIONS, CacheConfig, ConfigError, DitConfig, SparseConfig, check_options, load_preset, resolve_config,
)
from ditcompile.masks import POLICIES


def _fields_of_type(kind):
    """(dotted key, field) of every section field whose type is `kind` (the schema, read independently)."""
    out = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        out += [(f"{section}.{f.name}", f) for f in dataclasses.fields(cls) if hints[f.name] is kind]
    return out


FLOAT_FIELDS = _fields_of_type(float)
INT_FIELDS = _fields_of_type(int)


def test_the_schema_sweep_sees_the_fields_the_issue_names():
    keys = {k for k, _ in FLOAT_FIELDS + INT_FIELDS}
    assert {"cache.threshold", "sparse.guard_budget", "sparse.block_size", "cache.compute_first"} <= keys


@pytest.mark.parametrize("key", [k for k, _ in FLOAT_FIELDS])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused_for_every_float_option(key, bad):
    with pytest.raises(ConfigError, match=rf"option '{key}' must be a finite number, got {bad!r}"):
        resolve_config({key: bad})


@pytest.mark.parametrize("key", [k for k, _ in FLOAT_FIELDS + INT_FIELDS])
@pytest.mark.parametrize("bad", [True, "1", None, [1]])
def test_numbers_refuse_bools_strings_and_lists(key, bad):
    with pytest.raises(ConfigError, match=f"option '{key}' must be"):
        resolve_config({key: bad})


@pytest.mark.parametrize("key, field", INT_FIELDS)
def test_every_int_option_refuses_floats_and_values_below_its_minimum(key, field):
    with pytest.raises(ConfigError, match=f"option '{key}' must be an integer, got 2.0"):
        resolve_config({key: 2.0})
    low = field.metadata.get("min")
    if low is not None:
        with pytest.raises(ConfigError, match=f"option '{key}' must be"):
            resolve_config({key: low - 1})


@pytest.mark.parametrize("options, message", [
    ({"cache.threshold": float("nan")}, "option 'cache.threshold' must be a finite number, got nan"),
    ({"sparse.guard_budget": float("nan")}, "option 'sparse.guard_budget' must be a finite number"),
    ({"sparse.block_size": 24}, "option 'sparse.block_size' must be a multiple of 16, got 24 (e.g. 16 or 32)"),
    ({"sparse.block_size": 8}, "option 'sparse.block_size' must be >= 16, got 8"),
    ({"sparse.antidiagonal.stride": 0}, "sparse.antidiagonal: stride must be an int >= 1, got 0"),
    ({"sparse.spatial_temporal.num_samples": 0}, "sparse.spatial_temporal: num_samples must be an int >= 1, got 0"),
    ({"sparse.radial.decay_factor": float("inf")}, "sparse.radial: decay_factor must be a number in (0.0, inf)"),
    ({"sparse.tile.window": [3, 0, 3]}, "sparse.tile: window[height] must be an int >= 1, got 0"),
    ({"sparse.block_size": 16, "sparse.antidiagonal": {"stride": 32}},
     "option 'sparse.antidiagonal' does not fit sparse.block_size=16: stride=32 must divide the block size 16"),
    ({"sparse.policy": "antidiagonal", "sparse.block_size": 48, "sparse.antidiagonal.stride": 32},
     "stride=32 must divide the block size 48"),
    ({"sparse.radial": {"decay": 0.3}}, "sparse.radial: unknown parameter(s) ['decay']"),
    ({"sparse.nope": {}}, "unknown option 'sparse.nope'"),
    ({"sparse.dense_blocks": [0, -1]}, "option 'sparse.dense_blocks[1]' must be >= 0, got -1"),
    ({"cache.teacache_coefficients": [1.0, float("nan")]}, "option 'cache.teacache_coefficients[1]' must be a finite"),
    ({"cache.teacache_signal": "time proj"}, "option 'cache.teacache_signal' must be a dotted module path"),
    ({"mode": "max_autotune"}, "option 'mode' must be one of ['default', 'reduce-overhead', 'max-autotune'"),
    ({"inductor": {"max_autotune": "yes"}}, "option 'inductor.max_autotune' must be bool (the setting's type)"),
    ({"inductor": {"max_autotune": 1}}, "option 'inductor.max_autotune' must be bool (the setting's type)"),
    ({"inductor": {"max_autotune": None}}, "option 'inductor.max_autotune' must be bool (the setting's type)"),
    ({"inductor": {"triton": True}}, "option 'inductor.triton' is a group of Inductor settings"),
    ({"inductor.cpp": 3}, "option 'inductor.cpp' is a group of Inductor settings"),
    ({"inductor.triton.cudagraphs": "no"}, "option 'inductor.triton.cudagraphs' must be bool (the setting's type)"),
    ({"inductor.triton.no_such": True}, "'triton.no_such' is not a setting of torch._inductor.config"),
    ({"inductor": {"pre_grad_fusion_options": {}}}, "dict-valued Inductor settings cannot be given as options"),
    ({"inductor": {"reorder_for_compute_comm_overlap_passes": 5}},
     "option 'inductor.reorder_for_compute_comm_overlap_passes' must be list["),
    ({"inductor": {"cpp.simdlen": float("nan")}}, "option 'inductor.cpp.simdlen' must be a finite number, got nan"),
    ({"inductor": {"post_grad_custom_pre_pass": 5}}, "option 'inductor.post_grad_custom_pre_pass' must be"),
    ({"inductor": {"compile_threads": "4"}}, "option 'inductor.compile_threads' must be int | None"),
    ({"inductor": {"__class__": 1}}, "'__class__' is not a setting of torch._inductor.config"),
    ({"inductor": {"get_config_copy": 1}}, "'get_config_copy' is not a setting of torch._inductor.config"),
    ({"inductor": {"triton.__doc__": "x"}}, "'triton.__doc__' is not a setting of torch._inductor.config"),
    ({"cache.threshold": 10 ** 400}, "option 'cache.threshold' must be a finite number"),
    ({"cache.teacache_coefficients": [1.0, 10 ** 400]}, "option 'cache.teacache_coefficients[1]' must be a finite"),
    ({"sparse.radial.decay_factor": 10 ** 400}, "sparse.radial: decay_factor must be a number"),
    ({"sparse.tile": __import__("ditcompile").masks.RadialParams()},
     "option 'sparse.tile' must be a TileParams (or a dict of its parameters), got a RadialParams"),
    ({"preset": 3}, "options['preset'] must be a preset name or TOML path, got 3"),
    ({"sparse": {"radial": 0.3}}, "option 'sparse.radial' must be a dict of parameter names to values"),
])
def test_bad_values_name_the_key_and_what_is_accepted(options, message):
    with pytest.raises(ConfigError) as err:
        check_options(options)
    assert message in str(err.value)


def test_good_neighbours_of_the_bad_values_are_accepted():
    config = check_options({"cache.threshold": 0, "sparse.block_size": 64, "sparse.antidiagonal.stride": 16,
                            "sparse.guard_budget": 1e-3, "sparse.dense_blocks": [0, 3], "mode": "max-autotune",
                            "inductor": {"max_autotune": True, "coordinate_descent_tuning": False},
                            "cache.teacache_signal": "condition_embedder.time_proj"})
    assert config.cache.threshold == 0.0 and isinstance(config.cache.threshold, float)
    assert config.sparse.block_size == 64 and config.sparse.params_for("antidiagonal").stride == 16
    assert config.sparse.dense_blocks == (0, 3) and config.mode == "max-autotune"


@given(st.integers(-64, 1024))
@settings(max_examples=60, deadline=None)
def test_block_size_is_accepted_exactly_when_it_is_a_positive_multiple_of_16(block):
    ok = block >= 16 and block % 16 == 0
    if ok:
        assert resolve_config({"sparse.block_size": block}).sparse.block_size == block
    else:
        with pytest.raises(ConfigError, match="option 'sparse.block_size' must be"):
            resolve_config({"sparse.block_size": block})


@given(st.floats(allow_nan=True, allow_infinity=True))
@settings(max_examples=60, deadline=None)
def test_threshold_is_accepted_exactly_when_finite_and_non_negative(value):
    if math.isfinite(value) and value >= 0:
        assert resolve_config({"cache.threshold": value}).cache.threshold == value
    else:
        with pytest.raises(ConfigError, match="option 'cache.threshold' must be"):
            resolve_config({"cache.threshold": value})


@pytest.mark.parametrize("override", [
    {"sparse.radial.decay_factor": 0.3},                # dotted key into the preset's table
    {"sparse": {"radial": {"decay_factor": 0.3}}},      # nested dict into the preset's table
    {"sparse.radial": {"decay_factor": 0.3}},           # a table given under its dotted name
])
def test_overrides_merge_into_the_preset_tables_instead_of_replacing_them(override):
    preset = load_preset("hunyuan_video")["sparse"]["radial"]
    assert preset == {"sink": False}  # the value this test relies on (not the dataclass default True)
    radial = resolve_config({"preset": "hunyuan_video", **override}).sparse.params_for("radial")
    assert radial.decay_factor == 0.3 and radial.sink is False
    wan = resolve_config({"preset": "wan2.1", **override}).sparse.params_for("radial")
    assert wan.decay_factor == 0.3 and wan.sink is True
    # the other keys of the preset's sections stay as well
    config = resolve_config({"preset": "wan2.1", **override})
    assert config.sparse.dense_steps == 10 and config.sparse.dense_blocks == (0,)


def test_inductor_patches_merge_into_the_preset_patches(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[preset]\ndescription = "x"\nmodels = []\n[inductor]\nmax_autotune = true\n')
    config = resolve_config({"preset": str(path), "inductor.coordinate_descent_tuning": True})
    assert dict(config.inductor) == {"max_autotune": True, "coordinate_descent_tuning": True}


def test_a_config_built_directly_is_checked_like_a_dict():
    with pytest.raises(ConfigError, match="option 'cache.threshold' must be a finite number"):
        CacheConfig(threshold=float("nan"))
    with pytest.raises(ConfigError, match="option 'sparse.block_size' must be a multiple of 16"):
        dataclasses.replace(SparseConfig(), block_size=24)
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        DitConfig(preset="nope")
    with pytest.raises(ConfigError, match="option 'mode' must be one of"):
        DitConfig(mode="fast")
    with pytest.raises(ConfigError, match="unknown option 'cache.treshold'. Did you mean 'cache.threshold'"):
        DitConfig(cache={"treshold": 0.1})
    # sections may be given as dicts and lists are normalised, so equal configs compare equal
    built = DitConfig(cache={"threshold": 1}, graph={"token_grid": [1, 2, 3]}, sparse={"radial": {"sink": False}})
    assert built == resolve_config({"cache.threshold": 1.0, "graph.token_grid": (1, 2, 3), "sparse.radial.sink": False})
    assert hash(built) == hash(resolve_config({"cache.threshold": 1.0, "graph.token_grid": (1, 2, 3),
                                               "sparse.radial.sink": False}))
    assert resolve_config(built) is built


def test_every_policy_table_round_trips_and_rejects_unknown_parameters():
    for name, policy in POLICIES.items():
        config = resolve_config({f"sparse.{name}": dataclasses.asdict(policy.params())})
        assert config.sparse.params_for(name) == policy.params()
        with pytest.raises(ConfigError, match=rf"sparse.{name}: unknown parameter\(s\) \['bogus'\]"):
            resolve_config({f"sparse.{name}.bogus": 1})


def test_check_options_is_public_and_returns_what_the_backend_uses():
    assert ditcompile.check_options is check_options
    assert check_options({"preset": "wan2.1"}) == resolve_config("wan2.1")


def _compile_error(**compile_kwargs):
    model = torch.nn.Linear(4, 4)
    compiled = torch.compile(model, backend="ditaccel", **compile_kwargs)
    torch._dynamo.reset()
    with pytest.raises(Exception) as err:
        compiled(torch.randn(2, 4))
    torch._dynamo.reset()
    return err.value


def test_the_error_through_torch_compile_names_the_key_and_the_accepted_values():
    err = _compile_error(options={"compiler": "eager", "cache.threshold": float("nan")})
    assert "option 'cache.threshold' must be a finite number, got nan" in str(err)
    err = _compile_error(mode="max_autotune")
    assert "option 'mode' must be one of ['default', 'reduce-overhead', 'max-autotune'" in str(err)


@pytest.mark.parametrize("options", [
    {"inductor.triton.cudagraphs": False},                 # a dotted key into a group
    {"inductor": {"triton": {"cudagraphs": False}}},       # a nested dict (a TOML [inductor.triton] table)
    {"inductor": {"triton.cudagraphs": False}},            # Inductor's own dotted name
])
def test_inductor_sub_settings_become_inductors_dotted_keys(options):
    from ditcompile.config import inductor_patch_dict

    config = check_options(options)
    assert config.inductor == (("triton.cudagraphs", False),)
    assert inductor_patch_dict(config.inductor) == {"triton.cudagraphs": False}
    hash(config)


def test_list_valued_inductor_settings_are_stored_hashable_and_given_back_as_lists():
    from ditcompile.config import inductor_patch_dict

    config = check_options({"inductor": {"reorder_for_compute_comm_overlap_passes": ["a", "b"]}})
    hash(config)
    assert inductor_patch_dict(config.inductor) == {"reorder_for_compute_comm_overlap_passes": ["a", "b"]}
    from ditcompile.config import config_to_dict

    assert check_options(config_to_dict(config)) == config


def test_inductor_sub_settings_reach_inductor(monkeypatch):
    """The flattened key is what the backend hands to Inductor (a dotted key would crash it)."""
    seen = {}
    monkeypatch.setattr("torch._inductor.compile_fx.compile_fx",
                        lambda gm, inputs, config_patches=None: seen.update(config_patches or {}) or gm.forward)
    model = torch.nn.Linear(4, 4)
    compiled = torch.compile(model, backend="ditaccel", options={"inductor.triton.cudagraphs": False,
                                                                 "inductor.max_autotune": False})
    torch._dynamo.reset()
    x = torch.randn(2, 4)
    torch.testing.assert_close(compiled(x), model(x))
    torch._dynamo.reset()
    assert seen["triton.cudagraphs"] is False and seen["max_autotune"] is False


def test_numpy_scalars_and_paths_are_accepted_like_python_values(tmp_path):
    import numpy as np

    from ditcompile.config import PRESET_DIR

    config = check_options({"sparse.block_size": np.int64(64), "cache.threshold": np.float32(0.25)})
    assert config.sparse.block_size == 64 and type(config.sparse.block_size) is int
    assert config.cache.threshold == 0.25 and type(config.cache.threshold) is float
    path = PRESET_DIR / "wan2.1.toml"
    assert DitConfig(preset=path).preset == str(path)
    assert check_options({"preset": path}).preset == str(path)
    pairs = SparseConfig(policy_params=[("radial", {"sink": False})]).policy_params
    assert pairs == SparseConfig(policy_params={"radial": {"sink": False}}).policy_params


def test_a_preset_file_naming_another_preset_is_refused_and_dotted_toml_keys_work(tmp_path):
    inherit = tmp_path / "inherit.toml"
    inherit.write_text('preset = "wan2.1"\n[sparse]\nenabled = true\n')
    with pytest.raises(ConfigError, match=r"preset = 'wan2.1' is not supported \(a preset file cannot build on"):
        check_options(str(inherit))
    dotted = tmp_path / "dotted.toml"
    dotted.write_text('"sparse.enabled" = true\n"cache.threshold" = 0.2\n[inductor]\n"triton.cudagraphs" = false\n')
    config = check_options(str(dotted))
    assert config.sparse.enabled and config.cache.threshold == 0.2
    assert config.inductor == (("triton.cudagraphs", False),)
    with pytest.raises(ConfigError, match="is a folder; give a .toml file"):
        check_options(str(tmp_path))


def test_numpy_scalars_in_policy_tables_become_python_numbers():
    import numpy as np

    from ditcompile.masks import params_json

    radial = check_options({"sparse.radial.band": np.int64(2), "sparse.radial.decay_factor": np.float32(0.5)}
                           ).sparse.params_for("radial")
    assert (radial.band, radial.decay_factor) == (2, 0.5) and type(radial.band) is int
    assert params_json(radial) == '{"band":2,"decay_factor":0.5,"min_window":null,"sink":true}'
