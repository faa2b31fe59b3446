"""Every YAML under configs/ composes; every entry config resolves completely in debug mode (its mandatory
values aside); every experiment composes and resolves under debug=tiny; the configs ship in the wheel."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from anomaly_ov.config import config_dir

CONFIG_DIR = config_dir()
PRIMARY = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
GROUP_OPTIONS = sorted(
    (p.parent.relative_to(CONFIG_DIR).as_posix(), p.stem)
    for p in CONFIG_DIR.glob("*/**/*.yaml")
    if p.parent.relative_to(CONFIG_DIR).parts[0] != "hydra"
)
# The entry configs of stage 1 and inference (others, e.g. eval_benchmark, are checked by their own tests).
ENTRY = ["chat", "eval_zsad", "predict", "serve", "train_expert"]
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
# What a user must name on the command line; everything else resolves (debug mode).
MANDATORY = {"eval_zsad": {"run_dir"}}
# debug=tiny is the stage-1 debug mode; chat and predict use the tiny zoo's models by default.
DEBUG = {"train_expert": ["debug=tiny"], "eval_zsad": ["debug=tiny"]}


def _compose(name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def _without_hydra(cfg):
    # The hydra node itself holds multirun-only values (job.num); ${hydra:...} resolvers still work
    # because HydraConfig was set from the composed config.
    cfg = cfg.copy()
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _missing(node, prefix: str = "") -> set[str]:
    """Dotted keys of the ``???`` values of a resolved container."""
    if isinstance(node, dict):
        return {k for key, value in node.items() for k in _missing(value, f"{prefix}{key}.")}
    if isinstance(node, list):
        return {k for i, value in enumerate(node) for k in _missing(value, f"{prefix}{i}.")}
    return {prefix[:-1]} if node == "???" else set()


def _resolved(name: str, overrides: list[str]) -> dict:
    """The resolved entry config; asserts that exactly its mandatory values are missing."""
    cfg = _without_hydra(_compose(name, overrides))
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert _missing(resolved) == MANDATORY.get(name, set()), f"{name} {overrides}"
    return resolved


def test_the_config_tree_exists():
    assert set(ENTRY) <= set(PRIMARY)
    assert ("experiment", "table2_anomaly_ov") in GROUP_OPTIONS and len(EXPERIMENTS) == 10


@pytest.mark.parametrize("name", PRIMARY)
def test_every_entry_config_carries_the_release_image_side_limit(name):
    cfg = _compose(name, [])
    assert cfg.max_image_side == 1024
    assert _compose(name, ["max_image_side=null"]).max_image_side is None


@pytest.mark.parametrize("name", ENTRY)
def test_entry_config_resolves_fully_in_debug_mode(name):
    resolved = _resolved(name, DEBUG.get(name, []))
    assert resolved["paths"]["zoo_dir"].endswith("zoo") and Path(resolved["paths"]["zoo_dir"]).is_absolute()
    assert resolved["model"]["expert"]["vision_dim"] == 64  # the tiny expert


@pytest.mark.parametrize("name", ["train_expert", "eval_zsad"])
def test_the_stage1_images_are_read_with_the_entry_configs_limit(name):
    resolved = _resolved(name, ["debug=tiny", "max_image_side=512"])
    assert resolved["features"]["crops"]["max_image_side"] == 512


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
            assert cfg.hydra.runtime.choices[group] == option
            return
    pytest.fail(f"{group}/{option}.yaml composes with no entry config:\n" + "\n".join(errors))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_resolves_under_debug_tiny(experiment):
    debug = _resolved("train_expert", [f"experiment={experiment}", "debug=tiny"])
    full = _resolved("train_expert", [f"experiment={experiment}"])
    assert debug["task_name"] == full["task_name"] == experiment
    # the tower is an explicit choice: the experiment names the released one, debug=tiny the tiny zoo's
    choices = _compose("train_expert", [f"experiment={experiment}"]).hydra.runtime.choices
    assert choices["stage1"] == "anomaly_ov" and choices["model/vision"] == "llava_ov_05b"
    released_tower = OmegaConf.load(CONFIG_DIR / "model" / "vision" / "llava_ov_05b.yaml").name_or_path
    assert full["model"]["vision"]["name_or_path"] == released_tower
    assert debug["model"]["vision"]["name_or_path"].endswith("zoo/llava_ov")
    assert debug["data"]["train"] == ["synthetic_instruct"] and debug["data"]["eval"] == ["synthetic_heldout"]
    # the experiment's own expert switches survive the debug mode, which only shrinks the expert
    released = _resolved("train_expert", [])["model"]["expert"]
    switched = {k for k, v in full["model"]["expert"].items() if released[k] != v}
    assert all(debug["model"]["expert"][k] == full["model"]["expert"][k] for k in switched)
    assert debug["model"]["expert"]["vision_dim"] == 64


def test_the_tiny_expert_differs_from_the_released_one_only_in_its_sizes():
    released = _resolved("train_expert", [])["model"]["expert"]
    tiny = _resolved("train_expert", ["model/expert=tiny"])["model"]["expert"]
    assert tiny.keys() == released.keys()
    differing = {key for key in released if tiny[key] != released[key]}
    assert differing == {"vision_dim", "expert_dim", "grid", "attention_dim", "score_hidden_dim"}
    assert (tiny["vision_dim"], tiny["grid"]) == (64, 8)
    own = OmegaConf.load(CONFIG_DIR / "model" / "expert" / "tiny.yaml")
    assert set(own) == {"defaults", *differing}  # the file says only what differs


@pytest.mark.parametrize("overrides", [["debug=tiny"], ["debug=tiny", "run_dir=null"]])
def test_evaluating_without_a_run_or_a_checkpoint_is_refused(overrides):
    from anomaly_ov.recipes.eval_zsad import eval_zsad

    cfg = _without_hydra(_compose("eval_zsad", overrides))
    with pytest.raises(MissingMandatoryValue, match=r"run_dir=<a train_expert run>.*checkpoint"):
        eval_zsad(cfg)


def test_a_typo_gets_hydras_error_not_a_deep_stack_trace():
    with pytest.raises(HydraException, match=r"Could not override|Could not find|not found"):
        _compose(PRIMARY[0], ["no_such_group=nothing"])


def test_the_wheel_ships_every_config(tmp_path):
    # An install without -e finds its configs as package data (anomaly_ov.config.config_dir()).
    root = Path(__file__).resolve().parents[2]
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(root),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = tmp_path.glob("anomaly_ov-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n for n in archive.namelist() if n.startswith("anomaly_ov/configs/")}
    expected = {
        f"anomaly_ov/configs/{p.relative_to(CONFIG_DIR).as_posix()}" for p in CONFIG_DIR.rglob("*.yaml")
    }
    assert shipped == expected
    # installed from the wheel alone (not the source tree), config_dir() is the package data
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    found = subprocess.run(
        [sys.executable, "-c", "from anomaly_ov.config import config_dir; print(config_dir())"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert found.returncode == 0, found.stderr[-2000:]
    assert Path(found.stdout.strip()) == target / "anomaly_ov" / "configs"
