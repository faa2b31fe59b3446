"""A model rewritten to answer "Yes" or "No" (depending on the image) and stop: for comparing detection
protocols on untrained weights.

An untrained (tiny or random-weight) LLM almost never starts its reply with Yes or No and never stops, so
comparing the release's greedy protocol with the one-forward fast path on it would compare nothing and
time thousands of decoding steps. :func:`rig_yes_no` edits three rows of the output head and two rows of the
input embeddings so that the model behaves like a trained one on the detection prompt:

* at the answer's first position, the "Yes"/"No" output rows get a large common term along the mean of the
  first-position final states ``u`` (so one of them is the arg-max) and opposite terms along the states'
  main direction of variation ``v`` (so which one wins depends on the image);
* the input embeddings of "Yes" and "No" become a large vector ``z`` orthogonal to every first-position
  state, and ``<|im_end|>``'s output row a multiple of ``z``: the token after the answer ends it.

Notation: ``n`` prompts, ``H`` LLM width.
"""

from collections.abc import Sequence

import torch
from PIL import Image

from anomaly_ov.data.tokens import IM_END
from anomaly_ov.eval.detection import FastDetector, answer_tokens
from anomaly_ov.models.anomaly_ov import AnomalyOV
from anomaly_ov.models.processor import AnomalyOVProcessor


@torch.no_grad()
def first_position_states(
    detector: FastDetector, images: Sequence[Image.Image], names: Sequence[str], batch_size: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Final hidden states and logits at the answer's first position.

    Returns:
        States [n, H] and logits [n, V] (float32, CPU).
    """
    captured: list[torch.Tensor] = []
    head = detector.model.llava.lm_head
    hook = head.register_forward_hook(lambda _m, args, _o: captured.append(args[0][:, -1].float().cpu()))
    try:
        logits = [
            detector.next_token_logits(images[i : i + batch_size], names[i : i + batch_size])[0]
            for i in range(0, len(images), batch_size)
        ]
    finally:
        hook.remove()
    return torch.cat(captured), torch.cat(logits)


@torch.no_grad()
def rig_yes_no(
    model: AnomalyOV,
    processor: AnomalyOVProcessor,
    prompt: str,
    images: Sequence[Image.Image],
    names: Sequence[str],
    margin: float = 10.0,
    spread: float = 3.0,
) -> None:
    """Rewrites ``model`` in place so that greedy decoding answers the prompt with "Yes" or "No", then stops.

    Args:
        model: The model (its output head must not be tied to the input embeddings).
        processor: Its processor.
        prompt: The detection prompt.
        images: The images the comparison will use (the directions are fitted to them).
        names: Their names.
        margin: How far the better of Yes/No beats every other token (logits).
        spread: Typical logit gap between Yes and No.

    Raises:
        ValueError: If the output head is tied to the input embeddings, or the states have no common
            direction.
    """
    tokenizer = processor.tokenizer
    yes, no = (tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("Yes", "No"))
    end = tokenizer.convert_tokens_to_ids(IM_END)
    llava = model.llava
    head, embed = llava.lm_head.weight, llava.get_input_embeddings().weight
    if head.data_ptr() == embed.data_ptr():
        raise ValueError("the output head is tied to the input embeddings; untie it before rigging")
    detector = FastDetector(model, processor, answer_tokens(tokenizer), prompt)
    states, logits = first_position_states(detector, images, names)
    states = states.double()
    mean = states.mean(0)
    u = mean / mean.norm()
    v = torch.linalg.svd(states - mean, full_matrices=False).Vh[0]
    z = torch.linalg.svd(states, full_matrices=True).Vh[-1]  # orthogonal to every first-position state
    along_u = states @ u
    if along_u.min() <= 0:
        raise ValueError("the first-position states share no direction; rigging needs more similar prompts")
    b = spread / (states @ v).abs().median().clamp_min(1e-6)
    others = logits.double().max(dim=1).values.abs()
    a = ((others + margin + (b * states @ v).abs()) / along_u).max()
    head[yes] = (a * u + b * v).to(head)
    head[no] = (a * u - b * v).to(head)
    scale = 100 * embed.norm(dim=1).max()
    embed[yes] = (scale * z).to(embed)
    embed[no] = (scale * z).to(embed)
    head[end] = (1e3 * z).to(head)
