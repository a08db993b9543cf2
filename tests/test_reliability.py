"""Bad inputs get clear errors; faults end the job cleanly; numerical trouble is caught."""

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ppo_dist.config import ConfigError, DataConfig, ModelConfig, RolloutConfig
from ppo_dist.data import PromptStream, load_prompt_dataset, tokenize_prompts
from ppo_dist.models import build_tiny_gpt2, load_tokenizer, prepare_tokenizer
from ppo_dist.rl.engines import Sampling
from ppo_dist.rl.engines.hf import generate, generation_config
from ppo_dist.rl.rollout import ends_with_eos, truncate_at_eos
from ppo_dist.runtime.checkpoint import complete_checkpoints
from tests.launch import REPO, TINY_ARGS, cpu_env, launch

BAD = REPO / "tests" / "scripts" / "bad_rewards.py"


def _train(args, env=None, timeout=120, **kwargs):
    """train.py as one plain process (no launcher)."""
    return subprocess.run(
        [sys.executable, "train.py", *TINY_ARGS, *args],
        cwd=REPO,
        env=env or cpu_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


# ---------------------------------------------------------------- reward faults on one of two processes


@pytest.mark.distributed
@pytest.mark.parametrize(
    "fn, message",
    [
        ("raises_on_rank1", "scoring service exploded"),
        ("nan_on_rank1", "nan"),
        ("sleeps_on_rank1", "did not return within reward.timeout=5s"),
    ],
)
def test_reward_failing_on_one_rank_stops_both_within_60s(tmp_path, fn, message):
    t0 = time.monotonic()
    proc = launch(
        [
            *TINY_ARGS,
            "--train.output_dir",
            str(tmp_path),
            "--reward.functions",
            f"['{BAD}:{fn}']",
            "--reward.timeout",
            "5",
            "--train.collective_timeout",
            "30",
        ],
        num_processes=2,
        check=False,
        timeout=120,
    )
    assert time.monotonic() - t0 < 60
    assert proc.returncode != 0
    assert fn in proc.stderr and message in proc.stderr.lower(), proc.stderr[-3000:]
    assert proc.stderr.count("reward failed at step 1 on process 1") == 2  # the same message from both processes


# ---------------------------------------------------------------- process and disk faults


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(c) for c in (task / "children").read_text().split()]
    return kids


@pytest.mark.distributed
def test_killed_process_ends_the_other_within_60s_and_checkpoint_stays_intact(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(REPO / "train.py"),
        *TINY_ARGS,
        "--train.total_steps",
        "400",
        "--checkpoint.every",
        "2",
        "--train.collective_timeout",
        "20",
        "--train.output_dir",
        str(tmp_path),
    ]
    launcher = subprocess.Popen(
        cmd, cwd=REPO, env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    while not complete_checkpoints(tmp_path / "checkpoints"):
        assert time.monotonic() < deadline and launcher.poll() is None
        time.sleep(0.2)
    workers = _children(launcher.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)  # rank 1 dies mid-run
    t0 = time.monotonic()
    out = launcher.communicate(timeout=90)[0]
    assert time.monotonic() - t0 < 60
    assert launcher.returncode != 0, out[-2000:]
    step, path = complete_checkpoints(tmp_path / "checkpoints")[-1]
    # The newest complete checkpoint loads: resume from it and run one more step.
    resumed = launch(
        [
            *TINY_ARGS,
            "--train.output_dir",
            str(tmp_path),
            "--checkpoint.resume",
            str(path),
            "--train.total_steps",
            str(step + 1),
        ],
        num_processes=2,
    )
    assert f"resumed from step {step}" in resumed.stderr


def test_checkpoint_write_failure_says_so_and_keeps_the_previous(tmp_path):
    args = ["--train.output_dir", str(tmp_path), "--checkpoint.every", "1", "--checkpoint.keep", "5"]
    assert _train([*args, "--train.total_steps", "2"]).returncode == 0

    def disk_full():  # files larger than 64 KiB fail with EFBIG, like a full disk, mid-checkpoint
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    proc = _train([*args, "--train.total_steps", "4", "--checkpoint.resume", "auto"], preexec_fn=disk_full)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "writing checkpoint step_3" in proc.stderr and "File too large" in proc.stderr
    assert "step_2 is intact" in proc.stderr
    assert [s for s, _ in complete_checkpoints(tmp_path / "checkpoints")] == [1, 2]
    assert not (tmp_path / "checkpoints" / ".tmp_step_3").exists()
    again = _train([*args, "--train.total_steps", "4", "--checkpoint.resume", "auto"])
    assert again.returncode == 0 and "resumed from step 2" in again.stderr


# ---------------------------------------------------------------- numerical trouble


@pytest.mark.distributed
@pytest.mark.parametrize("max_grad_norm", ["1.0", "null"])  # clipped, and unclipped (norm only for the check)
def test_non_finite_updates_are_skipped_together_then_stop_with_checkpoint_from_before(tmp_path, max_grad_norm):
    proc = launch(
        [
            *TINY_ARGS,
            "--train.total_steps",
            "10",
            "--checkpoint.every",
            "1",
            "--checkpoint.keep",
            "10",
            "--optim.max_grad_norm",
            max_grad_norm,
            "--train.max_bad_steps",
            "3",
            "--train.output_dir",
            str(tmp_path),
            "--reward.functions",
            f"['{BAD}:huge_after_two_steps']",
        ],
        num_processes=2,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    # Steps 3, 4, 5 have non-finite losses: warned (by both processes), no periodic checkpoint, then a clear stop.
    assert (
        proc.stderr.count("bad PPO step 3 (1/3 in a row)") == 2
        and proc.stderr.count("bad PPO step 4 (2/3 in a row)") == 2
    )
    assert proc.stderr.count("error: 3 bad PPO steps in a row (last: step 5") == 2
    assert (
        "[rank0]: Traceback" not in proc.stderr and "[rank1]: Traceback" not in proc.stderr
    )  # only the launcher's own
    assert "optimiser update(s) skipped" in proc.stderr
    assert [s for s, _ in complete_checkpoints(tmp_path / "checkpoints")] == [1, 2]


def test_kl_guard_stops_a_policy_collapsing_at_far_too_high_lr(tmp_path):
    # On the tiny default, lr 1e-3 stays bounded (the adaptive KL controller holds objective/kl near
    # ppo.kl_target, ~7 after 40 steps); lr 1e-2 jumps to KL ~15 at step 2 and halves the entropy
    # within ~12 steps. The guard stops the run at the first step past train.max_kl.
    proc = _train(
        [
            "--train.output_dir",
            str(tmp_path),
            "--optim.lr",
            "1e-2",
            "--train.total_steps",
            "30",
            "--rollout.batch_size",
            "32",
            "--ppo.mini_batch_size",
            "8",
            "--rollout.max_new_tokens",
            "32",
            "--ppo.ppo_epochs",
            "4",
            "--train.max_kl",
            "10",
            "--checkpoint.every",
            "1",
            "--checkpoint.keep",
            "100",
        ],
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "KL guard at step" in proc.stderr and "> train.max_kl=10" in proc.stderr and "stopped" in proc.stderr
    stopped_at = int(proc.stderr.split("KL guard at step ")[1].split(":")[0])
    assert stopped_at < 30
    saved = complete_checkpoints(tmp_path / "checkpoints")
    assert (saved[-1][0] if saved else 0) == stopped_at - 1  # the runaway step was not saved


def test_kl_guard_warn_mode_logs_and_goes_on(tmp_path):
    proc = _train(
        [
            "--train.output_dir",
            str(tmp_path),
            "--train.max_kl",
            "0.001",
            "--train.kl_guard",
            "warn",
            "--train.total_steps",
            "3",
        ]
    )
    assert proc.returncode == 0
    assert "going on (train.kl_guard=warn)" in proc.stderr


# ---------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ModelConfig())


def test_tokenizer_without_pad_token_pads_with_eos_and_eos_still_ends_and_counts(tokenizer):
    tok = load_tokenizer(ModelConfig())
    tok.pad_token = None
    tok.padding_side = "right"  # a right-padding tokenizer is switched to left padding for generation
    tok = prepare_tokenizer(tok)
    assert tok.pad_token_id == tok.eos_token_id and tok.padding_side == "left"
    eos = tok.eos_token_id
    responses = torch.tensor([[5, eos, 7, eos], [eos, 3, 3, 3], [4, 4, 4, 4]])
    out, mask = truncate_at_eos(responses, eos, tok.pad_token_id)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]  # the first EOS is in the loss
    assert out[0, 2] == tok.pad_token_id
    # pad == EOS: only the last valid token tells a response that ended from one that ran out
    assert ends_with_eos(out, mask, eos).tolist() == [True, True, False]


def test_generation_with_pad_equal_to_eos_keeps_eos_first_responses_valid(tokenizer):
    tok = load_tokenizer(ModelConfig())
    tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    model = build_tiny_gpt2(ModelConfig(tiny_n_layer=1, tiny_n_embd=32, tiny_n_head=2), tok).eval()
    with torch.no_grad():  # make EOS the likeliest token after token 5 only
        model.lm_head.weight.zero_()
    gen = generation_config(Sampling.from_config(RolloutConfig(max_new_tokens=4, do_sample=False), tok))
    rollout = generate(model, [torch.tensor([5, 6]), torch.tensor([7])], tok, gen)
    # Greedy over uniform logits picks token 0 (= EOS) first: empty responses are EOS alone, still valid.
    assert rollout.response_mask[:, 0].tolist() == [1, 1] and rollout.response_mask[:, 1:].sum() == 0
    assert ends_with_eos(rollout.responses, rollout.response_mask, tok.eos_token_id).tolist() == [True, True]


def test_empty_prompts_are_refused_and_over_long_prompts_truncated(tokenizer):
    with pytest.raises(ConfigError, match=r"^2 of 4 prompts are empty or whitespace only \(first: prompt 1\)"):
        tokenize_prompts(["今天", "", "明天", " \n"], tokenizer, max_length=8, truncation="left")
    ids = tokenize_prompts(["今天天气很好" * 20, "好"], tokenizer, max_length=8, truncation="left")
    assert len(ids[0]) == 8 and ids[1].tolist() == tokenizer("好", add_special_tokens=False)["input_ids"]
    with pytest.raises(ConfigError, match="data.max_prompt_length=8"):
        tokenize_prompts(["今天天气很好" * 20], tokenizer, max_length=8, truncation="error")


PROMPT_FILES = {
    # name: (content, message after "<file>: ")
    "broken.jsonl": (
        b'{"query": "a"}\n{"query": "b"}\n{"query": "c"\n{"query": "d"}\n',
        "invalid JSON: Expecting ',' delimiter at column 14 (line 3)",
    ),
    "binary.jsonl": (b'{"query": "a"}\n\x89PNG\r\n\x1a\n\x00\xff', "not UTF-8 text: byte 0x89 at column 1 (line 2)"),
    "not_objects.jsonl": (b'{"query": "a"}\n["b"]\n', "expected one JSON object per line, got a list (line 2)"),
    "broken.json": (
        b'[\n {"query": "a"},\n {"query": "b"\n]\n',
        "invalid JSON: Expecting ',' delimiter at column 1 (line 4)",
    ),
    "nothing.jsonl": (b"\n  \n", "the file is empty (no prompts)"),
    "broken.csv": (b"query,x\na,1\nb,2,3\n", "cannot be read as CSV: ParserError: Error tokenizing data. C error: "),
    "binary.parquet": (
        b"\x00\x01garbage" * 10,
        "cannot be read as PARQUET: ArrowInvalid: Parquet magic bytes not found",
    ),
    "empty.jsonl": (
        b'{"query": "ok"}\n\n{"query": "  "}\n{"other": 1}\n{"query": ""}\n',
        "3 of 4 prompts in column 'query' are empty or missing (first: line 3); remove them or give them text",
    ),
    "empty.csv": (
        b'query,x\n"two\nlines",1\n\n,2\n',
        "1 of 2 prompts in column 'query' are empty or missing (first: line 5)",
    ),
    "numbers.jsonl": (b'{"query": "a"}\n{"query": 5}\n', "column 'query' holds int 5 (line 2); prompts must be text"),
}


@pytest.mark.parametrize("name", list(PROMPT_FILES))
def test_prompt_file_problems_name_the_file_and_the_line(tmp_path, name):
    content, message = PROMPT_FILES[name]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ConfigError) as e:
        load_prompt_dataset(DataConfig(path=str(tmp_path / name)))
    assert str(e.value).startswith(f"{tmp_path / name}: {message}"), str(e.value)
    assert "\n" not in str(e.value)


def test_empty_inline_prompts_are_refused():
    with pytest.raises(ConfigError, match=r"^data.prompts: 1 of 2 prompts .* \(first: data.prompts\[1\]\)"):
        load_prompt_dataset(DataConfig(prompts=["今天", "\t"]))


_MAIN_CASES = """
import contextlib, io, json, logging, sys
import datasets
import train
logging.basicConfig(level=logging.INFO)  # logs and progress bars stay on the real stderr; print()s are captured
datasets.disable_progress_bars()
results = {}
for name, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = train.main(argv)
    results[name] = [rc, err.getvalue()]
print(json.dumps(results))
"""


def test_bad_prompt_files_and_reward_specs_are_one_line_config_errors_before_any_model_loads(tmp_path):
    """train.main as train.py runs it, in one process for all cases (imports once): exit status 2 and exactly
    one line on stderr, before the (broken) policy model is built."""
    for name in ("broken.jsonl", "binary.jsonl", "binary.parquet"):
        (tmp_path / name).write_bytes(PROMPT_FILES[name][0])
    (tmp_path / "blank.jsonl").write_bytes(b'{"query": ""}\n\n{"query": "   "}\n')
    (tmp_path / "needs_gpu.py").write_text("raise RuntimeError('no GPU here')\n")
    # The tokenizer loads from this directory but the model does not (not a causal LM): a check that came
    # after building the models would report that instead.
    base = ["--train.output_dir", str(tmp_path / "run"), "--model.name_or_path", str(_distilbert_dir(tmp_path))]
    cases = {
        "broken.jsonl": f"{tmp_path / 'broken.jsonl'}: invalid JSON: Expecting ',' delimiter at column 14 (line 3)",
        "binary.jsonl": f"{tmp_path / 'binary.jsonl'}: not UTF-8 text: byte 0x89 at column 1 (line 2)",
        "binary.parquet": f"{tmp_path / 'binary.parquet'}: cannot be read as PARQUET: ArrowInvalid: Parquet magic",
        "blank.jsonl": f"{tmp_path / 'blank.jsonl'}: 2 of 2 prompts in column 'query' are empty or missing (first: "
        "line 1)",
        "missing file": f"reward spec 'nowhere.py:fn': file not found: {REPO / 'nowhere.py'}",
        "missing function": f"reward spec '{BAD}:no_such_fn': '{BAD}' has no attribute 'no_such_fn'",
        "import error": f"reward spec '{tmp_path / 'needs_gpu.py'}:fn': executing {tmp_path / 'needs_gpu.py'} "
        "raised RuntimeError: no GPU here",
    }
    argv = {
        name: [*base, "--data.path", str(tmp_path / name)] for name in ("broken.jsonl", "binary.jsonl", "blank.jsonl")
    }
    argv["binary.parquet"] = [*base, "--data.path", str(tmp_path / "binary.parquet")]
    for name, spec in [
        ("missing file", "nowhere.py:fn"),
        ("missing function", f"{BAD}:no_such_fn"),
        ("import error", f"{tmp_path / 'needs_gpu.py'}:fn"),
    ]:
        argv[name] = [*base, "--reward.functions", f"['{spec}']"]
    proc = subprocess.run(
        [sys.executable, "-c", _MAIN_CASES, json.dumps(argv)],
        cwd=REPO,
        env=cpu_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]  # no case raised out of main
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, expected in cases.items():
        rc, err = results[name]
        assert rc == 2 and err.startswith(f"config error: {expected}") and err.count("\n") == 1, (name, err)


def test_broken_prompt_file_through_train_py_is_one_line_without_traceback(tmp_path):
    (tmp_path / "broken.jsonl").write_bytes(PROMPT_FILES["broken.jsonl"][0])
    proc = _train(["--train.output_dir", str(tmp_path / "run"), "--data.path", str(tmp_path / "broken.jsonl")])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "Failed to load JSON" not in proc.stderr  # datasets' own log line of the failure is not repeated
    assert proc.stderr.strip().splitlines()[-1] == (
        f"config error: {tmp_path / 'broken.jsonl'}: invalid JSON: Expecting ',' delimiter at column 14 (line 3)"
    )


def test_empty_dataset_and_dataset_smaller_than_a_batch(tmp_path, caplog):
    with pytest.raises(ConfigError, match="does not exist|empty"):
        load_prompt_dataset(DataConfig(path=str(tmp_path / "missing.jsonl")))
    import datasets

    small = datasets.Dataset.from_dict({"prompt": ["a", "b", "c"]})
    with caplog.at_level("WARNING"):
        stream = PromptStream(small, [torch.tensor([1])] * 3, "prompt", batch_size=8, seed=0)
    assert "dataset has 3 prompts < rollout.batch_size=8" in caplog.text
    assert len(stream.local_batch(0, 0, 1).texts) == 8  # repeats within the batch
    with pytest.raises(ConfigError, match="empty"):
        load_prompt_dataset(DataConfig(prompts=[]))


def test_partial_utf8_decodes_without_raising(tokenizer):
    ids = tokenizer("好", add_special_tokens=False)["input_ids"]
    byte_level = tokenizer.convert_tokens_to_ids(list(tokenizer.convert_ids_to_tokens(ids)[0]))
    text = tokenizer.decode(byte_level[:1] + byte_level[:1])  # half a character, twice
    assert isinstance(text, str) and "\ufffd" in text


def test_output_dir_not_writable_fails_before_loading(tmp_path):
    (tmp_path / "file").write_text("")
    proc = _train(["--train.output_dir", str(tmp_path / "file" / "run")], timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "train.output_dir" in proc.stderr and "is not writable" in proc.stderr


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "nowhere", "does not exist"),
        (lambda p: _distilbert_dir(p), "could not load a causal language model"),
    ],
)
def test_bad_model_path_is_one_clear_error(tmp_path, make, message):
    proc = _train(
        ["--model.name_or_path", str(make(tmp_path)), "--train.output_dir", str(tmp_path / "run")], timeout=60
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()[-1]) < 400


def _distilbert_dir(tmp_path):
    from transformers import DistilBertConfig

    DistilBertConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, hidden_dim=64).save_pretrained(tmp_path / "bert")
    load_tokenizer(ModelConfig()).save_pretrained(tmp_path / "bert")  # a tokenizer is there; the model is not causal
    return tmp_path / "bert"
