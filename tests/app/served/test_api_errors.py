"""Bad requests get a 4xx with a message a person understands, and the server keeps serving."""

from __future__ import annotations

import httpx
import pytest


def _error(response: httpx.Response) -> str:
    message: str = response.json()["error"]["message"]
    return message


def test_empty_input_list_is_422(client: httpx.Client) -> None:
    response = client.post("/v1/classify/sst2", json={"inputs": []})
    assert response.status_code == 422
    assert "inputs is empty" in _error(response)


@pytest.mark.parametrize(("inputs", "expected"), [
    ([42], "inputs[0]: model sst2 expects a string, got int"),
    (["fine", None], "inputs[1]: model sst2 expects a string, got null"),
    ([["a", "b"]], "a pair? this task takes single texts"),
])
def test_wrong_input_types_for_a_single_text_task_are_422(client: httpx.Client,
                                                          inputs: list[object],
                                                          expected: str) -> None:
    response = client.post("/v1/classify/sst2", json={"inputs": inputs})
    assert response.status_code == 422
    assert expected in _error(response)


def test_single_texts_sent_to_a_pair_task_are_422(client: httpx.Client) -> None:
    response = client.post("/v1/classify/rte", json={"inputs": ["only one text"]})
    assert response.status_code == 422
    assert "expects a pair of strings [text_a, text_b], got str" in _error(response)


def test_a_pair_of_three_texts_is_422(client: httpx.Client) -> None:
    response = client.post("/v1/classify/rte", json={"inputs": [["a", "b", "c"]]})
    assert response.status_code == 422
    assert "of length 3" in _error(response)


def test_blank_text_is_422(client: httpx.Client) -> None:
    response = client.post("/v1/classify/sst2", json={"inputs": ["   "]})
    assert response.status_code == 422
    assert "text is empty" in _error(response)


def test_unknown_task_is_404_and_lists_known_tasks(client: httpx.Client) -> None:
    response = client.post("/v1/classify/mnli", json={"inputs": ["x"]})
    assert response.status_code == 404
    assert "unknown model 'mnli'" in _error(response)
    assert "rte, sst2" in _error(response)


def test_too_many_inputs_is_413_with_the_limit(client: httpx.Client) -> None:
    response = client.post("/v1/classify/sst2", json={"inputs": ["good"] * 17})
    assert response.status_code == 413
    assert "17 inputs in one request; the limit is 16" in _error(response)


def test_over_long_text_is_413_with_the_limit(client: httpx.Client) -> None:
    response = client.post("/v1/classify/sst2", json={"inputs": ["a" * 2001]})
    assert response.status_code == 413
    assert "2001 characters; the limit is 2000" in _error(response)


def test_malformed_json_is_422_and_says_so(client: httpx.Client) -> None:
    response = client.post("/v1/classify/sst2", content=b"{not json",
                           headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "not valid JSON" in _error(response)


def test_missing_inputs_field_is_422_and_shows_the_expected_shape(client: httpx.Client) -> None:
    response = client.post("/v1/classify/sst2", json={"texts": ["good"]})
    assert response.status_code == 422
    message = _error(response)
    assert "inputs: Field required" in message
    assert 'expected {"inputs": ["text", ...]}' in message


def test_server_keeps_serving_after_bad_requests(client: httpx.Client) -> None:
    for body in ({"inputs": []}, {"inputs": [1]}, {"nope": 1}):
        assert client.post("/v1/classify/sst2", json=body).status_code == 422
    response = client.post("/v1/classify/sst2", json={"inputs": ["a lovely film"]})
    assert response.status_code == 200
    assert response.json()["results"][0]["label"] == "positive"
