"""The SLURM launcher option (configs/hydra/launcher): composes onto every stage-1 sweep with the plugin's
schema (hydra-submitit-launcher: the optional extra ``cluster`` for users, part of ``dev`` for the tests)."""

import importlib.util

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from anomaly_ov.config import config_dir


def test_the_plugin_is_installed_for_the_tests():
    assert importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None


SWEEPS = [("train_expert", ["experiment=table2_anomaly_ov"]), ("eval_zsad", ["run_dir=runs/a"])]


@pytest.mark.parametrize(("entry", "sweep"), SWEEPS)
def test_slurm_launcher_composes_with_the_plugin_schema(entry, sweep):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            config_name=entry,
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu", *sweep],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 1, 720)
    assert launcher.signal_delay_s == 120  # a field of the plugin's schema, not of our file
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        local = compose(config_name=entry, overrides=["hydra/launcher=slurm_local"], return_hydra_config=True)
    assert local.hydra.launcher._target_.endswith("LocalLauncher")
