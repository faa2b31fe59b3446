"""The LLM judge against a local fake OpenAI-compatible server (127.0.0.1 only, bounded requests)."""

import json
import time

import pytest
from werkzeug import Request, Response

from anomaly_ov.eval.judge import LLMJudge, build_judge, parse_score

ROUTE = "/v1/chat/completions"


def _completion(text: str) -> dict:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "judge",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@pytest.fixture
def server():
    from pytest_httpserver import HTTPServer

    httpserver = HTTPServer(host="127.0.0.1", port=0)
    httpserver.start()
    yield httpserver
    httpserver.clear()
    httpserver.stop()


def _judge(server, **kwargs) -> LLMJudge:
    settings = {"max_attempts": 3, "timeout_s": 2.0, "backoff_s": 0.25, "sleep": lambda _: None, **kwargs}
    return LLMJudge(base_url=server.url_for("/v1"), model="judge", **settings)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [("Score: 7", 7.0), ("score = 6.5 because ...", 6.5), ("8", 8.0), ("Score: 11", None), ("great", None)],
)
def test_parse_score(reply, expected):
    assert parse_score(reply, r"(?i)score\s*[:=]?\s*(-?\d+(?:\.\d+)?)", 0, 10) == expected


def test_judge_sends_the_items_and_parses_the_score(server):
    seen = []

    def handler(request: Request) -> Response:
        seen.append(json.loads(request.data))
        return Response(json.dumps(_completion("Score: 7.5")), content_type="application/json")

    server.expect_ordered_request(ROUTE, method="POST").respond_with_handler(handler)
    result = _judge(server).score("What defect?", "A crack.", "A scratch.")
    assert result.score == 7.5 and result.attempts == 1 and result.error is None
    body = seen[0]
    assert body["model"] == "judge" and body["temperature"] == 0.0
    user = body["messages"][-1]["content"]
    assert "What defect?" in user and "A crack." in user and "A scratch." in user


def test_judge_retries_errors_and_unparsable_replies_with_backoff(server):
    server.expect_ordered_request(ROUTE, method="POST").respond_with_data("boom", status=500)
    server.expect_ordered_request(ROUTE, method="POST").respond_with_json(_completion("I like it"))
    server.expect_ordered_request(ROUTE, method="POST").respond_with_json(_completion("Score: 3"))
    waits = []
    result = _judge(server, sleep=waits.append).score("q", "r", "a")
    assert result.score == 3.0 and result.attempts == 3
    assert waits == [0.25, 0.5]  # exponential backoff
    server.check_assertions()


def test_judge_failure_is_recorded_never_a_score(server):
    server.expect_request(ROUTE, method="POST").respond_with_json(_completion("no number here"))
    result = _judge(server).score("q", "r", "a")
    assert result.score is None and result.attempts == 3
    assert "no score in [0, 10]" in result.error and result.reply == "no number here"
    assert len(server.log) == 3


def test_judge_timeout_is_a_counted_failure(server):
    def slow(_: Request) -> Response:
        time.sleep(0.6)
        return Response(json.dumps(_completion("Score: 9")), content_type="application/json")

    server.expect_request(ROUTE, method="POST").respond_with_handler(slow)
    result = _judge(server, timeout_s=0.2, max_attempts=2).score("q", "r", "a")
    assert result.score is None and result.attempts == 2
    assert "Timeout" in result.error


def test_build_judge_reads_the_key_from_the_environment(monkeypatch):
    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
    with pytest.raises(ValueError, match=r"\$MY_JUDGE_KEY, which is not set"):
        build_judge("http://127.0.0.1:9/v1", "judge", api_key_env="MY_JUDGE_KEY")
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test")
    assert (
        build_judge("http://127.0.0.1:9/v1", "judge", api_key_env="MY_JUDGE_KEY").client.api_key == "sk-test"
    )
    assert build_judge("http://127.0.0.1:9/v1", "judge", api_key_env=None).client.api_key == "EMPTY"
