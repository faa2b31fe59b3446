"""OmegaConf resolvers the configs use; registered when :mod:`anomaly_ov` is imported.

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
