"""An LLM judge through an OpenAI-compatible chat endpoint: the "GPT score" of VisA-D&R reasoning (Table 4).

The judge is given the question, the reference answer and the model's answer (the prompt is config) and
replies with a score. A request that times out, fails, or returns no parsable score in range is retried with
exponential backoff; after the last attempt the item is recorded as a failure (``score`` None, the error
kept) and counted -- a failure is never a score, and never ends the run.

The endpoint (``base_url``), the judge ``model`` and the API key (read from an environment variable named in
the config, never from the config itself) make it work with OpenAI or with any compatible server (vLLM, a
local proxy).
"""

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import openai

DEFAULT_SYSTEM_PROMPT = "You are a strict and fair grader of answers about industrial images."
DEFAULT_USER_TEMPLATE = (
    "Rate how well the candidate answer matches the reference answer to the question, for correctness and "
    "completeness, on a scale from {min_score:g} (wrong or irrelevant) to {max_score:g} (fully correct).\n"
    "Question: {question}\nReference answer: {reference}\nCandidate answer: {answer}\n"
    "Reply in the form 'Score: <number>'."
)
DEFAULT_SCORE_PATTERN = r"(?i)score\s*[:=]?\s*(-?\d+(?:\.\d+)?)"


@dataclass
class JudgeResult:
    """The judge's verdict on one answer.

    Attributes:
        score: The score, or None when every attempt failed.
        attempts: Requests made.
        error: The last failure's description (None on success).
        reply: The judge's last reply text (None if none came).
    """

    score: float | None
    attempts: int
    error: str | None = None
    reply: str | None = None


def parse_score(reply: str, pattern: str, min_score: float, max_score: float) -> float | None:
    """The score in a judge reply: the first match of ``pattern`` (or a reply that is just a number).

    Returns:
        The score, or None when the reply holds none or it lies outside ``[min_score, max_score]``.
    """
    match = re.search(pattern, reply)
    text = match.group(1) if match else reply.strip().rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if min_score <= value <= max_score else None


class LLMJudge:
    """Scores answers with a chat model behind an OpenAI-compatible endpoint.

    Args:
        base_url: The endpoint (e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``).
        model: The judge model's name.
        api_key: The API key ("EMPTY" for servers that need none).
        system_prompt: The judge's system message.
        user_template: The request; ``{question}``, ``{reference}``, ``{answer}``, ``{min_score}``,
            ``{max_score}`` are filled in.
        score_pattern: Regular expression whose first group is the score.
        min_score: Lowest valid score.
        max_score: Highest valid score.
        max_attempts: Requests per item before it is recorded as a failure.
        timeout_s: Seconds per request.
        backoff_s: Wait before the second attempt; doubled after each further failure.
        max_tokens: Reply length limit.
        sleep: The wait function (tests pass a no-op).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str = "EMPTY",
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        user_template: str = DEFAULT_USER_TEMPLATE,
        score_pattern: str = DEFAULT_SCORE_PATTERN,
        min_score: float = 0.0,
        max_score: float = 10.0,
        max_attempts: int = 4,
        timeout_s: float = 60.0,
        backoff_s: float = 1.0,
        max_tokens: int = 64,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts={max_attempts} must be at least 1")
        if not min_score < max_score:
            raise ValueError(f"min_score={min_score} must be below max_score={max_score}")
        # the client's own retries are off: this class retries, so that every failure is counted here
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)
        self.model = model
        self.system_prompt = system_prompt
        self.user_template = user_template
        self.score_pattern = score_pattern
        self.min_score = min_score
        self.max_score = max_score
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_tokens = max_tokens
        self.sleep = sleep

    def request(self, question: str, reference: str, answer: str) -> str:
        """The judge's reply to one item (one request, no retry).

        Raises:
            openai.OpenAIError: On a failed request.
        """
        prompt = self.user_template.format(
            question=question,
            reference=reference,
            answer=answer,
            min_score=self.min_score,
            max_score=self.max_score,
        )
        response = self.client.chat.completions.create(
            model=self.model,
            messages=[{"role": "system", "content": self.system_prompt}, {"role": "user", "content": prompt}],
            temperature=0.0,
            max_tokens=self.max_tokens,
        )
        if not response.choices:
            return ""
        return response.choices[0].message.content or ""

    def score(self, question: str, reference: str, answer: str) -> JudgeResult:
        """Scores one answer, retrying failures with exponential backoff.

        Returns:
            The score, or a failure (``score`` None) after ``max_attempts`` attempts.
        """
        error, reply = None, None
        for attempt in range(1, self.max_attempts + 1):
            try:
                reply = self.request(question, reference, answer)
            except openai.OpenAIError as failure:
                error = f"{type(failure).__name__}: {failure}"
            else:
                value = parse_score(reply, self.score_pattern, self.min_score, self.max_score)
                if value is not None:
                    return JudgeResult(score=value, attempts=attempt, reply=reply)
                error = f"no score in [{self.min_score:g}, {self.max_score:g}] in the reply {reply[:200]!r}"
            if attempt < self.max_attempts:
                self.sleep(self.backoff_s * 2 ** (attempt - 1))
        return JudgeResult(score=None, attempts=self.max_attempts, error=error, reply=reply)


def build_judge(
    base_url: str,
    model: str,
    api_key_env: str | None = "OPENAI_API_KEY",
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    user_template: str = DEFAULT_USER_TEMPLATE,
    score_pattern: str = DEFAULT_SCORE_PATTERN,
    min_score: float = 0.0,
    max_score: float = 10.0,
    max_attempts: int = 4,
    timeout_s: float = 60.0,
    backoff_s: float = 1.0,
    max_tokens: int = 64,
) -> LLMJudge:
    """Builds the judge from config values (``configs/judge/openai.yaml``); the key from the environment.

    Args:
        base_url: The endpoint.
        model: The judge model.
        api_key_env: Environment variable holding the API key; None for a server that needs no key.
        system_prompt: See :class:`LLMJudge`.
        user_template: See :class:`LLMJudge`.
        score_pattern: See :class:`LLMJudge`.
        min_score: See :class:`LLMJudge`.
        max_score: See :class:`LLMJudge`.
        max_attempts: See :class:`LLMJudge`.
        timeout_s: See :class:`LLMJudge`.
        backoff_s: See :class:`LLMJudge`.
        max_tokens: See :class:`LLMJudge`.

    Raises:
        ValueError: If ``api_key_env`` names a variable that is not set.
    """
    api_key = "EMPTY"
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env, "")
        if not api_key:
            raise ValueError(
                f"the judge's API key is read from ${api_key_env}, which is not set; export it, or set "
                "judge.api_key_env=null for a server that needs no key"
            )
    return LLMJudge(
        base_url=base_url,
        model=model,
        api_key=api_key,
        system_prompt=system_prompt,
        user_template=user_template,
        score_pattern=score_pattern,
        min_score=min_score,
        max_score=max_score,
        max_attempts=max_attempts,
        timeout_s=timeout_s,
        backoff_s=backoff_s,
        max_tokens=max_tokens,
    )
