"""LoRA: only adapters (and the value head) train, the reference is the adapter-disabled policy, the
final model is merged, and resume is exact."""

import shutil

import pytest
import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from ppo_dist.config import LoRAConfig, ModelConfig, parse_args, validate
from ppo_dist.models import apply_lora, build_tiny_gpt2, load_tokenizer
from ppo_dist.rl.batching import plan_micro_batches
from ppo_dist.rl.learner import build_learner
from ppo_dist.rl.roles import Reference
from ppo_dist.rl.rollout import Rollout, left_pad, right_pad
from ppo_dist.runtime import distributed

from .launch import TINY_ARGS, launch

LORA = ["--model.lora.r", "4", "--model.lora.alpha", "8", "--optim.lr", "1e-2"]


def test_only_adapters_and_value_head_train_and_the_reference_stays_the_base_model():
    cfg = parse_args([*TINY_ARGS, *LORA, "--log.trackers", "[]", "--rollout.batch_size", "4"])
    plan = validate(cfg, 1)
    acc = distributed.build_accelerator(cfg, plan)
    set_seed(0)
    tokenizer = load_tokenizer(cfg.model)
    learner = build_learner(cfg, acc, tokenizer, plan)
    assert learner.reference.kind == "adapter-disabled policy" and learner.policy.unwrapped.is_peft_model
    trainable = {n for n, p in learner.policy.unwrapped.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("v_head.") for n in trainable)
    assert {id(p) for g in learner.update.optimizer.param_groups for p in g["params"]} == {
        id(p) for p in learner.policy.unwrapped.parameters() if p.requires_grad
    }
    q, qm = left_pad([torch.tensor([5, 6, 7]), torch.tensor([8]), torch.tensor([9, 10]), torch.tensor([11])], 1)
    r, rm = right_pad(
        [torch.tensor([12, 13]), torch.tensor([14, 15, 16]), torch.tensor([17]), torch.tensor([18, 0])], 1
    )
    rollout = Rollout(q, qm, r, rm)
    micro = plan_micro_batches(*rollout.lengths(), max_samples=4)
    before = {n: p.detach().clone() for n, p in learner.policy.unwrapped.named_parameters()}
    ref_before = learner.reference.logprobs(rollout, micro)
    for _ in range(2):
        learner.step(rollout, torch.tensor([1.0, -1.0, 0.5, 0.0]))
    changed = {n for n, p in learner.policy.unwrapped.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable and any("lora_B" in n for n in changed)
    torch.testing.assert_close(learner.reference.logprobs(rollout, micro), ref_before)  # the base model, unchanged
    policy_lp = Reference(learner.policy.model).logprobs(rollout, micro)  # adapter on
    assert (policy_lp - ref_before).abs().max() > 1e-3


def _train(out, *extra, num_processes=1, config_file=None, env=None):
    args = [*TINY_ARGS, *LORA, "--train.total_steps", "4", "--checkpoint.every", "2", "--train.output_dir", str(out)]
    return launch([*args, *extra], num_processes=num_processes, config_file=config_file, env=env)


def test_lora_run_saves_a_merged_model_and_the_adapter_and_resumes_exactly(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    _train(full)
    final = full / "final_model"
    # The merged directory is a plain causal LM; the adapter alone loads with peft on the base model.
    tok = AutoTokenizer.from_pretrained(final)
    merged = AutoModelForCausalLM.from_pretrained(final)
    ids = tok("今天天气", return_tensors="pt").input_ids
    out = merged.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids.shape[1]
    assert (final / "value_head.pt").is_file() and (final / "adapter" / "adapter_config.json").is_file()
    # The policy as trained (base + adapter, from the last checkpoint) gives the merged model's logits.
    state = load_file(str(full / "checkpoints" / "step_4" / "model.safetensors"))
    lm_state = {k.removeprefix("pretrained_model."): v for k, v in state.items() if k.startswith("pretrained_model.")}
    trained = apply_lora(build_tiny_gpt2(ModelConfig(), load_tokenizer(ModelConfig())), LoRAConfig(r=4, alpha=8))
    trained.load_state_dict(lm_state, strict=False)
    trained.eval()
    assert not [k for k in lm_state if k not in trained.state_dict()]
    torch.testing.assert_close(trained(ids).logits, merged(ids).logits, rtol=1e-4, atol=1e-4)
    # The adapter directory loads with peft and holds the trained adapter weights.
    from peft import PeftModel

    loaded = PeftModel.from_pretrained(build_tiny_gpt2(ModelConfig(), load_tokenizer(ModelConfig())), final / "adapter")
    adapters = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert adapters and all(torch.equal(v, lm_state[k]) for k, v in adapters.items())
    # Resume from the step-2 checkpoint in a fresh directory: the same adapter weights at step 4.
    shutil.copytree(full / "checkpoints" / "step_2", part / "checkpoints" / "step_2")
    _train(part, "--checkpoint.resume", "auto")
    a, b = (load_file(str(d / "checkpoints" / "step_4" / "model.safetensors")) for d in (full, part))
    assert a.keys() == b.keys() and any("lora_" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.distributed
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_lora_with_a_critic_free_estimator_and_token_budgets_under_zero(stage, tmp_path):
    from .test_deepspeed import CONFIGS, ds_env

    # A model loaded with from_pretrained (under ZeRO-3 it arrives partitioned), and token-budget
    # micro-batches: under DeepSpeed every process runs the same number of them.
    base = tmp_path / "base"
    set_seed(0)
    build_tiny_gpt2(ModelConfig(), load_tokenizer(ModelConfig())).save_pretrained(base)
    load_tokenizer(ModelConfig()).save_pretrained(base)
    grpo = ["--ppo.advantage_estimator", "grpo", "--rollout.n_samples_per_prompt", "2", "--ppo.kl_placement", "loss",
            "--ppo.micro_batch_tokens", "24", "--rollout.forward_tokens", "24",
            "--model.name_or_path", str(base)]  # fmt: skip
    _train(tmp_path, *grpo, num_processes=2, config_file=CONFIGS / f"{stage}.yaml", env=ds_env())
    final = tmp_path / "final_model"
    assert not (final / "value_head.pt").exists()  # critic-free: no value head anywhere
    assert (final / "adapter" / "adapter_model.safetensors").is_file()
    AutoModelForCausalLM.from_pretrained(final)
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "checkpoints" / "step_2", resumed / "checkpoints" / "step_2")
    _train(resumed, *grpo, "--checkpoint.resume", "auto", num_processes=2,
           config_file=CONFIGS / f"{stage}.yaml", env=ds_env())  # fmt: skip
    resumed_state = AutoModelForCausalLM.from_pretrained(resumed / "final_model").state_dict()
    for name, tensor in AutoModelForCausalLM.from_pretrained(final).state_dict().items():
        torch.testing.assert_close(tensor, resumed_state[name], msg=name)
