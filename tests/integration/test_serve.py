"""``anomaly-ov serve`` through ``gradio_client`` against the app on 127.0.0.1 (a free port, started and
stopped here): the page's answer and score equal ``predict``'s, follow-up questions equal ``chat``'s turns,
bad input is a message and the next request works, uploads stay in the server's temporary folder."""

import json
import os
from pathlib import Path

import gradio_client
import numpy as np
import pytest
from PIL import Image
from serve_app import MAX_NEW_TOKENS, held_out_defect_image, saved_tiny_model, serve_overrides  # same folder

from anomaly_ov.app.inspection import MIN_OVERLAY_HEIGHT
from anomaly_ov.data.images import limited_size
from anomaly_ov.inference import chat, predict
from anomaly_ov.inference.chat import with_image_placeholders
from anomaly_ov.inference.pipeline import compose_config

pytestmark = pytest.mark.usefixtures("one_thread")

WAIT_S = 120  # every request's bound (the tiny model answers in about a second)
FOLLOW_UP = "Where is the anomaly located?"


@pytest.fixture(scope="module")
def model_dir(tiny_zoo, tmp_path_factory):
    return saved_tiny_model(tiny_zoo.root, tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="module")
def server(tiny_zoo, synthetic_data, model_dir):
    from anomaly_ov.app import serve

    config = compose_config("serve", serve_overrides(tiny_zoo.root, synthetic_data.root))
    pipeline, name = serve.load_model(config, model_dir)
    previous = os.environ.get("GRADIO_TEMP_DIR")
    running = serve.start(config, pipeline, name, port=0)
    try:
        yield running
    finally:
        running.close()
        if previous is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous
    assert not running.work_dir.exists()  # every upload and result is gone with the server


@pytest.fixture()
def client(server):
    return gradio_client.Client(server.url, verbose=False, httpx_kwargs={"timeout": WAIT_S})


def _call(client, endpoint, **inputs):
    return client.submit(api_name=endpoint, **inputs).result(timeout=WAIT_S)


def _analyze(client, *paths):
    overlay, summary, answer, messages, downloads, result, status = _call(
        client, "/analyze", files=[gradio_client.handle_file(str(p)) for p in paths]
    )
    return {
        "overlay": overlay,
        "summary": summary,
        "answer": answer,
        "messages": messages,
        "downloads": downloads,
        "result": result,
        "status": status,
    }


def _ask(client, question):
    messages, downloads, result, box, status = _call(client, "/ask", question=question)
    return {"messages": messages, "downloads": downloads, "result": result, "box": box, "status": status}


def _message_texts(messages):
    texts = []
    for message in messages:
        content = message["content"]
        texts.append(content if isinstance(content, str) else "".join(part["text"] for part in content))
    return texts


@pytest.fixture(scope="module")
def defect_image(synthetic_data):
    return held_out_defect_image(synthetic_data)


def _cli_overrides(tiny_zoo):
    return [
        "--config-overrides",
        f"paths.zoo_dir={tiny_zoo.root}",
        f"generation.max_new_tokens={MAX_NEW_TOKENS}",
    ]


def test_the_detection_question_is_predicts_prompt_and_the_defaults_are_safe():
    serve_config, predict_config = compose_config("serve"), compose_config("predict")
    assert with_image_placeholders(serve_config.question, 1) == predict_config.prompt
    assert serve_config.server.host == "127.0.0.1" and serve_config.server.concurrency == 1
    assert serve_config.generation.max_time > 0 and serve_config.limits.max_views >= 1


def test_answer_and_score_equal_predict(client, server, defect_image, tiny_zoo, model_dir, tmp_path):
    page = _analyze(client, defect_image)
    out = tmp_path / "predict"
    code = predict.cli_main(
        [
            "--images",
            str(defect_image),
            "--out",
            str(out),
            "--model",
            str(model_dir),
            "--no-progress",
            *_cli_overrides(tiny_zoo),
        ]
    )
    assert code == 0
    (expected,) = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    result = page["result"]
    assert result["score"] == expected["score"] and result["severity"] == expected["severity"]
    assert page["answer"] == expected["answer"] == result["answer"]
    assert result["model"] == str(Path(model_dir).resolve())
    assert f"anomaly score {expected['score']:.4f}" in page["summary"] and page["status"].startswith("Done")
    assert result["views"][0]["map_source"] == "tiles"  # a 1-image sample has AnyRes tiles: stitched map
    # the downloads: the overlay (image + colour bar) and the JSON the page shows
    overlay_file, json_file = (Path(p) for p in page["downloads"])
    assert json.loads(json_file.read_text()) == result
    with Image.open(overlay_file) as overlay, Image.open(defect_image) as image:
        # drawn at the image's size (small images at MIN_OVERLAY_HEIGHT), the colour bar on the right
        height = max(image.height, MIN_OVERLAY_HEIGHT)
        assert overlay.height == height and overlay.width > round(image.width * height / image.height)
    assert _message_texts(page["messages"]) == [
        compose_config("serve").question,
        expected["answer"],
    ]


def test_follow_up_questions_keep_the_history_as_chat_does(client, defect_image, tiny_zoo, model_dir, capsys):
    page = _analyze(client, defect_image)
    reply = _ask(client, FOLLOW_UP)
    question = compose_config("serve").question
    code = chat.cli_main(
        [
            "--image",
            str(defect_image),
            "--question",
            question,
            "--question",
            FOLLOW_UP,
            "--model",
            str(model_dir),
            *_cli_overrides(tiny_zoo),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out.split("assistant> ")
    assert [text.rstrip("\n") for text in printed[1:]] == [
        page["answer"],
        reply["result"]["conversation"][1]["answer"],
    ]
    assert _message_texts(reply["messages"]) == [question, page["answer"], FOLLOW_UP, printed[2].rstrip("\n")]
    assert [turn["question"] for turn in reply["result"]["conversation"]][1] == FOLLOW_UP
    assert reply["box"] == "" and reply["status"] == "Answered."
    # the JSON download is rewritten with the whole conversation
    assert json.loads(Path(reply["downloads"][1]).read_text())["conversation"][1]["question"] == FOLLOW_UP


def test_several_views_are_one_sample_as_in_chat(
    client, synthetic_data, defect_image, tiny_zoo, model_dir, capsys
):
    views = [defect_image, *sorted((defect_image.parents[1] / "good").glob("*.png"))[:2]]
    page = _analyze(client, *views)
    assert [view["name"] for view in page["result"]["views"]] == [v.name for v in views]
    assert {view["map_source"] for view in page["result"]["views"]} == {"whole image"}  # one crop per view
    code = chat.cli_main(
        [
            "--image",
            *map(str, views),
            "--question",
            compose_config("serve").question,
            "--model",
            str(model_dir),
            *_cli_overrides(tiny_zoo),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    for path, view in zip(views, page["result"]["views"], strict=True):
        assert f"anomaly score {path}: {view['score']:.4f} ({view['severity']} suspicious)" in out
    assert out.split("assistant> ")[1].rstrip("\n") == page["answer"]
    assert page["result"]["score"] == max(view["score"] for view in page["result"]["views"])


def _sixteen_bit_grey(path):
    values = np.linspace(0, 65535, 96 * 128).reshape(96, 128).astype(np.uint16)
    Image.fromarray(values).save(path)
    return path


def test_bad_input_is_a_message_and_the_next_request_works(client, server, defect_image, tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not an image\n")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(defect_image.read_bytes()[:400])
    refusals = {
        "notes.png: not a readable image": [not_image],
        "truncated.png: unreadable or truncated image": [truncated],
        "10 files, more than the limit of 9 views": [defect_image] * 10,
    }
    for message, files in refusals.items():
        page = _analyze(client, *files)
        assert page["status"].startswith("**Error:**") and message in page["status"], page["status"]
        assert page["overlay"] is None and page["result"] is None
    # a question with no inspection, then an empty one after an inspection: messages, nothing asked
    assert "upload an image first" in _ask(client, "Any defect?")["status"]
    _analyze(client, defect_image)
    empty = _ask(client, "   ")
    assert "the question is empty" in empty["status"] and empty["box"] == "   "
    # the server still serves: a valid image works again, the chat still has its one turn
    page = _analyze(client, defect_image)
    assert page["status"].startswith("Done") and page["overlay"] is not None
    assert len(_ask(client, FOLLOW_UP)["result"]["conversation"]) == 2


def test_grey_16_bit_and_large_photos_are_converted_or_refused(client, defect_image, tmp_path):
    grey = tmp_path / "grey.png"
    Image.open(defect_image).convert("L").save(grey)
    page = _analyze(client, _sixteen_bit_grey(tmp_path / "deep.png"))
    assert page["result"]["views"][0]["note"] == "16-bit grey, scaled to 8 bits"
    assert _analyze(client, grey)["result"]["views"][0]["note"] == "grey image, converted to RGB"
    photo = tmp_path / "photo.jpg"  # 20 megapixels: read as the models see it (long side 1024)
    Image.new("RGB", (5472, 3648), (120, 130, 140)).save(photo, quality=90)
    page = _analyze(client, photo)
    width, height = limited_size(5472, 3648, 1024)
    note = page["result"]["views"][0]["note"]
    assert note == f"resized from 5472x3648 to {width}x{height} (long side 1024)"
    huge = tmp_path / "huge.jpg"  # over the pixel limit: refused from the header, never decoded
    Image.new("RGB", (6000, 4500), (120, 130, 140)).save(huge, quality=90)
    page = _analyze(client, huge)
    assert "huge.jpg: the image is 6000x4500 = 27.0 megapixels, more than the limit of 24.0" in page["status"]


def test_uploads_and_results_live_in_the_servers_temporary_folder(client, server, defect_image):
    page = _analyze(client, defect_image)
    stored = sorted(p for p in server.work_dir.rglob("*") if p.is_file())
    assert any(p.name == defect_image.name for p in stored)  # the upload itself
    assert {"overlay.png", "result.json"} <= {p.name for p in stored}
    assert Path(page["downloads"][0]).name == "overlay.png"


def test_the_page_names_its_model_and_offers_the_held_out_examples(server, model_dir, synthetic_data):
    import httpx

    config = httpx.get(f"{server.url}config", timeout=WAIT_S).text
    assert str(Path(model_dir).resolve()) in config
    from anomaly_ov.app.examples import installed_elpv_root

    synthetic = [example for example in server.examples if synthetic_data.root in example.path.parents]
    assert {example.caption.split(" / ")[0] for example in synthetic} == set(
        synthetic_data.heldout_categories
    )
    assert len(synthetic) == 2 * len(synthetic_data.heldout_categories)  # one defect, one good image each
    elpv = [example for example in server.examples if example.caption.startswith("ELPV")]
    assert len(elpv) == (4 if installed_elpv_root() is not None else 0)  # examples.elpv=2 per label
    assert all(example.path.is_file() for example in server.examples)


def test_a_missing_default_model_names_the_demo(tmp_path, capsys):
    from anomaly_ov.app import serve

    code = serve.cli_main(["--config-overrides", f"paths.output_root={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert (
        f"{tmp_path / 'runs' / 'demo_tuned' / 'model'} does not exist" in err
        and "bash scripts/demo.sh" in err
    )
    assert serve.cli_main(["--model", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err


def test_one_bounded_queue_and_one_generation_at_a_time(server):
    config = compose_config("serve")
    assert server.page._queue.max_size == config.server.queue_size
    assert server.page._queue.default_concurrency_limit == config.server.concurrency == 1
    # both endpoints (and the page's upload and submit events) share the one generation slot
    model_events = [
        fn for fn in server.page.fns.values() if fn.fn is not None and fn.concurrency_id == "model"
    ]
    assert {fn.api_name for fn in model_events} >= {"analyze", "ask"} and len(model_events) >= 4


def test_generation_stops_at_max_time(server, defect_image):
    from anomaly_ov.app.uploads import read_upload
    from anomaly_ov.inference.chat import Chat

    pipeline = server.inspector.pipeline
    upload = read_upload(defect_image, defect_image.name, server.inspector.limits, 1024)
    saved = dict(pipeline.generation)
    lengths = {}
    try:
        for max_time in (None, 1e-9):
            pipeline.generation = {**saved, "max_new_tokens": 24, "max_time": max_time}
            text = Chat(pipeline, [upload.image], [upload.name]).ask("Describe the part.").text
            lengths[max_time] = len(pipeline.processor.tokenizer(text, add_special_tokens=False).input_ids)
    finally:
        pipeline.generation = saved
    assert lengths[1e-9] <= 2 < lengths[None]  # the clock stops generation after its first token


def test_model_dir_null_builds_the_configs_model_as_chat_does(tiny_zoo):
    from anomaly_ov.app import serve

    config = compose_config("serve", ["model_dir=null", f"paths.zoo_dir={tiny_zoo.root}"])
    pipeline, name = serve.load_model(config, None)
    assert name.startswith("built from configs/serve.yaml: LLM ") and "the configured expert" in name
    assert pipeline.generation["max_time"] == config.generation.max_time
