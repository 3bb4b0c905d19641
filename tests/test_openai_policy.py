"""``OpenAIPolicy`` against a real local HTTP server speaking the chat-completions protocol: the response shapes
vLLM documents (plain content, hermes ``tool_calls``, ``reasoning``/``reasoning_content``), both tool modes,
history hygiene, and every fault the retry rules name."""

import asyncio
import json
import logging
import socket
from pathlib import Path

import numpy as np
import pytest
from support.openai_server import Fault, OpenAIServer, scripted_turns

from segloop.agent.actions import Segment, Submit, ZoomIn, tool_schemas
from segloop.agent.episode import Agent, EpisodeConfig
from segloop.agent.parser import format_call
from segloop.agent.policy import ChatMessage, PolicyContext
from segloop.cli import main as cli
from segloop.evaluation.batch import read_finished
from segloop.policies.chat import IMAGE_STUB, TOOL_CLOSE, TOOL_OPEN, turn_from_message
from segloop.policies.openai_compat import OpenAIConfig, OpenAIPolicy, OpenAIPolicyError
from segloop.policies.registry import build_policy
from segloop.tools.encoding import decode_data_url
from segloop.tools.images import save_image
from segloop.tools.segmenters import build_segmenter
from segloop.tools.views import full_view, render_view

SCRIPT = [format_call(ZoomIn(bbox_2d=[0, 0, 150, 120])), format_call(Segment(bbox_2d=[10, 10, 90, 80])),
          "<think>good</think>" + format_call(Submit())]
FAST = {"backoff": 0.01}


def _image(seed: int, height: int = 160, width: int = 200) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


def _smooth(height: int = 375, width: int = 500) -> np.ndarray:
    """A photo-like image (smooth gradients and a few shapes) for byte counts."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=-1)
    image = image.astype(np.uint8)
    image[100:180, 120:260] = (200, 40, 40)
    return image


def _context(episode_id: str = "e") -> PolicyContext:
    view = full_view(200, 160, 224)
    messages = [ChatMessage(role="system", content="sys"),
                ChatMessage(role="user", content="find it", image_id="v")]
    return PolicyContext(episode_id=episode_id, query="it", messages=messages, images={"v": _image(0)},
                         view=view, view_depth=0, image_size=(200, 160), turn=0, max_turns=4)


def _episode(server: OpenAIServer, image: np.ndarray | None = None, max_turns: int = 6, **options):
    policy = build_policy("openai", model="tiny", base_url=server.base_url, **{**FAST, **options})
    agent = Agent(policy, build_segmenter("box"), EpisodeConfig(max_turns=max_turns))
    result = asyncio.run(agent.run(_image(1) if image is None else image, "the red thing", episode_id="wire"))
    return policy, result.trajectory


# --- the shapes servers answer with ----------------------------------------------------------------------------
def test_a_prompt_mode_episode_through_the_graph_and_the_wire() -> None:
    with OpenAIServer(script=scripted_turns(SCRIPT)) as server:
        policy, trajectory = _episode(server)
    assert [t.action["name"] for t in trajectory.turns] == ["zoom_in", "segment", "submit"]
    assert [t.raw_text for t in trajectory.turns] == SCRIPT  # the stop string cut by the server, put back
    last = server.requests[-1]
    assert last["model"] == "tiny" and last["stop"] == ["</tool_call>"] and "tools" not in last
    assert last["stream"] is False
    roles = [m["role"] for m in last["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "<tools>" in last["messages"][0]["content"]  # prompt mode: the schemas are in the system prompt
    # The first user turn: the full view as a JPEG data URL, at the image's own size (not enlarged to 1024).
    first = last["messages"][1]["content"]
    assert first[0]["type"] == "image_url" and first[1]["type"] == "text"
    assert first[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    shown = decode_data_url(first[0]["image_url"]["url"])
    assert shown.shape == (168, 196, 3)  # 200x160 -> 196 (28-multiple below 200) x 168 (nearest multiple)
    assert "196x168 pixels" in first[1]["text"]
    # An observation: a user turn wrapped in <tool_response>, its picture inside the wrapper.
    observation = last["messages"][3]["content"]
    assert observation[0] == {"type": "text", "text": TOOL_OPEN}
    assert observation[1]["type"] == "image_url"
    assert observation[2]["text"].endswith(TOOL_CLOSE)
    assert observation[2]["text"][: -len(TOOL_CLOSE)] == trajectory.turns[0].observation
    info = trajectory.turns[0].policy_info
    assert info["statuses"] == [200] and info["retries"] == 0 and info["source"] == "content"
    assert info["request_bytes"] == server.request_sizes[0] and info["usage"]["completion_tokens"] > 0
    assert info["finish_reason"] == "stop" and info["images_sent"] == 1
    assert trajectory.turns[2].policy_info["request_bytes"] == server.request_sizes[2]
    assert policy.usage["requests"] == 3 and policy.usage["request_bytes"] == sum(server.request_sizes)


def test_png_is_lossless_when_asked_and_views_are_never_enlarged() -> None:
    with OpenAIServer(script=scripted_turns([format_call(Submit())])) as server:
        _episode(server, image_format="png")
        _episode(server, image=_image(1, 40, 60), image_format="png")
        _episode(server, image=_image(1, 900, 1400), image_format="png", max_side=448)
    urls = [r["messages"][1]["content"][0]["image_url"]["url"] for r in server.requests]
    assert all(u.startswith("data:image/png;base64,") for u in urls)
    shown = [decode_data_url(u) for u in urls]
    assert np.array_equal(shown[0], render_view(_image(1), full_view(200, 160, 1024, upscale=False)))  # exact pixels
    assert shown[1].shape == (28, 56, 3)  # a 60x40 image stays small
    assert shown[2].shape == (280, 448, 3)  # a large one is shrunk to max_side


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_a_reasoning_parser_answer_is_read_as_one_turn(field: str) -> None:
    script = ["<think>the red one is at the top</think>" + format_call(Submit())]
    with OpenAIServer(script=scripted_turns(script), reasoning_parser=field) as server:
        _, trajectory = _episode(server)
    message = server.requests and trajectory.turns[0]
    assert message.raw_text == script[0] and message.thought == "the red one is at the top"
    assert trajectory.submitted


def test_hermes_tool_calls_in_native_mode_and_the_history_sent_back() -> None:
    with OpenAIServer(script=scripted_turns(SCRIPT), tool_parser=True, reasoning_parser="reasoning") as server:
        _, trajectory = _episode(server, tool_mode="native")
    assert [t.action["name"] for t in trajectory.turns] == ["zoom_in", "segment", "submit"]
    assert [t.raw_text for t in trajectory.turns] == SCRIPT
    assert [t.policy_info["source"] for t in trajectory.turns] == ["tool_calls"] * 3
    assert [t.policy_info["finish_reason"] for t in trajectory.turns] == ["tool_calls"] * 3
    first, last = server.requests[0], server.requests[-1]
    assert first["tools"] == tool_schemas() and "tool_choice" not in first
    assert "<tools>" not in first["messages"][0]["content"]  # the template writes them from tools=
    roles = [m["role"] for m in last["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "user", "assistant", "tool", "user"]
    call = last["messages"][2]["tool_calls"][0]
    assert call["id"] == "call00001" and call["function"]["name"] == "zoom_in"
    assert call["function"]["arguments"] == '{"bbox_2d": [0, 0, 150, 120]}'
    assert last["messages"][3] == {"role": "tool", "tool_call_id": "call00001",
                                   "content": trajectory.turns[0].observation}
    assert last["messages"][4]["content"][0]["type"] == "image_url"  # the observation's picture follows
    assert last["messages"][6]["tool_call_id"] == "call00002"


def test_prompt_mode_on_a_server_with_a_tool_parser_gets_the_call_as_text() -> None:
    with OpenAIServer(script=scripted_turns(SCRIPT), tool_parser=True) as server:
        _, trajectory = _episode(server)
    assert [t.policy_info["source"] for t in trajectory.turns] == ["content"] * 3
    assert trajectory.submitted


def test_native_mode_without_a_tool_parser_is_refused_once_and_required_works() -> None:
    with OpenAIServer(script=scripted_turns(SCRIPT)) as server:
        _, trajectory = _episode(server, tool_mode="native")
        assert len(server.requests) == 2  # each 400 sent once: told to the model, then the episode ends
        reason = trajectory.failure.reason
        assert "--enable-auto-tool-choice" in reason and "twice in a row" in reason
        _, trajectory = _episode(server, tool_mode="native", tool_choice="required")
    assert server.requests[-1]["tool_choice"] == "required"
    assert [t.action["name"] for t in trajectory.turns] == ["zoom_in", "segment", "submit"]
    assert trajectory.turns[2].raw_text == format_call(Submit())  # guided JSON: no thought


def test_turn_from_message_reads_every_shape() -> None:
    call = format_call(Segment(bbox_2d=[1, 2, 30, 40]))
    assert turn_from_message({"content": [{"type": "text", "text": "<think>a</think>"},
                                          {"type": "text", "text": call}]}) == (f"<think>a</think>{call}", "content")
    # content cut after its call, as `stop` would have done
    assert turn_from_message({"content": call + "<|im_end|>more"}) == (call, "content")
    structured = {"function": {"name": "segment", "arguments": '{"bbox_2d": [1, 2, 30, 40]}'}}
    assert turn_from_message({"content": None, "tool_calls": [structured]}) == (call, "tool_calls")
    assert turn_from_message({"content": "I look left.", "tool_calls": [structured]}) == (
        f"<think>I look left.</think>{call}", "tool_calls")
    dict_args = {"function": {"name": "segment", "arguments": {"bbox_2d": [1, 2, 30, 40]}}}
    assert turn_from_message({"content": "", "tool_calls": [dict_args], "reasoning_content": "r"}) == (
        f"<think>r</think>{call}", "tool_calls")
    broken = {"function": {"name": "segment", "arguments": '{"bbox_2d": [1, 2'}}
    text, source = turn_from_message({"content": "", "tool_calls": [broken]})
    from segloop.agent.parser import parse_turn

    assert source == "tool_calls" and parse_turn(text).error.kind == "bad_json"  # the model is told
    assert turn_from_message({"content": "<think>only thinking</think>"}) == ("<think>only thinking</think>", "none")
    assert turn_from_message({"content": None}) == ("", "none")


# --- history hygiene -------------------------------------------------------------------------------------------
def test_special_token_strings_are_not_echoed_to_the_server() -> None:
    script = ["<think>I see <|image_pad|><|im_start|> here</think>" + format_call(ZoomIn(bbox_2d=[0, 0, 100, 80])),
              format_call(Submit())]
    with OpenAIServer(script=scripted_turns(script), reject_special_tokens=True) as server:
        _, trajectory = _episode(server)
        assert trajectory.submitted and trajectory.turns[0].raw_text == script[0]  # recorded as written
        assert server.requests[1]["messages"][2]["content"].startswith("<think>I see  here</think>")
        _, trajectory = _episode(server, special_tokens="none")
    assert trajectory.failure is not None and "HTTP 500" in trajectory.failure.reason
    assert server.statuses[-2:] == [500, 500]  # an unexplained 500 is retried once, not more


def test_keep_images_sends_only_the_last_pictures() -> None:
    with OpenAIServer(script=scripted_turns(SCRIPT)) as server:
        _, full = _episode(server, image=_smooth())
        _, kept = _episode(server, image=_smooth(), keep_images=1)
    everything, last_only = server.requests[2], server.requests[5]
    images = [p for m in last_only["messages"] if isinstance(m["content"], list)
              for p in m["content"] if p["type"] == "image_url"]
    assert len(images) == 1
    assert last_only["messages"][-1]["content"][1]["type"] == "image_url"  # the newest picture is the one sent
    assert last_only["messages"][1]["content"].startswith(IMAGE_STUB)
    assert server.request_sizes[5] < server.request_sizes[2] / 2
    assert [t.policy_info["images_sent"] for t in kept.turns] == [1, 1, 1]
    assert [t.policy_info["images_sent"] for t in full.turns] == [1, 2, 3]
    assert [t.action for t in kept.turns] == [t.action for t in full.turns]
    del everything


# --- faults ----------------------------------------------------------------------------------------------------
def test_transient_failures_are_retried_with_backoff_and_recorded() -> None:
    for status in (503, 429, 502):
        with OpenAIServer(script=scripted_turns(SCRIPT), fail_first=2, fail_status=status) as server:
            policy = OpenAIPolicy("tiny", base_url=server.base_url, backoff=0.05, retries=3)
            turn = asyncio.run(policy.act(_context()))
        assert turn.text == SCRIPT[0]
        assert turn.info["statuses"] == [status, status, 200] and turn.info["retries"] == 2
        assert turn.info["waited_s"] == pytest.approx(0.05 + 0.1)  # backoff 0.05, then 0.1
        assert len(server.requests) == 3 and policy.usage["retries"] == 2
        assert "seed" not in server.requests[0]


def test_retry_after_is_honoured_in_seconds_and_dates_up_to_the_cap() -> None:
    faults = [Fault(status=503, retry_after="0.3"), Fault(status=429, retry_after="Wed, 21 Oct 2015 07:28:00 GMT"),
              Fault(status=503, retry_after="30")]
    with OpenAIServer(script=scripted_turns(SCRIPT), faults=faults) as server:
        policy = OpenAIPolicy("tiny", base_url=server.base_url, backoff=5.0, retry_after_cap=0.5)
        turn = asyncio.run(policy.act(_context()))
    # 0.3 s as asked; a date in the past: no wait; 30 s asked: the 0.5 s cap.
    assert turn.info["statuses"] == [503, 429, 503, 200]
    assert turn.info["waited_s"] == pytest.approx(0.3 + 0.0 + 0.5)


def test_a_retry_after_that_is_not_a_number_waits_the_backoff() -> None:
    """Issue 18 item 10: ``Retry-After: nan`` parses as a float; it must not mean "retry at once"."""
    with OpenAIServer(script=scripted_turns(SCRIPT), faults=[Fault(status=503, retry_after="nan")]) as server:
        turn = asyncio.run(OpenAIPolicy("tiny", base_url=server.base_url, backoff=0.2).act(_context()))
    assert turn.info["statuses"] == [503, 200] and turn.info["waited_s"] == pytest.approx(0.2)


def test_a_reset_after_connecting_is_not_called_a_failure_to_connect() -> None:
    with OpenAIServer(script=scripted_turns(SCRIPT), faults=[Fault(reset=True)] * 2) as server:
        policy = OpenAIPolicy("tiny", base_url=server.base_url, backoff=0.01, retries=1)
        with pytest.raises(OpenAIPolicyError, match=r"the connection was lost after connecting \(\w+: .*\(2 attempts: "
                                                    r"connection lost, connection lost") as raised:
            asyncio.run(policy.act(_context()))
    assert len(server.requests) == 2 and "cannot connect" not in str(raised.value)
    assert raised.value.info["unreachable"] and raised.value.info["statuses"] == ["connection lost"] * 2


def test_retries_are_bounded_and_the_error_says_why() -> None:
    with OpenAIServer(script=scripted_turns(SCRIPT), fail_first=100, fail_status=503) as server:
        policy = OpenAIPolicy("tiny", base_url=server.base_url, backoff=0.01, retries=2)
        with pytest.raises(OpenAIPolicyError, match=r"HTTP 503: injected failure \(3 attempts: 503, 503, 503"):
            asyncio.run(policy.act(_context()))
    assert len(server.requests) == 3


@pytest.mark.parametrize(("fault", "message"), [
    (Fault(status=400, body="This model's maximum context length is 32768 tokens"), "HTTP 400: This model"),
    (Fault(status=422, body="Unexpected fields in the request"), "HTTP 422: Unexpected fields"),
    (Fault(status=500, body="Error in chat template: jinja2 undefined"), "HTTP 500: Error in chat template"),
])
def test_a_refusal_is_not_retried_and_answers_the_turn_once(fault: Fault, message: str) -> None:
    with OpenAIServer(script=scripted_turns(SCRIPT), faults=[fault] * 3) as server:
        policy = OpenAIPolicy("tiny", base_url=server.base_url, backoff=0.01)
        turn = asyncio.run(policy.act(_context()))  # the first: an observation for the model
        assert len(server.requests) == 1 and turn.text == ""
        assert turn.info["refused"].startswith(message) and turn.info["statuses"] == [fault.status]
        assert turn.info["observation_error"].startswith("the server could not answer your last turn (" + message)
        with pytest.raises(OpenAIPolicyError, match=f"{message}.*a refusal; not sent again.*twice in a row"):
            asyncio.run(policy.act(_context()))  # the next in a row ends the episode
    assert len(server.requests) == 2


def test_the_model_is_told_of_a_refusal_and_carries_on() -> None:
    fault = Fault(status=500, body="Error in chat template: cannot parse the tool call")
    with OpenAIServer(script=scripted_turns(SCRIPT), faults=[fault]) as server:
        _, trajectory = _episode(server)
    assert [t.action and t.action["name"] for t in trajectory.turns] == [None, "segment", "submit"]
    assert trajectory.turns[0].observation.startswith("Error: the server could not answer your last turn (HTTP 500")
    assert trajectory.turns[0].raw_text == "" and trajectory.submitted and trajectory.failure is None


def test_authentication_and_routes_end_at_once() -> None:
    for fault in (Fault(status=401, body="invalid API key"), Fault(status=404, body="no such model")):
        with OpenAIServer(script=scripted_turns(SCRIPT), faults=[fault]) as server, \
                pytest.raises(OpenAIPolicyError, match=f"HTTP {fault.status}"):
            asyncio.run(OpenAIPolicy("tiny", base_url=server.base_url, **FAST).act(_context()))
        assert len(server.requests) == 1


def test_a_proxy_413_ends_the_episode_with_a_clear_reason() -> None:
    with OpenAIServer(script=scripted_turns(SCRIPT), max_body_bytes=20_000) as server:
        _, trajectory = _episode(server, image=_smooth(), image_format="png")
    assert server.statuses == [413]
    assert "HTTP 413: 413 Request Entity Too Large: the request of" in trajectory.failure.reason
    assert "--keep-images" in trajectory.failure.reason and "not sent again" in trajectory.failure.reason


def test_a_malformed_200_is_retried_once() -> None:
    with OpenAIServer(script=scripted_turns(SCRIPT), faults=[Fault(malformed=True)]) as server:
        turn = asyncio.run(OpenAIPolicy("tiny", base_url=server.base_url, **FAST).act(_context()))
    assert turn.text == SCRIPT[0] and turn.info["statuses"] == [200, 200]
    with OpenAIServer(script=scripted_turns(SCRIPT), faults=[Fault(malformed=True)] * 2) as server, \
            pytest.raises(OpenAIPolicyError, match="answered 200 twice with a body that is not a chat completion"):
        asyncio.run(OpenAIPolicy("tiny", base_url=server.base_url, **FAST).act(_context()))


def test_a_server_failing_on_stop_is_detected_once_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="segloop.openai"), \
            OpenAIServer(script=scripted_turns(SCRIPT), reject_stop=True) as server:
        _, trajectory = _episode(server)
    assert trajectory.submitted and [t.raw_text for t in trajectory.turns] == SCRIPT
    # Decided on two requests that failed with stop and answered without it; then none carries it.
    assert server.statuses == [500, 200, 500, 200, 200]
    assert ["stop" in r for r in server.requests] == [True, False, True, False, False]
    assert [t.policy_info.get("stop_sent") for t in trajectory.turns] == [False] * 3
    warnings = [r for r in caplog.records if "stop" in r.getMessage()]
    assert len(warnings) == 1 and "fails requests that carry `stop`" in warnings[0].getMessage()


def test_one_stray_500_does_not_switch_stop_off(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 18 item 8: a single 500 (answered when resent without `stop`) is no proof that the server cannot take
    `stop`: the next requests carry it, and once one is answered with it, it is known to work."""
    faults = [Fault()] * 3 + [Fault(status=500)]  # the first request fails, then the fifth
    with caplog.at_level(logging.WARNING, logger="segloop.openai"), \
            OpenAIServer(script=scripted_turns(SCRIPT), fail_first=1, fail_status=500, faults=faults) as server:
        policy, trajectory = _episode(server)
        assert trajectory.submitted and server.statuses == [500, 200, 200, 200]
        assert ["stop" in r for r in server.requests] == [True, False, True, True]
        assert policy._stop_works is True and not [r for r in caplog.records if "stop" in r.getMessage()]
        # Known to work, a later 500 is an ordinary one: retried once as it was, stop included.
        turn = asyncio.run(policy.act(_context()))
    assert turn.info["statuses"] == [500, 200] and all("stop" in r for r in server.requests[4:])


def test_a_hung_server_or_a_trickled_body_is_cut_at_the_deadline() -> None:
    for fault in (Fault(hang_s=30), Fault(trickle_s=0.05)):
        with OpenAIServer(script=scripted_turns(SCRIPT), faults=[fault, fault]) as server:
            policy = OpenAIPolicy("tiny", base_url=server.base_url, request_timeout=0.4, backoff=0.01)
            with pytest.raises(OpenAIPolicyError, match=r"no answer within 0.4 s \(the whole answer, body "
                                                        r"included\), twice \(2 attempts: timeout, timeout"):
                asyncio.run(policy.act(_context()))
        assert len(server.requests) == 2
    # A timed-out attempt does not spoil the slot: the retry answers.
    with OpenAIServer(script=scripted_turns(SCRIPT), faults=[Fault(hang_s=30)]) as server:
        policy = OpenAIPolicy("tiny", base_url=server.base_url, request_timeout=0.4, backoff=0.01, concurrency=1)
        turn = asyncio.run(policy.act(_context()))
    assert turn.info["statuses"] == ["timeout", 200]


def test_client_errors_are_not_retried_and_the_api_key_comes_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with OpenAIServer(script=scripted_turns(SCRIPT), api_key="sekret") as server:
        monkeypatch.delenv("SEGLOOP_TEST_KEY", raising=False)
        policy = OpenAIPolicy("tiny", base_url=server.base_url, api_key_env="SEGLOOP_TEST_KEY", **FAST)
        with pytest.raises(OpenAIPolicyError, match=r"HTTP 401: invalid API key"):
            asyncio.run(policy.act(_context()))
        assert len(server.requests) == 0  # refused before the body was read as a request
        monkeypatch.setenv("SEGLOOP_TEST_KEY", "sekret")
        policy = OpenAIPolicy("tiny", base_url=server.base_url, api_key_env="SEGLOOP_TEST_KEY", temperature=0)
        context = _context()
        context.seed = 7
        turn = asyncio.run(policy.act(context))
    assert turn.text == SCRIPT[0] and turn.info["seed"] == 7000
    sent = server.requests[-1]
    assert sent["seed"] == 7000 and sent["temperature"] == 0.0
    assert "sekret" not in str(policy.config.model_dump())  # the key is never part of the recorded options


def test_unreachable_server_is_a_clear_error_and_ends_the_episode() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    policy = OpenAIPolicy("tiny", base_url=f"http://127.0.0.1:{port}/v1", backoff=0.01, retries=1)
    with pytest.raises(OpenAIPolicyError, match=r"cannot connect .*\(2 attempts: no connection, no connection"):
        asyncio.run(policy.act(_context()))
    agent = Agent(policy, build_segmenter("grabcut"), EpisodeConfig(max_turns=3))
    result = asyncio.run(agent.run(_image(2), "anything", episode_id="down"))
    assert not result.mask.any()
    assert "cannot connect" in result.trajectory.failure.reason
    # The failed turn's attempts are kept with the failure: the server totals count them.
    info = result.trajectory.failure.policy_info
    assert info["statuses"] == ["no connection"] * 2 and info["unreachable"] and info["request_bytes"] > 0


def test_bad_options_are_refused_with_their_name(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="base_url"):
        OpenAIPolicy("tiny", base_url="localhost:8000")
    with pytest.raises(ValueError, match="tool_mode"):
        OpenAIPolicy("tiny", tool_mode="xml")
    with pytest.raises(ValueError, match="max_retries"):
        OpenAIPolicy("tiny", max_retries=2)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://gpu-box:9000/v1/")
    assert OpenAIConfig().base_url == "http://gpu-box:9000/v1"
    assert all(field.description for field in OpenAIConfig.model_fields.values())


# --- connections -----------------------------------------------------------------------------------------------
def test_concurrency_is_limited_and_requests_overlap() -> None:
    with OpenAIServer(script=scripted_turns(SCRIPT), latency_s=0.2) as server:
        policy = OpenAIPolicy("tiny", base_url=server.base_url, concurrency=4)

        async def many() -> list:
            return await asyncio.gather(*(policy.act(_context(f"c{i}")) for i in range(8)))

        turns = asyncio.run(many())
    assert [t.text for t in turns] == [SCRIPT[0]] * 8
    assert server.max_in_flight == 4  # they overlapped, four at a time, never more


def test_each_slot_keeps_its_connection_alive() -> None:
    with OpenAIServer(script=scripted_turns(SCRIPT), latency_s=0.05) as server:
        policy = OpenAIPolicy("tiny", base_url=server.base_url, concurrency=3)

        async def waves() -> None:
            for wave in range(4):
                await asyncio.gather(*(policy.act(_context(f"w{wave}-{i}")) for i in range(3)))
            await policy.aclose()

        asyncio.run(waves())
    assert len(server.requests) == 12
    assert len(server.connections) == 3  # one per slot, reused by every later wave


def test_the_tiny_model_answers_over_the_wire(tiny_server: OpenAIServer) -> None:
    server = tiny_server
    policy = OpenAIPolicy("tiny", base_url=server.base_url, max_tokens=12, max_side=112)
    agent = Agent(policy, build_segmenter("grabcut"), EpisodeConfig(max_turns=2))
    result = asyncio.run(agent.run(_image(3, 100, 120), "the cat", episode_id="model"))
    assert len(result.trajectory.turns) == 2  # random weights: nonsense turns, error observations
    assert result.trajectory.failure is None
    assert all(isinstance(t.raw_text, str) for t in result.trajectory.turns)
    assert len(server.requests) == 2 and server.requests[1]["messages"][-1]["role"] == "user"


@pytest.mark.slow
def test_the_concurrency_benchmark_runs() -> None:
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_concurrency.py"
    out = subprocess.run([sys.executable, str(script), "--latency", "0.1", "--episodes", "8", "--serial-episodes", "2",
                          "--repeats", "1"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    # The figure itself is the benchmark's to report (timed assertions fail on a loaded machine); here: both
    # concurrency levels ran their episodes and a ratio came out.
    rows = re.findall(r"^\s*0\s+(\d+)\s+(\d+)\s+[\d.]+\s+[\d.]+", out, flags=re.MULTILINE)
    assert sorted(rows) == [("1", "2"), ("32", "8")]
    assert float(re.search(r"speed-up at concurrency 32: ([\d.]+)x", out).group(1)) > 0


# --- the preflight -------------------------------------------------------------------------------------------
# The requests a preflight sends before the first episode: one without a picture, one with it.
PREFLIGHT_REQUESTS = 2


def test_the_preflight_passes_a_server_that_sees_pictures_and_refuses_one_that_drops_them() -> None:
    """Issue 18 item 4: the preflight asks twice, without and with a picture; a model whose prompt does not grow
    with the picture never sees the image, and is refused in one line naming the flag that overrides."""
    with OpenAIServer(script=scripted_turns(SCRIPT)) as server:
        assert asyncio.run(OpenAIPolicy("tiny", base_url=server.base_url, **FAST).preflight()) is None
    without, with_picture = server.requests
    assert [len(m["content"]) for m in (without["messages"][0], with_picture["messages"][0])] == [1, 2]
    assert with_picture["messages"][0]["content"][0]["type"] == "image_url" and without["max_tokens"] == 1
    with OpenAIServer(script=scripted_turns(SCRIPT), drop_images=True) as server, \
            pytest.raises(OpenAIPolicyError, match=r"drops pictures: model 'tiny' counts (\d+) prompt tokens for a "
                                                   r"request with one and \1 without.*--no-preflight runs anyway"):
        asyncio.run(OpenAIPolicy("tiny", base_url=server.base_url, **FAST).preflight())
    with OpenAIServer(script=scripted_turns(SCRIPT), drop_images=True) as server:
        assert asyncio.run(OpenAIPolicy("tiny", base_url=server.base_url, preflight=False).preflight()) is None
    assert server.requests == []


def test_the_preflight_says_when_the_model_is_not_served_or_tokens_are_not_counted() -> None:
    fault = Fault(status=404, body="The model `nonesuch` does not exist.")
    with OpenAIServer(script=scripted_turns(SCRIPT), faults=[fault]) as server, \
            pytest.raises(OpenAIPolicyError, match=r"does not answer a request for model 'nonesuch': .*HTTP 404: The "
                                                   r"model `nonesuch` does not exist"):
        asyncio.run(OpenAIPolicy("nonesuch", base_url=server.base_url, **FAST).preflight())
    with OpenAIServer(script=scripted_turns(SCRIPT)) as server:
        server.count_tokens = False
        note = asyncio.run(OpenAIPolicy("tiny", base_url=server.base_url, **FAST).preflight())
    assert note is not None and "reports no prompt token counts" in note


# --- the command line --------------------------------------------------------------------------------------
def _manifest(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        save_image(_smooth(150 + 20 * i, 200), folder / f"{i}.png")
        lines.append(json.dumps({"id": f"s{i}", "image": f"{i}.png", "query": "the red block", "mask": None}))
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "manifest.jsonl"


def test_batch_flags_reach_the_server_greedy_by_default_and_totals_reach_metrics(tmp_path: Path) -> None:
    script = [format_call(Segment(bbox_2d=[10, 10, 90, 80])), format_call(Submit())]
    manifest = _manifest(tmp_path / "data")
    with OpenAIServer(script=scripted_turns(script), tool_parser=True) as server:
        assert cli(["batch", "--data", str(manifest), "--policy", "openai", "--model", "served", "--base-url",
                    server.base_url, "--seed", "3", "--keep-images", "1", "--tool-mode", "native", "--max-tokens",
                    "64", "--out", str(tmp_path / "out"), "--quiet", "--no-overlays"]) == 0
    bodies = server.requests[PREFLIGHT_REQUESTS:]
    assert len(bodies) == 4 and {b["temperature"] for b in bodies} == {0.0}  # greedy unless asked otherwise
    assert all(b["max_tokens"] == 64 and "seed" in b and b["tools"] for b in bodies)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["server"]["requests"] == 4 and metrics["server"]["retries"] == 0
    assert metrics["server"]["request_bytes"] == sum(server.request_sizes[PREFLIGHT_REQUESTS:])
    settings = metrics["provenance"]["policy_settings"]
    assert settings["temperature"] == 0.0 and settings["greedy"] is True and settings["tool_mode"] == "native"
    assert settings["keep_images"] == 1 and "sekret" not in json.dumps(metrics)


def test_run_takes_the_server_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_image(_smooth(), tmp_path / "photo.png")
    with OpenAIServer(script=scripted_turns([format_call(Submit(no_target=True))])) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)  # the default of --base-url
        assert cli(["run", str(tmp_path / "photo.png"), "the cat", "--policy", "openai", "--model", "m",
                    "--temperature", "0", "--seed", "1", "--image-format", "webp", "--no-stop",
                    "--out", str(tmp_path / "ep")]) == 0
    body = server.requests[PREFLIGHT_REQUESTS]
    assert body["temperature"] == 0.0 and "stop" not in body and isinstance(body["seed"], int)
    assert body["messages"][1]["content"][0]["image_url"]["url"].startswith("data:image/webp;base64,")
    assert cli(["run", str(tmp_path / "photo.png"), "the cat", "--policy", "openai", "--model", "m",
                "--temperature", "9", "--out", str(tmp_path / "bad")]) == 2


def test_a_batch_or_run_against_a_server_that_drops_pictures_runs_nothing(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    """Issue 18 item 4: no episode runs blind. The batch (and run) stop after the preflight's two requests with
    one line and a non-zero exit; --no-preflight runs anyway."""
    manifest = _manifest(tmp_path / "data")
    save_image(_smooth(), tmp_path / "photo.png")
    script = scripted_turns([format_call(Submit(no_target=True))])
    with OpenAIServer(script=script, drop_images=True) as server:
        batch = ["batch", "--data", str(manifest), "--policy", "openai", "--model", "served", "--base-url",
                 server.base_url, "--out", str(tmp_path / "out"), "--quiet", "--no-overlays"]
        assert cli(batch) == 2
        assert len(server.requests) == PREFLIGHT_REQUESTS and not (tmp_path / "out" / "trajectories.jsonl").exists()
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"segloop batch: nothing was run: {server.base_url} drops pictures")
        run = ["run", str(tmp_path / "photo.png"), "the cat", "--policy", "openai", "--model", "m", "--base-url",
               server.base_url, "--out", str(tmp_path / "ep")]
        assert cli(run) == 2 and not (tmp_path / "ep").exists()
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"segloop run: nothing was run: {server.base_url} drops pictures")
        assert cli([*batch, "--no-preflight"]) == 0
    assert len(read_finished(tmp_path / "out" / "trajectories.jsonl")) == 2


def test_resuming_takes_another_way_to_the_server_and_records_every_value_used(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    """Issue 18 item 7: a longer --request-timeout, more --retries, localhost for 127.0.0.1 do not change results:
    the batch resumes. Each run records the values it used; a setting that changes results is still refused."""
    manifest = _manifest(tmp_path / "data", n=3)
    out = tmp_path / "out"
    script = scripted_turns([format_call(Segment(bbox_2d=[10, 10, 90, 80])), format_call(Submit())])
    with OpenAIServer(script=script) as server:
        port = server.base_url.split(":")[2].split("/")[0]
        batch = ["batch", "--data", str(manifest), "--policy", "openai", "--model", "served", "--out", str(out),
                 "--quiet", "--no-overlays"]
        assert cli([*batch, "--base-url", server.base_url, "--limit", "2"]) == 0
        assert cli([*batch, "--base-url", f"http://localhost:{port}/v1", "--request-timeout", "120",
                    "--retries", "6"]) == 0
        assert "resuming" in capsys.readouterr().err
        assert cli([*batch, "--base-url", server.base_url, "--temperature", "0.5"]) == 2
    assert "agent.policy_options.temperature: 0.0 -> 0.5" in capsys.readouterr().err
    assert len(read_finished(out / "trajectories.jsonl")) == 3
    runs = json.loads((out / "run.json").read_text())["runs"]
    used = [(r["policy_settings"]["base_url"], r["policy_settings"]["request_timeout"],
             r["policy_settings"]["retries"]) for r in runs]
    assert used == [(server.base_url, 60.0, 4), (f"http://localhost:{port}/v1", 120.0, 6)]
    assert runs[1]["episodes_run"] == 1


def test_the_demo_gives_ui_chosen_servers_the_command_line_knobs() -> None:
    from segloop.demos.backends import BackendChoice, Backends
    from segloop.policies.assembly import AgentSpec

    backends = Backends(AgentSpec(), {"temperature": 0.0, "tool_mode": "native"})
    spec = backends.spec_for(BackendChoice(kind="openai", url="http://gpu-box:8000/v1", model="m"))
    # Another server than the command line's (localhost:8000 here): no key of ours goes to it.
    assert spec.policy_options == {"retries": 1, "temperature": 0.0, "tool_mode": "native",
                                   "base_url": "http://gpu-box:8000/v1", "api_key_env": None}
    assert cli(["demo", "--temperature", "-1"]) == 2


def test_native_history_keeps_turns_without_a_call_as_text() -> None:
    from segloop.policies.chat import openai_messages

    images = {"v0": _image(0, 56, 56), "v1": _image(1, 56, 56), "v2": _image(2, 56, 56)}
    messages = [ChatMessage(role="system", content="sys"), ChatMessage(role="user", content="go", image_id="v0"),
                ChatMessage(role="assistant", content="<tool_call>{not json</tool_call>"),
                ChatMessage(role="tool", content="Error: bad JSON", image_id="v1"),
                ChatMessage(role="assistant", content="<think>t</think>" + format_call(Submit())),
                ChatMessage(role="tool", content="Submitted.", image_id="v2")]
    sent = openai_messages(messages, images, tool_mode="native")
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user", "assistant", "tool", "user"]
    assert sent[2] == {"role": "assistant", "content": "<tool_call>{not json</tool_call>"}
    assert sent[3]["content"][0] == {"type": "text", "text": TOOL_OPEN}  # answered as in prompt mode
    assert sent[4]["content"] == "<think>t</think>" and sent[4]["tool_calls"][0]["id"] == "call00001"
    assert sent[5] == {"role": "tool", "tool_call_id": "call00001", "content": "Submitted."}
    with pytest.raises(ValueError, match="tool mode"):
        openai_messages(messages, images, tool_mode="xml")
