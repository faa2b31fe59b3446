"""The Gradio Blocks page of ``anomaly-ov serve``.

Left: the upload (one image, or several views of one object) and the gallery of examples. Right: the
overlay of the expert's map with its colour bar, the score and severity word, the model's answer to the
detection prompt, the chat (follow-up questions with the conversation as history) and the downloads
(overlay PNG + result JSON). Every refusal (not an image, truncated, too large, too many views, empty
question, ...) is written to the status line: the request ends, the server keeps serving.

Two endpoints for clients (``gradio_client``): ``/analyze`` (files -> the outputs above) and ``/ask``
(question -> the chat); a client's session keeps its inspection between the two, as a browser tab does.
"""

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from anomaly_ov.app.examples import Example
from anomaly_ov.app.inspection import Inspection, Inspector
from anomaly_ov.data.tokens import IMAGE_PLACEHOLDER

logger = logging.getLogger(__name__)

# one queue slot shared by both endpoints: at most `concurrency` generations at a time, whichever endpoint
CONCURRENCY_ID = "model"


def _chat_messages(inspection: Inspection) -> list[dict[str, str]]:
    messages = []
    turns = inspection.chat.turns
    for index, (human, gpt) in enumerate(zip(turns[::2], turns[1::2], strict=True)):
        # the first question carries one <image> line per view; the page shows the text only
        question = human["value"].replace(f"{IMAGE_PLACEHOLDER}\n", "") if index == 0 else human["value"]
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": gpt["value"]}]
    return messages


def _summary(inspection: Inspection) -> str:
    lines = []
    for view in inspection.views:
        name = f"{view.name}: " if len(inspection.views) > 1 else ""
        note = f" ({view.note})" if view.note else ""
        lines.append(
            f"- {name}**anomaly score {view.score:.4f}**, *{view.severity}* suspicious "
            f"(map from {view.map_source}){note}"
        )
    head = "" if len(inspection.views) == 1 else f"{len(inspection.views)} views of one object:\n"
    return head + "\n".join(lines)


def _status_ok(inspection: Inspection) -> str:
    return f"Done in {inspection.seconds:.2f} s."


def _files(value: Any) -> list[tuple[str, str]]:
    if value is None:
        return []
    paths = value if isinstance(value, list | tuple) else [value]
    return [(str(path), Path(str(path)).name) for path in paths]


def build_page(
    inspector: Inspector,
    examples: Sequence[Example] = (),
    title: str = "Anomaly-OV inspection",
    delete_cache: tuple[int, int] | None = (600, 3600),
) -> gr.Blocks:
    """The page; call ``.queue(...)`` and ``.launch(...)`` on it (see :mod:`anomaly_ov.app.serve`).

    Args:
        inspector: The model and limits behind the page.
        examples: The gallery of example images.
        title: The page's title.
        delete_cache: Gradio's (every seconds, older than seconds) clean-up of uploads and results.
    """
    empty = (None, "", "", [], None, None)

    def analyze(files: Any, _: Inspection | None) -> tuple[Any, ...]:
        try:
            inspection = inspector.inspect(_files(files))
        except ValueError as error:  # UploadError, BadInputError, the processor's checks: all for the page
            logger.info("serve: refused: %s", error)
            return (*empty, f"**Error:** {error}", None)
        return (
            str(inspection.overlay_path),
            _summary(inspection),
            inspection.answer,
            _chat_messages(inspection),
            [str(inspection.overlay_path), str(inspection.result_path)],
            inspection.result(),
            _status_ok(inspection),
            inspection,
        )

    def ask(question: str, inspection: Inspection | None) -> tuple[Any, ...]:
        keep = gr.skip()
        if inspection is None:
            return keep, keep, keep, question, "**Error:** upload an image first, then ask about it.", None
        try:
            inspection.ask(inspector.check_question(question))
        except ValueError as error:
            return keep, keep, keep, question, f"**Error:** {error}", inspection
        downloads = [str(inspection.overlay_path), str(inspection.result_path)]
        return _chat_messages(inspection), downloads, inspection.result(), "", "Answered.", inspection

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=delete_cache) as page:
        state = gr.State(None)
        gr.Markdown(f"# {title}")
        gr.Markdown(f"Model: `{inspector.model}`", elem_id="model-name")
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(
                    file_count="multiple",
                    type="filepath",
                    label=f"Image, or up to {inspector.limits.max_views} views of one object",
                    elem_id="upload",
                )
                inspect_button = gr.Button("Inspect", variant="primary", elem_id="inspect")
                example_set = None
                if examples:
                    example_set = gr.Examples(
                        examples=[[[str(example.path)]] for example in examples],
                        inputs=[files],
                        example_labels=[example.caption for example in examples],
                        label="Examples",
                        examples_per_page=12,
                    )
            with gr.Column(scale=2):
                overlay = gr.Image(
                    label="Expert's anomaly map (0..1)",
                    type="filepath",
                    interactive=False,
                    height=420,
                    elem_id="overlay",
                )
                summary = gr.Markdown(elem_id="summary")
                answer = gr.Textbox(
                    label=f"Answer to: {inspector.question}", interactive=False, elem_id="answer"
                )
        status = gr.Markdown(elem_id="status")
        chatbot = gr.Chatbot(label="Conversation", elem_id="chat", height=320)
        with gr.Row():
            question = gr.Textbox(
                label="Follow-up question", placeholder="Where is the defect?", scale=4, elem_id="question"
            )
            send = gr.Button("Ask", elem_id="send", scale=1)
        downloads = gr.File(
            label="Download (overlay PNG, result JSON)", file_count="multiple", elem_id="downloads"
        )
        result = gr.JSON(label="Result", elem_id="result")

        outputs = [overlay, summary, answer, chatbot, downloads, result, status, state]
        common = {"concurrency_id": CONCURRENCY_ID}
        inspect_button.click(analyze, [files, state], outputs, api_name="analyze", **common)
        files.upload(analyze, [files, state], outputs, api_visibility="private", **common)
        # clearing the upload clears its results, so what the page shows always belongs to the upload
        files.clear(lambda: (*empty, "", None), None, outputs, api_visibility="private")
        if example_set is not None:
            example_set.load_input_event.then(
                analyze, [files, state], outputs, api_visibility="private", **common
            )
        ask_outputs = [chatbot, downloads, result, question, status, state]
        send.click(ask, [question, state], ask_outputs, api_name="ask", **common)
        question.submit(ask, [question, state], ask_outputs, api_visibility="private", **common)
    return page
