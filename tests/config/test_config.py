"""Options -> DitConfig: presets, merge order, dotted keys and the errors users see."""
import pytest

from ditcompile.config import (
    ConfigError, DitConfig, available_presets, config_to_dict, load_preset, preset_metadata, resolve_config,
)

REQUIRED_PRESETS = {"wan2.1", "hunyuan_video", "cogvideox", "mochi", "ltx_video", "latte", "flux", "sd3", "pixart"}


def test_required_presets_ship_and_load():
    assert REQUIRED_PRESETS <= set(available_presets())
    for name in available_presets():
        config = resolve_config(name)
        assert config.preset == name
        meta = preset_metadata(name)
        assert meta["description"] and meta["models"]


def test_preset_models_are_real_diffusers_classes():
    diffusers = pytest.importorskip("diffusers")
    for name in available_presets():
        for cls in preset_metadata(name)["models"]:
            assert hasattr(diffusers, cls), f"preset {name} names unknown model class {cls}"


def test_defaults_then_preset_then_dict_entries():
    assert resolve_config(None) == DitConfig()
    assert resolve_config("flux").graph.text_position == "before"
    config = resolve_config({"preset": "flux", "graph": {"text_position": "after"}, "graph.token_grid": [1, 8, 8],
                             "compiler": "eager", "inductor": {"max_autotune": True}})
    assert config.graph.text_position == "after" and config.graph.token_grid == (1, 8, 8)
    assert config.compiler == "eager" and dict(config.inductor) == {"max_autotune": True}
    assert config.attention.enabled  # untouched keys keep their defaults


def test_toml_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[preset]\ndescription = "mine"\nmodels = []\n[attention]\nskip = ["blocks\\\\.0\\\\..*"]\n')
    config = resolve_config(str(path))
    assert config.attention.skip == (r"blocks\.0\..*",)
    assert load_preset(str(path)) == {"attention": {"skip": [r"blocks\.0\..*"]}}


@pytest.mark.parametrize("options, message", [
    ({"quant.bits": 8}, "unknown option 'quant'. Accepted keys in options: ['attention', 'autotune', 'cache', 'compiler'"),
    ({"cache.threshold": -0.1}, "option 'cache.threshold' must be >= 0.0"),
    ({"cache.taylor_order": 3}, "option 'cache.taylor_order' must be between 0 and 2, got 3"),
    ({"cache.teacache_coefficients": [1, "a"]}, "option 'cache.teacache_coefficients[1]' must be a number"),
    ({"attention.enable": True}, "Did you mean 'attention.enabled'?"),
    ({"compiler": "tvm"}, "option 'compiler' must be one of ['inductor', 'eager'], got 'tvm'"),
    ({"graph.token_grid": [1, 2]}, "option 'graph.token_grid' must be a list of 3 values"),
    ({"graph.token_grid": [1, 0, 4]}, "option 'graph.token_grid[1]' must be >= 1, got 0"),
    ({"graph.text_position": "middle"}, "must be one of ['auto', 'before', 'after', 'none']"),
    ({"attention.enabled": "yes"}, "option 'attention.enabled' must be true or false"),
    ({"attention.skip": "blocks"}, "option 'attention.skip' must be a list"),
    ({"attention.skip": ["("]}, "is not a valid regular expression"),
    ({"attention": 3}, "option 'attention' is a section"),
    ({"inductor": {"no_such_flag": 1}}, "'no_such_flag' is not a setting of torch._inductor.config"),
    ({"preset": "wan"}, "unknown preset 'wan'. Did you mean ['wan2.1']?"),
    ({"preset": "/nope/x.toml"}, "preset file '/nope/x.toml' does not exist"),
    ({"graph..token_grid": 1}, "malformed"),
    (42, "options must be a preset name, a TOML path, a dict or a DitConfig; got int"),
])
def test_errors_name_the_key_and_the_accepted_values(options, message):
    with pytest.raises(ConfigError) as err:
        resolve_config(options)
    assert message in str(err.value)


def test_bad_toml_is_reported(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[graph\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_config(str(path))


@pytest.mark.parametrize("options", [None, *sorted(REQUIRED_PRESETS), {
    "preset": "wan2.1", "sparse.policy": "tile", "sparse.tile": {"tile_size": [2, 4, 4]},
    "inductor": {"max_autotune": True}, "graph.token_grid": [1, 8, 8], "attention.skip": ["blocks\\.0\\..*"]}])
def test_config_to_dict_round_trips(options):
    import json

    config = resolve_config(options)
    data = config_to_dict(config)
    json.dumps(data)  # JSON-ready
    assert resolve_config(data) == config
