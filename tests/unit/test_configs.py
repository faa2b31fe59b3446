"""Every YAML under configs/ composes; every entry config resolves completely in debug mode."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
PRIMARY = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
GROUP_OPTIONS = sorted(
    (p.parent.relative_to(CONFIG_DIR).as_posix(), p.stem)
    for p in CONFIG_DIR.glob("*/**/*.yaml")
    if p.parent.relative_to(CONFIG_DIR).parts[0] != "hydra"
)


def _compose(name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def _resolved_without_hydra(cfg) -> dict:
    # The hydra node itself holds multirun-only values (job.num); ${hydra:...} resolvers still work
    # because HydraConfig was set from the composed config.
    cfg = cfg.copy()
    with open_dict(cfg):
        del cfg["hydra"]
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def test_the_config_tree_exists():
    assert PRIMARY, "no entry configs under configs/"
    assert GROUP_OPTIONS, "no config groups under configs/"


@pytest.mark.parametrize("name", PRIMARY)
def test_primary_config_composes(name):
    cfg = _compose(name, [])
    assert "paths" in cfg


@pytest.mark.parametrize("name", PRIMARY)
def test_primary_config_resolves_fully_in_debug_mode(name):
    cfg = _compose(name, ["debug=tiny"])
    resolved = _resolved_without_hydra(cfg)
    assert resolved["paths"]["zoo_dir"].endswith("zoo")


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}/{o}" for g, o in GROUP_OPTIONS])
def test_every_group_option_composes_with_some_entry_config(group, option):
    errors = []
    for name in PRIMARY:
        for override in (f"{group}={option}", f"+{group}={option}"):
            try:
                cfg = _compose(name, [override])
            except (HydraException, OmegaConfBaseException) as err:
                errors.append(f"{name} {override}: {err}")
                continue
            assert cfg is not None
            return
    pytest.fail(f"{group}/{option}.yaml composes with no entry config:\n" + "\n".join(errors))


def test_a_typo_gets_hydras_error_not_a_deep_stack_trace():
    with pytest.raises(HydraException, match=r"Could not override|Could not find|not found"):
        _compose(PRIMARY[0], ["no_such_group=nothing"])
