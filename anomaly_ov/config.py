"""Where the Hydra configs live, and the OmegaConf resolvers they use (registered on ``import anomaly_ov``).

``${abspath:some/dir}`` turns a path into an absolute one, so a resolved config saved next to a run's
outputs stays valid when the run is evaluated from another working directory.
"""

from pathlib import Path

from omegaconf import OmegaConf


def abspath(path: str) -> str:
    """Returns ``path`` as an absolute path (``~`` expanded), relative to the current directory."""
    return str(Path(path).expanduser().absolute())


def register_resolvers() -> None:
    """Registers the project's resolvers once (idempotent)."""
    if not OmegaConf.has_resolver("abspath"):
        OmegaConf.register_new_resolver("abspath", abspath)


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
