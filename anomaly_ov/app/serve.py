r"""``anomaly-ov serve``: the inspection web app on this machine (configs/serve.yaml).

Examples::

    anomaly-ov serve                                   # the demo's tuned model (after bash scripts/demo.sh)
    anomaly-ov serve --model outputs/runs/ft05b/model  # another saved model folder
    anomaly-ov serve --host 0.0.0.0 --port 8080        # reachable from other machines (no login: take care)
    anomaly-ov serve --config-overrides model_dir=null model/llm=llava_ov_05b model/expert=anomaly_ov \\
        model.expert.official_checkpoint=/weights/pretrained_expert_05b.pth

Defaults for a shared machine: it binds 127.0.0.1, never opens a public share link, queues at most
``server.queue_size`` requests, runs ``server.concurrency`` generation(s) at a time (one on a CPU), limits
uploads in bytes, pixels and views (``limits``) and generation in tokens and seconds
(``generation.max_new_tokens``, ``generation.max_time``). The model is loaded once, before the server
starts. Uploads and results live in one temporary folder, cleaned as they age and removed when the server
stops.
"""

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from anomaly_ov.app.examples import Example, elpv_examples, installed_elpv_root, synthetic_examples
from anomaly_ov.app.inspection import Inspector
from anomaly_ov.app.uploads import UploadLimits
from anomaly_ov.inference.pipeline import AnomalyOVPipeline, add_model_arguments, compose_config

logger = logging.getLogger(__name__)


class ModelMissingError(FileNotFoundError):
    """The model folder to serve does not exist (the message says how to make it)."""


def load_model(config: DictConfig, model_dir: Path | None) -> tuple[AnomalyOVPipeline, str]:
    """Loads the model once: a saved folder (``--model`` or ``model_dir``), else ``model.*`` of the config.

    Returns:
        The pipeline and how the page names the model.

    Raises:
        ModelMissingError: If the folder does not exist (naming it, and ``bash scripts/demo.sh``).
    """
    generation = OmegaConf.to_container(config.generation, resolve=True)
    folder = model_dir if model_dir is not None else config.model_dir
    if folder is None:
        llm = OmegaConf.select(config, "model.llm.name_or_path", default="?")
        expert = "none" if config.model.get("expert") is None else "the configured expert"
        return AnomalyOVPipeline.from_config(config), f"built from configs/serve.yaml: LLM {llm}, {expert}"
    folder = Path(folder)
    if not folder.is_dir():
        how = (
            "it is the demo's tuned model: run `bash scripts/demo.sh` first (it trains it), "
            if model_dir is None
            else ""
        )
        raise ModelMissingError(
            f"the model folder {folder} does not exist; {how}or pass --model <a saved model folder>, "
            "or --config-overrides model_dir=null to build model/llm + model/expert from configs/serve.yaml"
        )
    return AnomalyOVPipeline.from_pretrained(folder, generation=generation), str(folder.resolve())


def gallery(config: DictConfig) -> list[Example]:
    """The example images named by the config's ``examples`` (those that exist)."""
    settings = config.examples
    examples = []
    if settings.synthetic_dir is not None:
        examples += synthetic_examples(Path(settings.synthetic_dir), int(settings.per_class))
    if int(settings.elpv) > 0:
        examples += elpv_examples(installed_elpv_root(), int(settings.elpv))
    return examples


@dataclass
class Server:
    """A running app: its address, its page and its temporary folder (removed by :meth:`close`)."""

    url: str
    page: Any
    work_dir: Path
    inspector: Inspector
    examples: list[Example] = field(default_factory=list)

    def close(self) -> None:
        """Stops the server and removes every upload and result."""
        try:
            self.page.close()
        finally:
            shutil.rmtree(self.work_dir, ignore_errors=True)


def start(
    config: DictConfig,
    pipeline: AnomalyOVPipeline,
    model_name: str,
    host: str | None = None,
    port: int | None = None,
    block: bool = False,
) -> Server:
    """Builds the page around a loaded model and starts the server.

    Args:
        config: The composed serve config.
        pipeline: The loaded model.
        model_name: How the page names the model.
        host: Address to bind (default ``server.host``, 127.0.0.1).
        port: Port (default ``server.port``; 0 = a free one).
        block: Serve until interrupted (the command), else return at once (tests).

    Returns:
        The running server (already stopped and cleaned when ``block``).
    """
    work_dir = Path(tempfile.mkdtemp(prefix="anomaly-ov-serve-"))
    # Gradio stores uploads under GRADIO_TEMP_DIR: inside our folder, so that close() removes them.
    os.environ["GRADIO_TEMP_DIR"] = str(work_dir / "uploads")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from anomaly_ov.app.page import build_page

    limits = UploadLimits(**OmegaConf.to_container(config.limits, resolve=True))
    inspector = Inspector(
        pipeline,
        model_name,
        str(config.question),
        limits,
        work_dir / "results",
        max_side=config.max_image_side,
        use_tiles=bool(config.overlay.tiles),
        alpha=float(config.overlay.alpha),
        colormap=str(config.overlay.colormap),
    )
    inspector.work_dir.mkdir()
    examples = gallery(config)
    age = int(config.server.delete_cache_s)
    page = build_page(inspector, examples, delete_cache=(min(600, age), age))
    page.queue(
        max_size=int(config.server.queue_size), default_concurrency_limit=int(config.server.concurrency)
    )
    port = int(config.server.port if port is None else port)
    # system fonts: the default theme would fetch Google's fonts, and the machine may be offline
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["monospace"])
    server = Server("", page, work_dir, inspector, examples)
    try:
        _, url, _ = page.launch(
            server_name=str(config.server.host if host is None else host),
            server_port=port if port else _free_port(),
            share=False,
            max_file_size=limits.max_bytes,
            prevent_thread_lock=True,
            ssr_mode=False,
            quiet=True,
            show_error=False,
            theme=theme,
            allowed_paths=sorted({str(example.path.parent) for example in examples}),
        )
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    server.url = url
    if block:
        try:
            page.block_thread()
        finally:
            server.close()
    return server


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomaly-ov serve",
        description="The inspection web app: upload an image (or views), see the anomaly map, ask questions.",
    )
    parser.add_argument("--host", default=None, help="address to bind (default: server.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: server.port; 0 = a free one)")
    add_model_arguments(parser, "serve")
    return parser


def cli_main(argv: Sequence[str] | None = None) -> int:
    """Runs the server until interrupted; returns 2 on bad arguments or a missing model folder."""
    args = _parser().parse_args(argv)
    try:
        config = compose_config("serve", args.config_overrides, args.config_dir)
        pipeline, name = load_model(config, args.model)
    except (ValueError, ModelMissingError) as error:
        print(f"serve: {error}", file=sys.stderr)
        return 2
    print(f"serve: model {name}", flush=True)

    def announce(server: Server) -> None:
        print(f"serve: open {server.url} (Ctrl+C stops; uploads in {server.work_dir})", flush=True)

    server = start(config, pipeline, name, host=args.host, port=args.port, block=False)
    announce(server)
    try:
        server.page.block_thread()
    finally:
        server.close()
    return 0
