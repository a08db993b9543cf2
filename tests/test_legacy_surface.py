"""The legacy trl 0.11 PPO surface: PPOConfig as a parsable dataclass, the top-level helpers,
``ppo_dist.core``, legacy ``from_pretrained`` options, seq2seq models, the patterns of trl's own
example scripts, and trl 0.11.4's ``examples/scripts/ppo.py`` itself (imports changed only)."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser

from ppo_dist import (
    AutoModelForCausalLMWithValueHead,
    AutoModelForSeq2SeqLMWithValueHead,
    PPOConfig,
    PPOTrainer,
    create_reference_model,
    set_seed,
)
from ppo_dist.config import ConfigError, ModelConfig
from ppo_dist.core import LengthSampler, respond_to_batch
from ppo_dist.models import ModelLoadError, build_tiny_gpt2, disable_dropout, load_tokenizer

from . import legacy_assets
from .launch import TINY_ARGS, cpu_env, launch

# trl 0.11.4's PPOConfig: every field and its default (exp_name defaults to the script's name).
LEGACY_DEFAULTS = {
    "seed": 0,
    "log_with": None,
    "task_name": None,
    "model_name": "gpt2",
    "query_dataset": "stanfordnlp/imdb",
    "reward_model": "sentiment-analysis:lvwerra/distilbert-imdb",
    "remove_unused_columns": True,
    "tracker_kwargs": {},
    "accelerator_kwargs": {},
    "project_kwargs": {},
    "tracker_project_name": "trl",
    "push_to_hub_if_best_kwargs": {},
    "steps": 20000,
    "learning_rate": 1.41e-5,
    "adap_kl_ctrl": True,
    "init_kl_coef": 0.2,
    "kl_penalty": "kl",
    "target": 6.0,
    "horizon": 10000.0,
    "gamma": 1.0,
    "lam": 0.95,
    "cliprange": 0.2,
    "cliprange_value": 0.2,
    "vf_coef": 0.1,
    "batch_size": 128,
    "forward_batch_size": None,
    "mini_batch_size": 128,
    "gradient_accumulation_steps": 1,
    "world_size": None,
    "ppo_epochs": 4,
    "max_grad_norm": None,
    "optimize_cuda_cache": None,
    "optimize_device_cache": False,
    "early_stopping": False,
    "target_kl": 1.0,
    "compare_steps": 1,
    "ratio_threshold": 10.0,
    "use_score_scaling": False,
    "use_score_norm": False,
    "score_clip": None,
    "whiten_rewards": False,
    "gradient_checkpointing": False,
    "is_encoder_decoder": None,
    "is_peft_model": None,
    "backward_batch_size": None,
    "global_backward_batch_size": None,
    "global_batch_size": None,
    "dataset_num_proc": None,
}
LEGACY_STATS = ("objective/kl", "objective/kl_coef", "objective/entropy", "ppo/loss/policy", "ppo/loss/value",
                "ppo/loss/total", "ppo/policy/clipfrac", "ppo/policy/approxkl", "ppo/val/error", "ppo/learning_rate",
                "ppo/returns/mean", "env/reward_mean", "env/reward_std")  # fmt: skip


@dataclasses.dataclass
class ScriptArguments:  # the shape every legacy example script declares
    use_seq2seq: bool = dataclasses.field(default=False, metadata={"help": "whether to use seq2seq"})
    lora_r: int | None = dataclasses.field(default=16, metadata={"help": "the lora r parameter"})


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("legacy_assets")
    return {
        "lm": legacy_assets.save_causal_lm(root / "lm"),
        "clf": legacy_assets.save_sentiment_classifier(root / "clf"),
        "imdb": legacy_assets.save_imdb_like_dataset(root / "imdb"),
        "t5": legacy_assets.save_seq2seq_lm(root / "t5"),
    }


# ---------------------------------------------------------------- PPOConfig


def test_ppo_config_is_the_legacy_dataclass():
    fields = {f.name: f for f in dataclasses.fields(PPOConfig)}
    assert set(LEGACY_DEFAULTS) | {"exp_name"} <= set(fields)
    assert set(fields) - set(LEGACY_DEFAULTS) == {"exp_name", "max_new_tokens", "output_dir", "packing"}
    config = PPOConfig()
    assert config.to_config().ppo.packing is False and PPOConfig(packing=True).to_config().ppo.packing is True
    for name, default in LEGACY_DEFAULTS.items():
        if name != "backward_batch_size":  # derived on construction, as in legacy trl
            assert getattr(config, name) == default, name
        assert fields[name].metadata["help"], name
    assert config.backward_batch_size == 128 and config.total_ppo_epochs == 157  # ceil(20000 / 128)
    assert config.exp_name == Path(__import__("sys").argv[0]).stem
    assert fields["batch_size"].metadata["help"] == "Number of samples per optimisation step."
    again = dataclasses.replace(config, seed=3, mini_batch_size=64)
    assert again.seed == 3 and again.backward_batch_size == 64
    flat = PPOConfig(project_kwargs={"logging_dir": "x"}).to_dict()
    assert flat["project_kwargs/logging_dir"] == "x" and flat["total_ppo_epochs"] == 157


def test_hf_argument_parser_and_tyro_parse_the_legacy_flags(capsys):
    parser = HfArgumentParser((ScriptArguments, PPOConfig))
    args, config = parser.parse_args_into_dataclasses(
        ["--use_seq2seq", "--steps", "7", "--batch_size", "8", "--mini_batch_size", "2",
         "--gradient_accumulation_steps", "2", "--project_kwargs", '{"logging_dir": "logs"}', "--log_with",
         "tensorboard", "--no_remove_unused_columns", "--query_dataset", "my/data", "--dataset_num_proc", "2",
         "--exp_name", "exp", "--kl_penalty", "k3", "--max_grad_norm", "0.5"]
    )  # fmt: skip
    assert args.use_seq2seq and args.lora_r == 16
    assert (config.steps, config.batch_size, config.backward_batch_size, config.max_grad_norm) == (7, 8, 4, 0.5)
    assert config.project_kwargs == {"logging_dir": "logs"} and config.log_with == "tensorboard"
    assert (config.remove_unused_columns, config.query_dataset, config.dataset_num_proc) == (False, "my/data", 2)
    cfg = config.to_config(world_size=2)
    assert (cfg.rollout.batch_size, cfg.ppo.mini_batch_size, cfg.ppo.kl_estimator) == (16, 8, "k3")
    assert cfg.train.output_dir == "logs" and cfg.train.total_steps == 7 and cfg.optim.max_grad_norm == 0.5
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses(["--help"])
    assert "Number of samples optimized in each mini batch." in capsys.readouterr().out
    with pytest.raises(ValueError, match="mini_batch_size × gradient_accumulation_steps = 128 × 2 = 256"):
        parser.parse_args_into_dataclasses(["--batch_size", "4", "--gradient_accumulation_steps", "2"])

    tyro = pytest.importorskip("tyro")

    @dataclasses.dataclass
    class Args:  # trl <= 0.7 examples: tyro.cli over a dataclass holding a PPOConfig
        ppo_config: PPOConfig = dataclasses.field(default_factory=lambda: PPOConfig(batch_size=8, mini_batch_size=2))

    parsed = tyro.cli(Args, args=["--ppo-config.steps", "5", "--ppo-config.tracker-kwargs", '{"wandb": {"name": "n"}}'])
    assert parsed.ppo_config.steps == 5 and parsed.ppo_config.batch_size == 8
    assert parsed.ppo_config.tracker_kwargs == {"wandb": {"name": "n"}}


def test_batch_arithmetic_is_checked_at_construction_with_legacy_names():
    with pytest.raises(ValueError) as e:
        PPOConfig(batch_size=2, mini_batch_size=2, gradient_accumulation_steps=2)
    message = str(e.value)
    assert "batch_size=2 must be a multiple of mini_batch_size × gradient_accumulation_steps = 2 × 2 = 4" in message
    assert "rollout." not in message and "ppo." not in message
    with pytest.raises(ConfigError, match="mini_batch_size must be a positive integer, got 0"):
        PPOConfig(mini_batch_size=0)
    with pytest.raises(ConfigError, match=r"PPOConfig.gamma must be in \[0, 1\], got 1.5"):
        PPOConfig(gamma=1.5)
    config = PPOConfig(batch_size=8, forward_batch_size=4)  # deprecated: overwrites mini_batch_size, as legacy
    assert config.mini_batch_size == 4 and config.backward_batch_size == 4


def test_refused_and_kept_fields():
    with pytest.raises(TypeError, match="Did you mean: learning_rate"):
        PPOConfig(learning_rat=1e-5)
    with pytest.raises(ConfigError, match="no field 'lr'"):
        PPOConfig(lr=1e-5)
    for kwargs, message in [
        ({"early_stopping": True}, "early_stopping=True is not supported"),
        ({"ratio_threshold": 5.0}, "ratio_threshold"),
        ({"push_to_hub_if_best_kwargs": {"repo_id": "me/model"}}, "does not push to the Hub"),
        ({"kl_penalty": "abs"}, "kl_penalty='abs' is not supported"),
        ({"use_score_norm": True}, "only applies with use_score_scaling"),
        ({"use_score_scaling": True}, "use_score_norm=True too"),
        ({"log_with": "nosuchtracker"}, "unknown tracker"),
    ]:
        with pytest.raises(ConfigError, match=message):
            PPOConfig(**kwargs)
    with pytest.raises(ConfigError, match="reads only mixed_precision"):
        PPOConfig(accelerator_kwargs={"mixed_precision": "no", "cpu": True}).to_config()
    kept = dict(query_dataset="d", reward_model="t:m", dataset_num_proc=3, exp_name="e", task_name="t",
                tracker_project_name="p", remove_unused_columns=False, optimize_cuda_cache=True)  # fmt: skip
    config = PPOConfig(**kept, use_score_scaling=True, use_score_norm=True, score_clip=2.0)
    assert {k: getattr(config, k) for k in kept} == kept
    cfg = config.to_config()
    assert cfg.reward.normalize and cfg.reward.clip == 2.0 and cfg.log.project_name == "p"
    assert PPOConfig(gradient_checkpointing=True).to_config().model.gradient_checkpointing
    config.fill_runtime_fields(world_size=2, is_encoder_decoder=False, is_peft_model=False)
    assert (config.world_size, config.global_batch_size, config.global_backward_batch_size) == (2, 256, 256)
    with pytest.raises(ConfigError, match="is_encoder_decoder=True but the model"):
        PPOConfig(is_encoder_decoder=True).fill_runtime_fields(1, is_encoder_decoder=False, is_peft_model=False)


# ---------------------------------------------------------------- ppo_dist.core and top-level helpers


def test_length_sampler_and_set_seed_draw_like_legacy_trl():
    set_seed(3)
    sampler = LengthSampler(2, 8)
    draws = [sampler() for _ in range(200)]
    torch_draw = torch.rand(1)
    assert set(draws) == set(range(2, 8))  # upper bound excluded
    np.random.seed(3)  # legacy: np.random.choice over range(min, max) on NumPy's global generator
    assert draws == [int(np.random.choice(list(range(2, 8)))) for _ in range(200)]
    set_seed(3)
    assert [sampler() for _ in range(200)] == draws and torch.equal(torch.rand(1), torch_draw)
    with pytest.raises(ValueError, match="must be > min_value"):
        LengthSampler(4, 4)


def test_respond_to_batch_samples_txt_len_tokens(assets):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(assets["lm"])
    queries = torch.tensor([[5, 6, 7], [8, 9, 10]])
    greedy = model.generate(queries, attention_mask=torch.ones_like(queries), do_sample=False, max_new_tokens=4,
                            min_new_tokens=4, pad_token_id=1)  # fmt: skip
    assert torch.equal(respond_to_batch(model, queries, txt_len=4, top_k=1), greedy[:, 3:])  # top-1 = greedy
    set_seed(0)
    sampled = respond_to_batch(model.pretrained_model, queries, txt_len=6, top_p=0.9)
    set_seed(0)
    assert sampled.shape == (2, 6) and torch.equal(respond_to_batch(model, queries, txt_len=6, top_p=0.9), sampled)


# ---------------------------------------------------------------- from_pretrained options


def test_from_pretrained_takes_the_legacy_keyword_arguments(assets, tmp_path, caplog):
    lm_dir = assets["lm"]
    model = AutoModelForCausalLMWithValueHead.from_pretrained(
        str(lm_dir), trust_remote_code=False, device_map=None if torch.cuda.is_available() else {"": 0},
        peft_config=None, v_head_init_strategy="normal", v_head_initializer_range=0.0,
    )  # fmt: skip
    expected = "cuda" if torch.cuda.is_available() else "cpu"  # {"": 0} without CUDA: this process's CPU
    assert not model.is_peft_model and next(model.parameters()).device.type == expected
    assert torch.count_nonzero(model.v_head.weight) == 0 and torch.count_nonzero(model.v_head.bias) == 0
    model = AutoModelForCausalLMWithValueHead.from_pretrained(lm_dir, summary_dropout_prob=0.1)
    assert "summary_dropout_prob=0.1 has no effect" in caplog.text
    refused = [
        ({"device_map": "auto"}, "may spread the model over several devices"),
        ({"device_map": {"transformer": 0, "lm_head": 1}}, "places the model over"),
        ({"reward_adapter": "some/adapter"}, "reward_adapter"),
        ({"v_head_init_strategy": "xavier"}, "v_head_init_strategy must be None or 'normal'"),
        ({"v_head_initializer_range": 0.1}, "only applies with v_head_init_strategy='normal'"),
        ({"peft_config": {"r": 8}}, "peft_config must be a peft.PeftConfig"),
    ]
    if not torch.cuda.is_available():
        refused.append(({"load_in_8bit": True}, "needs a CUDA GPU"))
    for kwargs, message in refused:
        with pytest.raises(ValueError, match=message):
            AutoModelForCausalLMWithValueHead.from_pretrained(lm_dir, **kwargs)

    # A checkpoint saved by legacy trl keeps its value head inside the model weights (v_head.summary.*).
    lm = AutoModelForCausalLM.from_pretrained(lm_dir)
    head = {"v_head.summary.weight": torch.randn(1, 32), "v_head.summary.bias": torch.randn(1)}
    lm.save_pretrained(tmp_path / "legacy_ckpt", state_dict={**lm.state_dict(), **head})
    restored = AutoModelForCausalLMWithValueHead.from_pretrained(tmp_path / "legacy_ckpt")
    assert torch.equal(restored.v_head.weight, head["v_head.summary.weight"])
    assert torch.equal(restored.v_head.bias, head["v_head.summary.bias"])
    # ... also when the weights are sharded (an index and several files, as for any large model).
    lm.save_pretrained(tmp_path / "sharded", state_dict={**lm.state_dict(), **head}, max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    restored = AutoModelForCausalLMWithValueHead.from_pretrained(tmp_path / "sharded")
    assert torch.equal(restored.v_head.weight, head["v_head.summary.weight"])


def test_from_pretrained_with_a_lora_config_and_a_saved_adapter(assets, tmp_path):
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, bias="none", task_type="CAUSAL_LM")
    model = AutoModelForCausalLMWithValueHead.from_pretrained(assets["lm"], peft_config=lora)
    assert model.is_peft_model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("v_head.") for n in trainable)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)  # a "trained" adapter
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    loaded = AutoModelForCausalLMWithValueHead.from_pretrained(tmp_path / "adapter", is_trainable=True)
    assert loaded.is_peft_model and any(p.requires_grad for n, p in loaded.named_parameters() if "lora_" in n)
    q = torch.tensor([[5, 6, 7]])
    for a, b in zip(model(q)[0::2], loaded(q)[0::2], strict=True):  # logits and values
        assert torch.allclose(a, b)
    with pytest.raises(ValueError, match="already holds a trained adapter"):
        AutoModelForCausalLMWithValueHead.from_pretrained(tmp_path / "adapter", peft_config=lora)


def test_create_reference_model_and_shared_layers(tmp_path):
    tokenizer = load_tokenizer(ModelConfig())
    torch.manual_seed(0)
    lm = build_tiny_gpt2(ModelConfig(tiny_n_layer=2, tiny_n_embd=32, tiny_n_head=2), tokenizer)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(lm)
    ref = create_reference_model(model)
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(model.parameters(), ref.parameters(), strict=True))

    with pytest.raises(ValueError, match="no parameter matches"):
        create_reference_model(model, num_shared_layers=2)  # the model has blocks 0 and 1 only
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=2, learning_rate=1e-2, seed=0)
    with pytest.raises(ValueError, match="num_shared_layers applies only without ref_model"):
        PPOTrainer(config, model, ref, tokenizer, num_shared_layers=1)
    trainer = PPOTrainer(config, model, None, tokenizer, num_shared_layers=1)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n in initial if ".wte." in n or ".wpe." in n or ".h.0." in n}  # embeddings + block 0
    queries = [torch.tensor([5, 6, 7]), torch.tensor([8, 9])]
    trainer.step(queries, [torch.tensor([10, 11]), torch.tensor([12])], [1.0, -1.0])
    after = dict(trainer.accelerator.unwrap_model(trainer.model).named_parameters())
    assert all(torch.equal(initial[n], after[n]) for n in frozen)
    assert any(not torch.equal(initial[n], after[n]) for n in initial if ".h.1." in n)
    trainer.end()


# ---------------------------------------------------------------- the example scripts' loop patterns


def _check_patterns(out: dict, logs: Path, world_size: int) -> None:
    assert out["user_optimizer"] and out["rows"] == [2, 2] and set(out["topics"]) <= set("abcde")
    assert out["lrs"] == pytest.approx([0.1, 0.05]) and out["final_lr"] == pytest.approx(0.025)  # once per step()
    assert all(1 <= n <= 4 for n in out["response_lengths"])  # LengthSampler(2, 5) max_new_tokens, cut at EOS
    assert len(out["ref_is_initial_model"]) == 4 and all(out["ref_is_initial_model"])
    assert "columns_to_log ['missing'] are not in the batch" in out["missing_column_error"]
    assert len(out["param_checksums"]) == world_size and len(set(out["param_checksums"])) == 1
    assert _tensorboard(logs)["game_log"].splitlines()[0] == "| query | response | ref_response | topic | reward |"


def test_legacy_loop_patterns_one_process(assets, tmp_path):
    from .scripts import legacy_patterns

    _check_patterns(legacy_patterns.run(str(assets["lm"]), str(tmp_path)), tmp_path, world_size=1)


@pytest.mark.distributed
def test_legacy_loop_patterns_two_processes(assets, tmp_path):
    out = tmp_path / "patterns.json"
    launch([str(assets["lm"]), str(tmp_path / "logs"), str(out)], num_processes=2,
           script="tests/scripts/legacy_patterns.py")  # fmt: skip
    _check_patterns(json.loads(out.read_text()), tmp_path / "logs", world_size=2)


# ---------------------------------------------------------------- seq2seq


def test_seq2seq_value_head_model(assets, tmp_path):
    set_seed(0)
    model = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(assets["t5"], v_head_init_strategy="normal")
    assert model.is_encoder_decoder and not model.is_peft_model
    queries, mask = torch.tensor([[5, 6, 7, 8], [1, 1, 9, 10]]), torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    decoded = model.generate(input_ids=queries, attention_mask=mask, do_sample=False, max_new_tokens=5)
    assert (decoded[:, 0] == model.config.decoder_start_token_id).all()  # decoder ids, not the prompt
    logits, loss, values = model(input_ids=queries, attention_mask=mask, decoder_input_ids=decoded)
    assert logits.shape == (*decoded.shape, model.config.vocab_size) and values.shape == decoded.shape
    hidden = model.pretrained_model(input_ids=queries, attention_mask=mask, decoder_input_ids=decoded,
                                    output_hidden_states=True).decoder_hidden_states[-1]  # fmt: skip
    assert torch.allclose(values, model.v_head(hidden).squeeze(-1)) and loss is None
    _, _, last = model(input_ids=queries, attention_mask=mask, decoder_input_ids=decoded, logits_to_keep=2)
    assert torch.allclose(last, values[:, -2:])
    model.save_pretrained(tmp_path / "saved")
    again = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(tmp_path / "saved")
    assert torch.allclose(again(input_ids=queries, attention_mask=mask, decoder_input_ids=decoded)[2], values)
    # T5 keeps its attention dropout as a float it hands to the functional dropout: disabled too.
    disable_dropout(model.train())
    train_values = [model(input_ids=queries, attention_mask=mask, decoder_input_ids=decoded)[2] for _ in range(2)]
    assert torch.equal(*train_values) and torch.allclose(train_values[0], values)
    with pytest.raises(ModelLoadError, match="load it with AutoModelForSeq2SeqLMWithValueHead"):
        AutoModelForCausalLMWithValueHead.from_pretrained(model.pretrained_model)

    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v"], task_type="SEQ_2_SEQ_LM")
    peft_model = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(assets["t5"], peft_config=lora)
    assert peft_model.is_peft_model
    assert all("lora_" in n or n.startswith("v_head.") for n, p in peft_model.named_parameters() if p.requires_grad)


def test_seq2seq_legacy_loop_trains_a_tiny_t5(assets):
    set_seed(0)
    model = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(assets["t5"])
    assert model.is_encoder_decoder
    tokenizer = AutoTokenizer.from_pretrained(assets["t5"])
    config = PPOConfig(batch_size=4, mini_batch_size=2, ppo_epochs=2, steps=3, learning_rate=1e-3, seed=0)
    data = Dataset.from_dict({"query": ["今天天气", "我觉得", "这本书", "周末我们", "春天来了", "老师说"]})
    trainer = PPOTrainer(config, model, None, tokenizer, dataset=data)
    assert config.is_encoder_decoder is True
    ref_before = [p.detach().clone() for p in trainer.ref_model.parameters()]
    policy_before = [p.detach().clone() for p in trainer.model.parameters()]
    eos, all_stats = tokenizer.eos_token_id, []
    for batch in trainer.dataloader:
        # Legacy: an encoder-decoder's generate returns decoder tokens only, return_prompt or not.
        responses = trainer.generate(batch["input_ids"], max_new_tokens=6)
        for r in responses:
            assert r.dim() == 1 and 1 <= len(r) <= 7 and (r[:-1] != eos).all()
        batch["response"] = tokenizer.batch_decode(responses, skip_special_tokens=True)
        rewards = [torch.tensor(len(text) / 10) for text in batch["response"]]
        all_stats.append(trainer.step(batch["input_ids"], responses, rewards))
    assert len(all_stats) == 3
    for stats in all_stats:
        assert all(np.isfinite(stats[k]) for k in LEGACY_STATS)
    assert all_stats[0]["objective/kl"] == pytest.approx(0.0, abs=1e-6)  # the reference is the initial policy
    assert all(torch.equal(a, b) for a, b in zip(ref_before, trainer.ref_model.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(policy_before, trainer.model.parameters(), strict=True))
    trainer.end()


@pytest.mark.distributed
def test_seq2seq_step_is_the_same_on_one_and_two_processes(assets, tmp_path):
    from .scripts import legacy_seq2seq_step

    one = legacy_seq2seq_step.run(str(assets["t5"]))  # in process: the one-process reference
    launch([str(assets["t5"]), str(tmp_path / "two.json")], num_processes=2,
           script="tests/scripts/legacy_seq2seq_step.py")  # fmt: skip
    two = json.loads((tmp_path / "two.json").read_text())
    assert one["is_encoder_decoder"] is True
    for a, b in zip(one["stats"], two["stats"], strict=True):
        for k in LEGACY_STATS:
            assert np.isfinite(a[k]) and a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k
    assert one["params"].keys() == two["params"].keys()
    for name, value in one["params"].items():
        np.testing.assert_allclose(value, two["params"][name], rtol=1e-4, atol=2e-5, err_msg=name)


# ---------------------------------------------------------------- trl 0.11.4's examples/scripts/ppo.py

EXAMPLE = "tests/legacy_examples/ppo.py"


def _example_args(assets, logs: Path, steps: int) -> list[str]:
    return ["--model_name", str(assets["lm"]), "--query_dataset", str(assets["imdb"]),
            "--reward_model", f"sentiment-analysis:{assets['clf']}", "--steps", str(steps), "--batch_size", "4",
            "--mini_batch_size", "2", "--ppo_epochs", "1", "--log_with", "tensorboard",
            "--project_kwargs", json.dumps({"logging_dir": str(logs)})]  # fmt: skip


def _tensorboard(logs: Path) -> dict:
    """Scalars (tag -> [(step, value)]), the last game_log table, and the logged hyperparameters."""
    out: dict = {}
    for events in logs.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault("scalars", {})[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
        for tag in acc.Tags().get("tensors", []):
            if tag.startswith("game_log"):
                out["game_log"] = acc.Tensors(tag)[-1].tensor_proto.string_val[0].decode()
        start = acc.PluginTagToContent("hparams").get("_hparams_/session_start_info")
        if start is not None:  # the HParams dashboard's record of the run's hyperparameters
            values = HParamsPluginData.FromString(start).session_start_info.hparams
            out["hparams"] = {k: getattr(v, v.WhichOneof("kind")) for k, v in values.items()}
    return out


def _check_example_run(logs: Path, steps: int, world_size: int, peft: bool) -> None:
    tb = _tensorboard(logs)
    assert [s for s, _ in tb["scalars"]["env/reward_mean"]] == list(range(1, steps + 1))  # --steps honoured
    for k in LEGACY_STATS:
        assert all(np.isfinite(v) for _, v in tb["scalars"][k]), k
    assert tb["game_log"].splitlines()[0] == "| query | response | ref_response | ref_rewards | reward |"
    h = tb["hparams"]
    assert (h["world_size"], h["global_batch_size"], h["is_peft_model"]) == (world_size, 4 * world_size, peft)
    assert h["reward_model"].startswith("sentiment-analysis:") and h["exp_name"] == "ppo"


def test_trl_ppo_example_runs_on_one_process(assets, tmp_path):
    launch(_example_args(assets, tmp_path, steps=3), script=EXAMPLE)
    _check_example_run(tmp_path, steps=3, world_size=1, peft=False)


def test_trl_ppo_example_runs_with_use_peft(assets, tmp_path):
    launch([*_example_args(assets, tmp_path, steps=2), "--use_peft", "--lora_r", "4"], script=EXAMPLE)
    _check_example_run(tmp_path, steps=2, world_size=1, peft=True)


@pytest.mark.distributed
@pytest.mark.parametrize("peft", [False, True], ids=["full", "use_peft"])
def test_trl_ppo_example_runs_on_two_processes(assets, tmp_path, peft):
    # run_on_cpu.py only sets accelerate's shared state up for CPU processes, then runs the script unchanged.
    # With --use_peft the reference responses come from the DDP-wrapped policy with its adapter disabled.
    steps = 2 if peft else 3
    args = [*_example_args(assets, tmp_path, steps=steps), *(["--use_peft", "--lora_r", "4"] if peft else [])]
    launch([EXAMPLE, *args], num_processes=2, script="tests/scripts/run_on_cpu.py")
    _check_example_run(tmp_path, steps=steps, world_size=2, peft=peft)


EARLY_STATE = """
import sys
from accelerate import PartialState
PartialState()  # before the trainer, without cpu=True: a lone process on CPU
from transformers import AutoTokenizer
from ppo_dist import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
model = AutoModelForCausalLMWithValueHead.from_pretrained(sys.argv[1])
PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=2), model, None, AutoTokenizer.from_pretrained(sys.argv[1]))
"""


@pytest.mark.distributed
def test_two_cpu_processes_launched_without_the_cpu_flag(assets, tmp_path):
    """``accelerate launch --multi_gpu`` on a machine without GPUs, ACCELERATE_USE_CPU unset: the trainer
    sets up the CPU processes itself; a script that made accelerate's state first is told what to do."""
    env = cpu_env()
    del env["ACCELERATE_USE_CPU"]
    run = launch([*TINY_ARGS, "--train.total_steps", "1", "--train.output_dir", str(tmp_path / "run")],
                 num_processes=2, env=env)  # fmt: skip
    assert "on 2 process(es)" in run.stdout + run.stderr
    (tmp_path / "early.py").write_text(EARLY_STATE)
    early = launch([str(assets["lm"])], num_processes=2, env=env, script=tmp_path / "early.py", check=False)
    assert early.returncode != 0
    assert "WORLD_SIZE=2 but accelerate started 1 processes" in early.stderr
    assert "PartialState(cpu=True)" in early.stderr and "accelerate launch --cpu" in early.stderr
