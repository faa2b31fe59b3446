"""Record paths stay inside their root: a benchmark or instruction record names an image relative to a root.

A record file from elsewhere can name any path: ``../../home/user/.ssh/id_rsa.png``, ``/etc/passwd``, or a
relative name that is a symlink pointing out of the root. Read as an image, such a file is at best an error
deep in a run and at worst data the user never meant to feed a model (or to copy into a report). Every
reader of record files checks the path first (:func:`outside_root`) and refuses the record, unless the
run explicitly allows it (``allow_outside_root=true``: e.g. a benchmark whose images live on another
disk, reached through symlinks).
"""

from pathlib import Path


def outside_root(root: str | Path, relative: str) -> str | None:
    """Why ``relative`` leaves ``root`` (absolute, ``..`` or a symlink out of it), or None if it stays in.

    Args:
        root: The folder the record's paths are relative to.
        relative: The path as the record gives it.
    """
    if Path(relative).is_absolute():
        return f"the image path {relative!r} is absolute, outside the root {root}"
    base = Path(root).resolve()
    resolved = (base / relative).resolve()
    if resolved != base and base not in resolved.parents:
        how = "a symlink" if ".." not in Path(relative).parts else "'..'"
        return f"the image path {relative!r} leaves the root {root} (through {how}, to {resolved})"
    return None
