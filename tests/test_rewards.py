"""Reward sources, their validation, and global-score post-processing."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from ppo_dist.config import Config, ConfigError, RewardConfig, validate
from ppo_dist.rewards import (
    RewardError,
    RewardModelScorer,
    RewardNormalizer,
    RewardTimeoutError,
    build_reward,
    chinese_rule,
    load_reward_fn,
)

PROMPTS = ["p0", "p1", "p2"]
COMPLETIONS = ["我喜欢学习，每天都很开心快乐。", "好好好好好好", "abc"]


def approx(values, **kw):
    return pytest.approx(values, abs=1e-6, **kw)


# ---------------------------------------------------------------- built-ins


def test_chinese_rule_hand_computed():
    # 15 chars (10..50: +0.5); 喜欢, 学习, 开心, 快乐 present (+4*0.3); 14 distinct bigrams of 14
    # -> 0.1 + 0.5 + 1.2 = 1.8
    # "好好好好好好": 6 chars (no length bonus); 好 (+0.3); 5 bigrams, 1 distinct (-0.2) -> 0.2
    # "abc": 0.1.  "   " strips to "" -> 0.1.  51 chars of "x": no bonus; bigrams repeat -> -0.1
    texts = COMPLETIONS + ["   ", "x" * 51, "今天天气很好，我们一起去公园散步吧"]
    # last: 17 chars (+0.5), 好 (+0.3) -> 0.9
    assert chinese_rule([""] * 6, texts) == approx([1.8, 0.2, 0.1, 0.1, -0.1, 0.9])


def test_length_and_contains_any_builtins_read_their_config_fields():
    reward = build_reward(RewardConfig(functions=["length", "contains_any"], length_target=4, words=["好", "abc"]))
    out = reward(["", "", "", ""], ["  ab  ", "abcdefg", "", "好"])
    assert out["length"].tolist() == approx([0.5, 1.0, 0.0, 0.25])
    assert out["contains_any"].tolist() == approx([0.0, 1.0, 0.0, 1.0])
    assert out["score"].tolist() == approx([0.5, 2.0, 0.0, 1.25])


def test_output_contract_dtypes_shapes_and_names():
    out = build_reward(["chinese_rule"])(PROMPTS, COMPLETIONS, extra=[1, 2, 3])
    assert list(out) == ["chinese_rule", "score"]
    for v in out.values():
        assert v.dtype == torch.float32 and v.shape == (3,)
    assert out["score"].tolist() == approx([1.8, 0.2, 0.1])


def test_shard_invariance_full_batch_equals_concatenated_halves():
    reward = build_reward(["chinese_rule", "length"], weights=[1.0, 0.5], length_target=10)
    texts = COMPLETIONS + ["今天天气很好"]
    full = reward(["p"] * 4, texts)["score"]
    halves = torch.cat([reward(["p"] * 2, texts[:2])["score"], reward(["p"] * 2, texts[2:])["score"]])
    assert torch.equal(full, halves)


def test_weighted_sum_of_two_functions():
    reward = build_reward(["chinese_rule", "length"], weights=[2.0, -1.0], length_target=10)
    out = reward(PROMPTS, COMPLETIONS)
    assert out["length"].tolist() == approx([1.0, 0.6, 0.3])
    assert out["score"].tolist() == approx([2 * 1.8 - 1.0, 2 * 0.2 - 0.6, 2 * 0.1 - 0.3])


# ---------------------------------------------------------------- loading user functions

MODULE_SRC = """
def n_chars(prompts, completions, **columns):
    return [float(len(c)) for c in completions]

def with_answer(prompts, completions, answer):
    return [1.0 if a in c else 0.0 for c, a in zip(completions, answer)]

def legacy(texts):
    return [len(t) * 0.5 for t in texts]

async def async_reward(prompts, completions, **columns):
    import asyncio
    await asyncio.sleep(0.01)
    return [float(len(p)) for p in prompts]

NOT_CALLABLE = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(MODULE_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_module_path_function(user_module):
    out = build_reward(["my_rewards:n_chars"])(PROMPTS, COMPLETIONS)
    assert list(out) == ["n_chars", "score"]
    assert out["n_chars"].tolist() == [15.0, 6.0, 3.0]


def test_file_path_function(user_module, monkeypatch):
    monkeypatch.chdir(user_module)
    out = build_reward(["my_rewards.py:n_chars", str(user_module / "my_rewards.py") + ":legacy"])(PROMPTS, COMPLETIONS)
    assert out["n_chars"].tolist() == [15.0, 6.0, 3.0]
    assert out["legacy"].tolist() == [7.5, 3.0, 1.5]


def test_columns_are_passed_by_name_to_functions_without_kwargs(user_module):
    out = build_reward(["my_rewards:with_answer"])(PROMPTS, COMPLETIONS, answer=["学习", "x", "b"], other=[0, 0, 0])
    assert out["with_answer"].tolist() == [1.0, 0.0, 1.0]


def test_legacy_single_argument_function_gets_completions(user_module):
    out = build_reward(["my_rewards:legacy"])(PROMPTS, COMPLETIONS, answer=["a", "b", "c"])
    assert out["legacy"].tolist() == [7.5, 3.0, 1.5]


def test_async_function_also_from_a_thread_with_a_running_loop(user_module):
    reward = build_reward(["my_rewards:async_reward"])
    assert reward(["a", "bb", "ccc"], COMPLETIONS)["async_reward"].tolist() == [1.0, 2.0, 3.0]

    async def inside_loop():  # called while an event loop runs in this thread
        return reward(["a", "bb", "ccc"], COMPLETIONS)

    import asyncio

    assert asyncio.run(inside_loop())["score"].tolist() == [1.0, 2.0, 3.0]
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("out", reward(["a", "bb", "ccc"], COMPLETIONS)))
    t.start()
    t.join(10)
    assert box["out"]["score"].tolist() == [1.0, 2.0, 3.0]


def test_callables_and_duplicate_names_get_unique_keys():
    def score(prompts, completions, **_):
        return [1.0] * len(completions)

    out = build_reward([score, score, "chinese_rule"])(PROMPTS, COMPLETIONS)
    assert list(out) == ["score_2", "score_3", "chinese_rule", "score"]
    assert out["score"].tolist() == approx([3.8, 2.2, 2.1])


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("nope_no_such_module:fn", "cannot import module 'nope_no_such_module'"),
        ("my_rewards:missing", "'my_rewards' has no attribute 'missing'"),
        ("my_rewards:NOT_CALLABLE", "'NOT_CALLABLE' is a int, not callable"),
        ("does/not/exist.py:fn", "file not found"),
        ("unknown_builtin", "unknown reward function 'unknown_builtin'"),
    ],
)
def test_loading_errors_name_the_spec(user_module, spec, fragment):
    with pytest.raises(RewardError) as e:
        load_reward_fn(spec)
    assert fragment in str(e.value) and spec in str(e.value)


# ---------------------------------------------------------------- invalid outputs


def _fn(values=None, exc=None, sleep=0.0):
    def bad_fn(prompts, completions, **_):
        if sleep:
            time.sleep(sleep)
        if exc:
            raise exc
        return values

    return bad_fn


@pytest.mark.parametrize(
    "fn, fragment",
    [
        (_fn(exc=ValueError("boom")), "raised ValueError: boom"),
        (_fn([1.0, math.nan, 0.0]), "returned nan for sample 1 (completion '好好好好好好')"),
        (_fn([1.0, 0.0, math.inf]), "returned inf for sample 2"),
        (_fn([1.0, 0.0, 1e39]), "returned 1e+39 for sample 2"),  # finite in float64, inf in float32
        (_fn([None, 0.0, 0.0]), "returned None for sample 0 (completion '我喜欢学习"),
        (_fn([1.0, "0.5", 0.0]), "returned '0.5' for sample 1"),
        (_fn([True, 0.0, 0.0]), "returned True for sample 0"),
        (_fn([1.0, 2.0]), "returned 2 values for 3 completions"),
        (_fn(0.5), "returned float, expected a list of floats"),
        (_fn("abc"), "returned str, expected a list of floats"),
    ],
)
def test_invalid_output_raises_naming_the_function(fn, fragment):
    with pytest.raises(RewardError) as e:
        build_reward([fn])(PROMPTS, COMPLETIONS)
    assert "reward function 'bad_fn'" in str(e.value) and fragment in str(e.value)


def test_long_completion_is_truncated_in_the_message():
    with pytest.raises(RewardError) as e:
        build_reward([_fn([math.nan])])(["p"], ["字" * 500])
    assert "字" * 80 + "..." in str(e.value) and "字" * 81 not in str(e.value)


def test_timeout_raises_quickly_and_abandons_the_thread():
    reward = build_reward([_fn([0.0] * 3, sleep=5.0)], timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(RewardTimeoutError, match=r"'bad_fn' did not return within reward.timeout=0.3s"):
        reward(PROMPTS, COMPLETIONS)
    assert time.monotonic() - t0 < 2.0
    stuck = [t for t in threading.enumerate() if t.name == "reward-bad_fn"]
    assert stuck and all(t.daemon for t in stuck)  # never keeps the process alive


def test_function_raising_timeouterror_is_not_reported_as_our_timeout():
    with pytest.raises(RewardError, match="'bad_fn' raised TimeoutError: inner"):
        build_reward([_fn(exc=TimeoutError("inner"))], timeout=5)(PROMPTS, COMPLETIONS)


def test_all_functions_run_before_failures_are_raised():
    calls = []

    def counted(prompts, completions, **_):
        calls.append(1)
        return [0.0] * len(completions)

    with pytest.raises(RewardError) as e:
        build_reward([_fn(exc=ValueError("a")), counted, _fn([None] * 3)])(PROMPTS, COMPLETIONS)
    assert calls == [1]  # the later function still ran (keeps collective-bearing reward models in step)
    assert "'bad_fn' raised ValueError: a" in str(e.value) and "'bad_fn_2' returned None for sample 0" in str(e.value)
    assert "(3 of 3 samples invalid)" in str(e.value)


def test_skip_sample_marks_invalid_values_nan_and_valid_false(caplog):
    reward = build_reward(["chinese_rule", _fn([1.0, None, math.inf])], on_invalid="skip_sample")
    with caplog.at_level(logging.WARNING, logger="ppo_dist.rewards"):
        out = reward(PROMPTS, COMPLETIONS)
    assert out["valid"].dtype == torch.bool and out["valid"].tolist() == [True, False, False]
    assert out["bad_fn"][0].item() == 1.0 and out["bad_fn"][1:].isnan().all()
    assert out["chinese_rule"].tolist() == approx([1.8, 0.2, 0.1])  # other components are kept
    assert out["score"][0].item() == pytest.approx(2.8) and out["score"][1:].isnan().all()
    assert "2 of 3 samples marked invalid" in caplog.text


def test_skip_sample_always_returns_valid_and_still_raises_call_level_failures():
    out = build_reward(["chinese_rule"], on_invalid="skip_sample")(PROMPTS, COMPLETIONS)
    assert out["valid"].all()
    with pytest.raises(RewardError, match="returned 2 values for 3"):
        build_reward([_fn([1.0, 2.0])], on_invalid="skip_sample")(PROMPTS, COMPLETIONS)


def test_config_validation_of_reward_fields():
    cfg = Config()
    validate(cfg)
    for changes, fragment in [
        ({"on_invalid": "drop"}, "reward.on_invalid"),
        ({"timeout": 0}, "reward.timeout"),
        ({"functions": ["reward_model"]}, "reward.model_path is empty"),
        ({"functions": ["http"]}, "reward.url is empty"),
        ({"functions": ["contains_any"]}, "reward.words is empty"),
        ({"weights": [1.0, 2.0]}, "reward.weights has 2 entries"),
        ({"clip": -1.0}, "reward.clip"),
    ]:
        cfg = Config(reward=RewardConfig(**changes))
        with pytest.raises(ConfigError, match=fragment):
            validate(cfg)


# ---------------------------------------------------------------- reward model


@pytest.fixture(scope="module")
def tiny_rm_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from ppo_dist.models.tokenizer import load_embedded_tokenizer

    tok = load_embedded_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
    )
    model = GPT2ForSequenceClassification(config).eval()
    path = tmp_path_factory.mktemp("rm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, model, tok


def _manual_scores(model, tok, texts, max_length=None):
    out = []
    for t in texts:
        ids = tok(t)["input_ids"]
        if max_length:
            ids = ids[-max_length:]
        with torch.no_grad():
            out.append(model(input_ids=torch.tensor([ids])).logits[0, 0].item())
    return out


def test_reward_model_scores_equal_manual_forward_in_micro_batches(tiny_rm_dir):
    path, model, tok = tiny_rm_dir
    prompts = ["今天天气", "我喜欢", "a", "学习编程", ""]
    completions = ["很好，我们一起去公园散步吧。", "读书", "bcdefg hijk", "很有趣", "好"]
    reward = build_reward(RewardConfig(functions=["reward_model"], model_path=str(path), model_batch_size=2))
    out = reward(prompts, completions)
    expected = _manual_scores(model, tok, [p + c for p, c in zip(prompts, completions, strict=True)])
    assert out["reward_model"].tolist() == pytest.approx(expected, abs=1e-5)
    scorer = reward.model_scorers()[0].model
    assert scorer.training is False and not any(p.requires_grad for p in scorer.parameters())
    assert isinstance(reward.model_scorers()[0], RewardModelScorer)


def test_reward_model_truncates_from_the_left(tiny_rm_dir):
    path, model, tok = tiny_rm_dir
    texts = ["今天天气很好，我们一起去公园散步吧。我喜欢学习新的知识，每天都有成长。", "短"]
    assert len(tok(texts[0])["input_ids"]) > 6
    scorer = RewardModelScorer(str(path), max_length=6, batch_size=4)
    assert scorer(texts, ["", ""]).tolist() == pytest.approx(_manual_scores(model, tok, texts, max_length=6), abs=1e-5)


def test_reward_model_without_pad_token_uses_eos_with_warning(tmp_path, caplog):
    from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

    from ppo_dist.models.tokenizer import EOS_TOKEN, TOKENIZER_FILE

    tok = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER_FILE), eos_token=EOS_TOKEN)
    assert tok.pad_token is None
    model = GPT2ForSequenceClassification(
        GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=1, n_head=2, num_labels=1)
    ).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="ppo_dist.rewards"):
        scorer = RewardModelScorer(str(tmp_path), batch_size=4)
    assert "no pad token" in caplog.text
    assert scorer.model.config.pad_token_id == tok.eos_token_id
    texts = ["我喜欢学习", "好"]
    assert scorer(texts, ["", ""]).tolist() == pytest.approx(_manual_scores(model, tok, texts), abs=1e-5)


def test_reward_model_with_two_labels_is_rejected(tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from ppo_dist.models.tokenizer import load_embedded_tokenizer

    tok = load_embedded_tokenizer()
    GPT2ForSequenceClassification(
        GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, num_labels=2)
    ).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(RewardError, match="num_labels=2"):
        RewardModelScorer(str(tmp_path))


# ---------------------------------------------------------------- HTTP service


class _Server:
    """Scripted reward service: each request pops the next (status, body, delay) from ``script``."""

    def __init__(self, script):
        self.script, self.requests, self.release = list(script), [], threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                outer.requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                status, body, delay = outer.script.pop(0) if len(outer.script) > 1 else outer.script[0]
                if delay:
                    outer.release.wait(delay)
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # client gave up

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/score"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def _http_reward(url, **kw):
    return build_reward(RewardConfig(functions=["http"], url=url, **{"http_backoff": 0.01, **kw}))


def test_http_success_sends_prompts_completions_and_columns():
    with _Server([(200, {"rewards": [0.5, -1, 2.25]}, 0)]) as srv:
        out = _http_reward(srv.url)(PROMPTS, COMPLETIONS, answer=["a", "b", "c"])
    assert out["http"].tolist() == [0.5, -1.0, 2.25]
    assert srv.requests == [{"prompts": PROMPTS, "completions": COMPLETIONS, "answer": ["a", "b", "c"]}]


def test_http_url_entry_and_500_then_200_retry():
    with _Server([(500, "busy", 0), (200, {"rewards": [1, 2, 3]}, 0)]) as srv:
        out = build_reward([srv.url], http_backoff=0.01)(PROMPTS, COMPLETIONS)
    assert out["http"].tolist() == [1.0, 2.0, 3.0] and len(srv.requests) == 2


def test_http_permanent_500_names_url_and_status_after_bounded_retries():
    with _Server([(500, "internal kaboom", 0)]) as srv:
        with pytest.raises(RewardError) as e:
            _http_reward(srv.url, http_retries=2)(PROMPTS, COMPLETIONS)
    msg = str(e.value)
    assert "reward function 'http'" in msg and srv.url in msg and "HTTP 500" in msg and "internal kaboom" in msg
    assert "after 3 attempts" in msg and len(srv.requests) == 3


def test_http_4xx_is_not_retried():
    with _Server([(422, "bad payload", 0)]) as srv:
        with pytest.raises(RewardError, match="HTTP 422: 'bad payload' \\(not retried\\)"):
            _http_reward(srv.url)(PROMPTS, COMPLETIONS)
    assert len(srv.requests) == 1


def test_http_slow_server_times_out():
    with _Server([(200, {"rewards": [1, 2, 3]}, 3.0)]) as srv:
        t0 = time.monotonic()
        with pytest.raises(RewardError) as e:
            _http_reward(srv.url, http_timeout=0.2, http_retries=1)(PROMPTS, COMPLETIONS)
        elapsed = time.monotonic() - t0
    assert srv.url in str(e.value) and "timed out" in str(e.value) and "after 2 attempts" in str(e.value)
    assert elapsed < 2.0


def test_http_overall_reward_timeout_bounds_retries():
    with _Server([(200, {"rewards": [1, 2, 3]}, 3.0)]) as srv:
        with pytest.raises(RewardError, match="'http' did not return within reward.timeout=0.5s"):
            _http_reward(srv.url, http_timeout=0.4, http_retries=10, timeout=0.5)(PROMPTS, COMPLETIONS)


@pytest.mark.parametrize(
    "body, fragment", [("not json{", "invalid JSON"), ({"scores": [1]}, "without a 'rewards' key")]
)
def test_http_malformed_answer(body, fragment):
    with _Server([(200, body, 0)]) as srv:
        with pytest.raises(RewardError) as e:
            _http_reward(srv.url)(PROMPTS, COMPLETIONS)
    assert fragment in str(e.value) and srv.url in str(e.value)


def test_http_values_are_validated_like_any_function():
    with _Server([(200, {"rewards": [1, None, 3]}, 0)]) as srv:
        with pytest.raises(RewardError, match="'http' returned None for sample 1"):
            _http_reward(srv.url)(PROMPTS, COMPLETIONS)


def test_http_connection_refused_is_retried_then_named():
    with _Server([(200, {}, 0)]) as srv:
        url = srv.url
    with pytest.raises(RewardError) as e:  # server is gone
        _http_reward(url, http_retries=1)(PROMPTS, COMPLETIONS)
    assert url in str(e.value) and "after 2 attempts" in str(e.value)


# ---------------------------------------------------------------- normalizer (global scores)

SCORES = torch.tensor([1.0, 2.0, 0.5, -1.0, 3.0, 2.5, 0.0, 4.0])


def test_normalizer_order_eos_penalty_scale_normalize_clip():
    finished = torch.tensor([True, False, True, True, True, True, False, True])
    norm = RewardNormalizer(no_eos_penalty=-1.0, scale=2.0, normalize=True, clip=1.5)
    out = norm(SCORES, finished)
    x = (SCORES.double() + torch.where(finished, 0.0, -1.0)) * 2.0
    expected = ((x - x.mean()) / x.std(unbiased=False)).clamp(-1.5, 1.5)
    assert out.dtype == torch.float32 and torch.allclose(out.double(), expected, atol=1e-6)
    assert (
        norm.count == 8
        and norm.mean == pytest.approx(x.mean().item())
        and norm.var == pytest.approx(x.var(unbiased=False).item())
    )


def test_normalizer_without_normalize_only_penalty_scale_clip():
    out = RewardNormalizer(no_eos_penalty=-0.5, scale=0.5, clip=1.0)(SCORES, torch.arange(8) % 2 == 0)
    assert out.tolist() == approx([0.5, 0.75, 0.25, -0.75, 1.0, 1.0, 0.0, 1.0])


@pytest.mark.distributed
def test_normalizer_one_process_equals_two_processes_through_the_real_gather(tmp_path):
    """Each of 2 processes holds half of each batch and normalises through gather_1d, as the trainer does;
    the result equals one process normalising the whole batch, and differs from per-shard statistics."""
    from tests.launch import launch
    from tests.scripts.normalize_shards import BATCHES, SETTINGS

    launch([str(tmp_path)], num_processes=2, script="tests/scripts/normalize_shards.py")
    one = RewardNormalizer(**SETTINGS)
    expected = [one(torch.tensor(s), torch.tensor(f)).tolist() for s, f in BATCHES]
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank_{rank}.json").read_text())
        assert got["world_size"] == 2
        assert got["outputs"] == expected and got["state"] == one.state_dict(), rank
    # Normalising each half with its own statistics gives other numbers: the comparison above has teeth.
    per_shard = [RewardNormalizer(**SETTINGS) for _ in range(2)]
    for (scores, finished), step_expected in zip(BATCHES, expected, strict=True):
        halves = [
            n(torch.tensor(scores[4 * r : 4 * r + 4]), torch.tensor(finished[4 * r : 4 * r + 4]))
            for r, n in enumerate(per_shard)
        ]
        assert torch.cat(halves).tolist() != approx(step_expected)


def test_normalizer_sequential_updates_merge_like_one_update():
    whole, parts = RewardNormalizer(normalize=True), RewardNormalizer(normalize=True)
    whole.update(SCORES)
    parts.update(SCORES[:4])
    parts.update(SCORES[4:])
    assert parts.count == whole.count == 8
    assert parts.mean == pytest.approx(whole.mean, abs=1e-12) == SCORES.double().mean().item()
    assert parts.var == pytest.approx(whole.var, abs=1e-12)
    assert whole.var == pytest.approx(SCORES.double().var(unbiased=False).item(), abs=1e-12)
    # the second call normalises with the stats of all 8 scores seen so far
    n = RewardNormalizer(normalize=True)
    n(SCORES[:4], torch.ones(4, dtype=torch.bool))
    out = n(SCORES[4:], torch.ones(4, dtype=torch.bool))
    ref = (SCORES[4:].double() - SCORES.double().mean()) / SCORES.double().std(unbiased=False)
    assert torch.allclose(out.double(), ref, atol=1e-6)


def test_normalizer_ignores_nan_and_floors_std():
    n = RewardNormalizer(normalize=True)
    out = n(torch.tensor([1.0, math.nan, 3.0]), torch.ones(3, dtype=torch.bool))
    assert n.count == 2 and n.mean == 2.0 and out[1].isnan() and out[[0, 2]].tolist() == [-1.0, 1.0]
    const = RewardNormalizer(normalize=True)
    assert const(torch.full((4,), 5.0), torch.ones(4, dtype=torch.bool)).tolist() == [0.0] * 4


def test_normalizer_state_dict_round_trip():
    a = RewardNormalizer(normalize=True)
    a(SCORES[:5], torch.ones(5, dtype=torch.bool))
    b = RewardNormalizer.from_config(RewardConfig(normalize=True))
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))  # survives a JSON checkpoint too
    assert b.state_dict() == a.state_dict()
    rest = SCORES[5:]
    assert torch.equal(a(rest, torch.ones(3, dtype=torch.bool)), b(rest, torch.ones(3, dtype=torch.bool)))
    with pytest.raises(KeyError, match="m2"):
        b.load_state_dict({"count": 1, "mean": 0.0})


def test_plain_function_returning_an_awaitable_is_awaited():
    import asyncio

    async def compute(completions):
        await asyncio.sleep(0)
        return [float(len(c)) for c in completions]

    def returns_coroutine(prompts, completions, **_):
        return compute(completions)

    assert build_reward([returns_coroutine])(PROMPTS, COMPLETIONS)["score"].tolist() == [15.0, 6.0, 3.0]
