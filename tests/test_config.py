import pytest

from raysegment.config import load_config, parse_config
from raysegment.errors import ConfigError


def test_unknown_key_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match="optim.decya"):
        parse_config({"data": {"root": "x"}, "optim": {"decya": 0.9}})


def test_decay_must_be_in_zero_one():
    with pytest.raises(ConfigError, match="optim.decay"):
        parse_config({"data": {"root": "x"}, "optim": {"decay": 1.5}})


def test_yaml_with_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: {root: /d, domain: fog}\noptim: {lr: 0.01, epochs: 3}\n")
    cfg = load_config(path, {"optim": {"epochs": 7}, "model": {"freeze_depth": 2}})
    assert (cfg.data.domain, cfg.optim.lr, cfg.optim.epochs, cfg.model.freeze_depth) == ("fog", 0.01, 7, 2)


def test_missing_and_malformed_files_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_shipped_serve_config_and_job_specs_validate():
    from pathlib import Path

    import yaml

    from raysegment.distributed.spec import read_spec
    from raysegment.serving.config import ServeConfig

    root = Path(__file__).resolve().parent.parent
    app = yaml.safe_load((root / "serve" / "config.yaml").read_text())["applications"][0]
    assert app["import_path"] == "raysegment.serving.app:build_app"
    assert ServeConfig.model_validate(app["args"]).online.adabn is False
    spec = read_spec(root / "jobs" / "specs" / "tune.yaml")
    assert "self_training" in spec.search.method and spec.search.judged_by == "labels"
    assert read_spec(root / "jobs" / "specs" / "fine_tune.yaml").job == "fine_tune"


def test_closed_loop_serve_settings_name_registry_things():
    from pydantic import ValidationError

    from raysegment.serving.config import ServeConfig

    ok = ServeConfig.model_validate(
        {"registry": "r", "auth": "none", "closed_loop": {"routing_base": "clear@1", "capture_domains": ["*", "new"]}}
    )
    assert ok.closed_loop.routing_base == "clear@1"
    for bad in (
        {"routing_base": "clear"},  # a moving alias would change every signature under it
        {"routing_base": "../x@1"},
        {"capture_domains": ["fog/../../etc"]},
        {"default_domain": "traffic"},
        {"shadow_share": 1.5},
    ):
        with pytest.raises(ValidationError):
            ServeConfig.model_validate({"registry": "r", "auth": "none", "closed_loop": bad})


def test_a_serve_key_outside_its_section_is_refused():
    from pydantic import ValidationError

    from raysegment.serving.config import ServeConfig

    with pytest.raises(ValidationError, match="max_image_bytes"):
        ServeConfig.model_validate({"registry": "r", "auth": "none", "max_image_bytes": 5})
    with pytest.raises(ValidationError, match="extra"):
        ServeConfig.model_validate({"registry": "r", "auth": "none", "limits": {"max_imge_bytes": 5}})
