"""tokenize_conversation: ChatML rendering (against the tokenizer's own chat template), assistant-only labels,
image placeholders and the errors that name the record."""

import pytest
from transformers import AutoTokenizer

from anomaly_ov.data.conversation import IGNORE_INDEX, tokenize_conversation

CONVERSATION = [
    {"from": "human", "value": "Is there any anomaly in the image?"},
    {"from": "gpt", "value": "Yes, there is an anomaly in the image."},
    {"from": "human", "value": "What is the type of the defect, and where is it located?"},
    {"from": "gpt", "value": "Yes. There is a crack on the upper left of the object."},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_zoo):
    return AutoTokenizer.from_pretrained(tiny_zoo.tokenizer)


def _messages(turns):
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    return [{"role": roles[t["from"]], "content": t["value"]} for t in turns]


def test_rendering_equals_the_tokenizers_chatml_template(tokenizer):
    tokens = tokenize_conversation(CONVERSATION, tokenizer)
    assert tokens.text == tokenizer.apply_chat_template(_messages(CONVERSATION), tokenize=False)
    assert tokens.input_ids == tokenizer(tokens.text, add_special_tokens=False)["input_ids"]

    prompt = tokenize_conversation(CONVERSATION[:3], tokenizer, add_generation_prompt=True)
    expected = tokenizer.apply_chat_template(
        _messages(CONVERSATION[:3]), tokenize=False, add_generation_prompt=True
    )
    assert prompt.text == expected
    assert prompt.text.endswith("<|im_start|>assistant\n")


def test_only_assistant_answers_and_their_end_token_are_labelled(tokenizer):
    tokens = tokenize_conversation(CONVERSATION, tokenizer)
    assert len(tokens.labels) == len(tokens.input_ids)
    labelled = [i for i, label in enumerate(tokens.labels) if label != IGNORE_INDEX]
    assert all(tokens.labels[i] == tokens.input_ids[i] for i in labelled)
    # labelled tokens form exactly two runs: the two answers, each closed by <|im_end|>
    runs, start = [], labelled[0]
    for previous, current in zip(labelled, [*labelled[1:], None], strict=True):
        if current != previous + 1:
            runs.append(tokenizer.decode(tokens.input_ids[start : previous + 1]))
            start = current
    assert runs == [f"{CONVERSATION[1]['value']}<|im_end|>", f"{CONVERSATION[3]['value']}<|im_end|>"]
    unlabelled = tokenizer.decode(
        [t for t, label in zip(tokens.input_ids, tokens.labels, strict=True) if label == -100]
    )
    assert CONVERSATION[0]["value"] in unlabelled and "You are a helpful assistant." in unlabelled
    assert CONVERSATION[1]["value"] not in unlabelled


def test_system_turn_and_default_system_prompt(tokenizer):
    turns = [{"from": "system", "value": "You inspect products."}, *CONVERSATION[:2]]
    tokens = tokenize_conversation(turns, tokenizer)
    assert tokens.text.startswith("<|im_start|>system\nYou inspect products.<|im_end|>\n<|im_start|>user\n")
    assert "helpful assistant" not in tokens.text
    bare = tokenize_conversation(CONVERSATION[:2], tokenizer, system_prompt=None)
    assert bare.text.startswith("<|im_start|>user\n")


def test_image_placeholders_take_the_expansions_in_order(tokenizer):
    turns = [{"from": "human", "value": "<image>\n<image>\nCompare."}, {"from": "gpt", "value": "No."}]
    expansions = ["<image>" * 3 + "<|endoftext|>", "<image>" * 2]
    tokens = tokenize_conversation(turns, tokenizer, image_expansions=expansions)
    assert "user\n<image><image><image><|endoftext|>\n<image><image>\nCompare." in tokens.text
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert tokens.input_ids.count(image_id) == 5
    assert all(
        label == IGNORE_INDEX
        for t, label in zip(tokens.input_ids, tokens.labels, strict=True)
        if t == image_id
    )


@pytest.mark.parametrize(
    ("turns", "images", "message"),
    [
        ([{"from": "human", "value": "What is it?"}], 1, r"rec-7: .* 0 <image> placeholder\(s\) but 1 image"),
        (
            [{"from": "human", "value": "<image><image> What?"}],
            1,
            r"rec-7: .* 2 <image> placeholder\(s\) but 1 image",
        ),
        ([{"from": "gpt", "value": "<image> no"}], 1, r"rec-7: turn 0 \(gpt\) holds <image>"),
        ([{"from": "bot", "value": "hi"}], 0, r"rec-7: turn 0 has 'from'='bot'"),
        (
            [{"from": "human", "value": "a"}, {"from": "system", "value": "b"}],
            0,
            r"rec-7: a system turn may only",
        ),
        ([], 0, r"rec-7: the conversation is empty"),
        ([{"from": "human"}], 0, r"rec-7: turn 0 is not"),
    ],
)
def test_malformed_conversations_name_the_record(tokenizer, turns, images, message):
    with pytest.raises(ValueError, match=message):
        tokenize_conversation(turns, tokenizer, image_expansions=["<image>"] * images, source="rec-7")


# Golden label sequences (hand-written) of a 2-turn conversation with one image expanded into two positions.
GOLDEN_TURNS = [
    {"from": "human", "value": "<image>\nIs it broken?"},
    {"from": "gpt", "value": "Yes. A crack."},
]
# (token, labelled by the "assistant" rule, labelled by the "release" rule)
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
    ("Ċ", False, True),
    ("Is", False, False),
    ("Ġit", False, False),
    ("Ġbroken", False, False),
    ("?", False, False),
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
]


@pytest.mark.parametrize(("rule", "column"), [("assistant", 1), ("release", 2)])
def test_golden_labels_of_both_rules(tokenizer, rule, column):
    tokens = tokenize_conversation(
        GOLDEN_TURNS, tokenizer, image_expansions=["<image><image>"], label_rule=rule
    )
    assert tokenizer.convert_ids_to_tokens(tokens.input_ids) == [row[0] for row in GOLDEN]
    expected = [t if row[column] else IGNORE_INDEX for t, row in zip(tokens.input_ids, GOLDEN, strict=True)]
    assert tokens.labels == expected


def test_release_rule_never_labels_placeholders_even_structural_ids(tokenizer):
    # an expansion holding newline / <|im_end|> ids: those positions are reserved, hence -100 in both rules
    expansion = "<image>\n<|im_end|><image>"
    for rule in ("assistant", "release"):
        tokens = tokenize_conversation(GOLDEN_TURNS, tokenizer, image_expansions=[expansion], label_rule=rule)
        start = tokens.text.index(expansion)
        encoded = tokenizer(tokens.text, add_special_tokens=False, return_offsets_mapping=True)
        inside = [
            i
            for i, (begin, _) in enumerate(encoded["offset_mapping"])
            if start <= begin < start + len(expansion)
        ]
        assert len(inside) == 4
        assert all(tokens.labels[i] == IGNORE_INDEX for i in inside)
        assert sum(label != IGNORE_INDEX for label in tokens.labels) == (6 if rule == "assistant" else 19)


def test_release_rule_with_a_system_turn_and_two_rounds(tokenizer):
    turns = [{"from": "system", "value": "Inspect."}, *CONVERSATION]
    release = tokenize_conversation(turns, tokenizer, label_rule="release")
    assistant = tokenize_conversation(turns, tokenizer)
    assert release.input_ids == assistant.input_ids
    # every assistant label is a release label; the release adds headers, newlines and ChatML markers only
    extra = [
        tokenizer.convert_ids_to_tokens(t)
        for t, a, r in zip(release.input_ids, assistant.labels, release.labels, strict=True)
        if r != IGNORE_INDEX and a == IGNORE_INDEX
    ]
    assert all(a in (IGNORE_INDEX, r) for a, r in zip(assistant.labels, release.labels, strict=True))
    # system: start, newline, end, newline; 2 users: same each; 2 assistants: start, "assistant", newline,
    # trailing newline
    assert sorted(extra) == sorted(
        ["<|im_start|>", "Ċ", "<|im_end|>", "Ċ"] * 3 + ["<|im_start|>", "assistant", "Ċ", "Ċ"] * 2
    )


@pytest.mark.parametrize(
    ("turns", "message"),
    [
        ([{"from": "gpt", "value": "Hi."}], r"rec-3: roles do not alternate: turn 0 is 'gpt'"),
        (
            [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}],
            r"rec-3: roles do not alternate: turn 1 is 'human' where 'gpt'",
        ),
        (
            [{"from": "system", "value": "s"}, {"from": "gpt", "value": "b"}],
            r"rec-3: roles do not alternate: turn 1 is 'gpt'",
        ),
        (
            [*CONVERSATION[:2], {"from": "gpt", "value": "again"}],
            r"rec-3: roles do not alternate: turn 2",
        ),
    ],
)
def test_roles_must_alternate(tokenizer, turns, message):
    with pytest.raises(ValueError, match=message):
        tokenize_conversation(turns, tokenizer, source="rec-3")


def test_unknown_label_rule(tokenizer):
    with pytest.raises(ValueError, match="label_rule='all'"):
        tokenize_conversation(CONVERSATION, tokenizer, label_rule="all")
