"""``chat`` and ``predict`` end to end on the tiny zoo: outputs, heat maps, saved models, bad input."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from anomaly_ov.checkpoints.model_folder import save_anomaly_ov
from anomaly_ov.inference import chat, predict
from anomaly_ov.inference.pipeline import AnomalyOVPipeline, compose_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _write_image(path, height, width, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    (folder / "sub").mkdir()
    good = [_write_image(folder / "a.png", 80, 120, 0), _write_image(folder / "sub" / "b.jpg", 100, 60, 1)]
    (folder / "broken.png").write_bytes(b"this is not an image")
    _write_image(folder / "small.png", 5, 40, 2)
    (folder / "notes.txt").write_text("not an image, not listed\n")
    return folder, good


def _zoo(tiny_zoo):
    return ["--config-overrides", f"paths.zoo_dir={tiny_zoo.root}", "generation.max_new_tokens=6"]


def test_chat_answers_several_turns_and_prints_the_score(tiny_zoo, images, capsys):
    image = images[1][0]
    code = chat.cli_main(
        [
            "--image",
            str(image),
            "--question",
            "Is there any anomaly?",
            "--question",
            "Where?",
            *_zoo(tiny_zoo),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    score = re.findall(r"anomaly score: ([0-9.]+) \((slightly|moderately|highly) suspicious\)", out)
    assert len(score) == 1 and 0.0 <= float(score[0][0]) <= 1.0
    assert len(re.findall(r"^assistant> ", out, flags=re.M)) == 2


def test_chat_reports_bad_input(tiny_zoo, images, capsys):
    folder, good = images
    assert chat.cli_main(["--image", str(folder / "broken.png"), "--question", "Hi?", *_zoo(tiny_zoo)]) == 2
    assert f"{folder / 'broken.png'}: not a readable image" in capsys.readouterr().err
    assert (
        chat.cli_main(["--image", str(good[0]), "--question", "<image><image> Compare?", *_zoo(tiny_zoo)])
        == 2
    )
    assert "2 <image> placeholder(s) but 1 image(s)" in capsys.readouterr().err


def test_predict_on_a_folder_skips_broken_files_and_writes_the_rest(tiny_zoo, images, tmp_path, capsys):
    folder, good = images
    out = tmp_path / "pred"
    code = predict.cli_main(
        ["--images", str(folder), "--out", str(out), "--batch-size", "2", *_zoo(tiny_zoo)]
    )
    assert code == 1  # some images failed, all of them reported
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [line["image"] for line in lines] == [str(good[0]), str(good[1])]
    for line, path in zip(lines, good, strict=True):
        assert set(line) == {"image", "score", "severity", "answer", "heatmap"}
        assert 0.0 <= line["score"] <= 1.0 and line["severity"] in {"slightly", "moderately", "highly"}
        overlay = Image.open(out / line["heatmap"])
        assert overlay.format == "PNG" and overlay.size == Image.open(path).size
    errors = {
        json.loads(line)["image"]: json.loads(line)["error"]
        for line in (out / "errors.jsonl").read_text().splitlines()
    }
    assert set(errors) == {str(folder / "broken.png"), str(folder / "small.png")}
    assert "not a readable image" in errors[str(folder / "broken.png")]
    assert "smaller than the vision patch size 8" in errors[str(folder / "small.png")]
    assert (out / "config.yaml").is_file()
    assert "2 image(s) done, 2 failed" in capsys.readouterr().out


def test_predict_from_a_saved_model_and_a_list_file(tiny_zoo, images, tmp_path):
    _, good = images
    config = compose_config("predict", [f"paths.zoo_dir={tiny_zoo.root}"])
    pipeline = AnomalyOVPipeline.from_config(config)
    model_dir = save_anomaly_ov(pipeline.model, pipeline.processor, tmp_path / "model", config.model)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{good[1]}\n\n{good[0]}\n")

    from_config, from_folder = tmp_path / "a", tmp_path / "b"
    assert (
        predict.cli_main(
            ["--images", str(listing), "--out", str(from_config), "--no-progress", *_zoo(tiny_zoo)]
        )
        == 0
    )
    assert (
        predict.cli_main(
            [
                "--images",
                str(listing),
                "--out",
                str(from_folder),
                "--model",
                str(model_dir),
                "--no-progress",
                *_zoo(tiny_zoo),
            ]
        )
        == 0
    )
    first = [json.loads(line) for line in (from_config / "predictions.jsonl").read_text().splitlines()]
    second = [json.loads(line) for line in (from_folder / "predictions.jsonl").read_text().splitlines()]
    assert [line["image"] for line in first] == [str(good[1]), str(good[0])]
    assert [(p["score"], p["answer"]) for p in first] == [(p["score"], p["answer"]) for p in second]


def test_predict_rejects_bad_arguments(tiny_zoo, images, tmp_path, capsys):
    folder, _ = images
    base = ["--out", str(tmp_path / "x"), *_zoo(tiny_zoo)]
    assert predict.cli_main(["--images", str(folder), "--prompt", "Any defect?", *base]) == 2
    assert "exactly one <image> placeholder" in capsys.readouterr().err
    assert predict.cli_main(["--images", str(folder / "missing"), *base]) == 2
    assert f"predict input {folder / 'missing'} does not exist" in capsys.readouterr().err
