"""Where the Hydra configs live, and the OmegaConf resolvers they use (registered on ``import anomaly_ov``).

``${abspath:some/dir}`` turns a path into an absolute one, so a resolved config saved next to a run's
outputs stays valid when the run is evaluated from another working directory.

``${debug_zoo:${debug},<option>}`` (in the defaults lists) names the group option of the zoo a debug mode
runs on: ``debug=tiny`` -> ``tiny``, ``debug=real`` -> ``real_zoo``, no debug mode -> ``<option>``. One
``debug=`` switch thereby selects the LLM (``model/llm``), the stage-1 tower and data (``stage1``) and the
entry point's short settings (``debug_stage1``, ``debug_finetune``) in every entry config, though the
entry configs do not share those groups (a ``debug/*.yaml`` file can only override groups every entry
config has: ``model/expert``).
"""

from pathlib import Path

from omegaconf import OmegaConf


def abspath(path: str) -> str:
    """Returns ``path`` as an absolute path (``~`` expanded), relative to the current directory."""
    return str(Path(path).expanduser().absolute())


# debug mode (the `debug` group's option) -> the option of the zoo's parts in the other groups
DEBUG_ZOOS: dict[str, str] = {"tiny": "tiny", "real": "real_zoo"}


def debug_zoo(debug: str | None, default: str) -> str:
    """The group option a debug mode selects (``DEBUG_ZOOS``), or ``default`` without a debug mode.

    Raises:
        ValueError: For a debug mode that has no zoo, naming the known ones.
    """
    if debug is None:
        return default
    if debug not in DEBUG_ZOOS:
        raise ValueError(f"debug={debug!r} has no zoo; the debug modes are {sorted(DEBUG_ZOOS)}")
    return DEBUG_ZOOS[debug]


def register_resolvers() -> None:
    """Registers the project's resolvers once (idempotent)."""
    if not OmegaConf.has_resolver("abspath"):
        OmegaConf.register_new_resolver("abspath", abspath)
    if not OmegaConf.has_resolver("debug_zoo"):
        OmegaConf.register_new_resolver("debug_zoo", debug_zoo)


def config_dir() -> Path:
    """The folder of the entry configs (train_expert.yaml, eval_zsad.yaml, chat.yaml, predict.yaml).

    A source checkout's ``configs/`` (next to the ``anomaly_ov`` package) wins, so edits there take effect
    without reinstalling; an installed wheel ships the same tree as the package data ``anomaly_ov/configs``.

    Raises:
        FileNotFoundError: If neither exists (a broken install), naming both places looked at.
    """
    package = Path(__file__).resolve().parent
    candidates = (package.parent / "configs", package / "configs")
    for folder in candidates:
        if (folder / "train_expert.yaml").is_file():
            return folder
    raise FileNotFoundError(
        f"no Hydra configs found: looked for train_expert.yaml in {candidates[0]} (source checkout) "
        f"and {candidates[1]} (installed package data); reinstall anomaly-ov or pass a configs folder "
        "explicitly."
    )
