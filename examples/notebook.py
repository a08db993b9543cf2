"""The intro PPO notebook's workflow, written for the legacy trl PPOTrainer, running on ppo_dist.

Only the import line differs from the trl <= 0.11 version. Run it on one process or several:

    python examples/notebook.py
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 examples/notebook.py

Without ``--model`` it saves ppo_dist's embedded tiny GPT-2 to ``OUT/base_model`` and loads it back
with ``from_pretrained`` exactly as a real checkpoint would be loaded.
"""

import argparse
import json
import os
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from ppo_dist import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer  # noqa: E402  (was: from trl import ...)
from ppo_dist.rewards import chinese_rule  # noqa: E402

PROMPTS = [
    "今天天气",
    "我觉得学习",
    "这本书",
    "周末我们",
    "我的朋友",
    "春天来了",
    "老师说",
    "这部电影",
    "我最喜欢",
    "晚上我们",
    "新的一年",
    "在公园里",
    "听音乐的时候",
    "妈妈做的菜",
    "第一次旅行",
    "我们的城市",
]


def reward_fn(text: str) -> float:
    """The notebook's rule: 0.1 base, +0.5 for 10-50 characters, +0.3 per positive word, repetition penalty."""
    return chinese_rule([""], [text])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="causal LM directory or hub name (default: the embedded tiny model)")
    parser.add_argument("--out", default="runs/notebook", help="logs, curves and the final model go here")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--learning_rate", type=float, default=1.41e-5)
    parser.add_argument("--init_kl_coef", type=float, default=0.2)
    args = parser.parse_args()
    out = Path(args.out)

    model_name = args.model or save_embedded_model(out / "base_model")
    config = PPOConfig(
        model_name=model_name,
        learning_rate=args.learning_rate,
        batch_size=8,
        mini_batch_size=2,
        ppo_epochs=4,
        cliprange=0.2,
        vf_coef=0.1,
        seed=42,
        steps=args.steps,
        init_kl_coef=args.init_kl_coef,
        log_with="tensorboard",
        project_kwargs={"logging_dir": str(out)},
    )
    model = AutoModelForCausalLMWithValueHead.from_pretrained(config.model_name)
    tokenizer = AutoTokenizer.from_pretrained(config.model_name)
    tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.eos_token_id
    print(f"parameters: {model.num_parameters():,}")

    dataset = Dataset.from_dict({"query": PROMPTS})  # text only: the trainer tokenizes it
    ppo_trainer = PPOTrainer(config, model, None, tokenizer, dataset=dataset)
    generation_kwargs = {
        "min_length": -1,
        "top_k": 0.0,
        "top_p": 1.0,
        "do_sample": True,
        "pad_token_id": tokenizer.eos_token_id,
        "max_new_tokens": 32,
    }

    reward_history, loss_history, kl_history = [], [], []
    for epoch, batch in enumerate(ppo_trainer.dataloader):  # config.steps batches
        query_tensors = batch["input_ids"]
        response_tensors = ppo_trainer.generate(query_tensors, return_prompt=False, **generation_kwargs)
        batch["response"] = tokenizer.batch_decode(response_tensors, skip_special_tokens=True)
        rewards = [torch.tensor(reward_fn(r)) for r in batch["response"]]
        stats = ppo_trainer.step(query_tensors, response_tensors, rewards)
        ppo_trainer.log_stats(stats, batch, rewards)
        reward_history.append(stats["env/reward_mean"])
        loss_history.append(stats["ppo/loss/policy"])
        kl_history.append(stats["objective/kl"])
        if epoch % 10 == 0 and ppo_trainer.accelerator.is_main_process:
            print(f"step {epoch}: reward {stats['env/reward_mean']:.3f} kl {stats['objective/kl']:.3f}")

    ppo_trainer.save_pretrained(out / "final_model")
    if ppo_trainer.accelerator.is_main_process:
        plot_curves(reward_history, loss_history, out / "curves.png")
        (out / "history.json").write_text(
            json.dumps({"reward": reward_history, "policy_loss": loss_history, "kl": kl_history})
        )

    # Generate with the trained model on new prompts.
    model.eval()
    for prompt in ["我今天很", "学习让我"]:
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(ppo_trainer.current_device)
        output = model.generate(ids, max_new_tokens=20, do_sample=True, pad_token_id=tokenizer.eos_token_id)
        if ppo_trainer.accelerator.is_main_process:
            print(prompt, "->", tokenizer.decode(output[0][ids.shape[1] :], skip_special_tokens=True))
    ppo_trainer.end()


def save_embedded_model(path: Path) -> str:
    """Save the embedded tiny GPT-2 and its tokenizer as a normal Hugging Face directory."""
    from ppo_dist.config import ModelConfig
    from ppo_dist.models import build_tiny_gpt2, load_tokenizer

    # Under `accelerate launch` every process may get here at once: each writes its own copy and
    # renames it into place; the first rename wins and the others drop theirs.
    if not (path / "config.json").exists():
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        torch.manual_seed(0)
        tokenizer = load_tokenizer(ModelConfig())
        build_tiny_gpt2(ModelConfig(), tokenizer).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(path)
        except OSError:  # another process was first
            shutil.rmtree(tmp)
    return str(path)


def plot_curves(rewards: list[float], losses: list[float], path: Path) -> None:
    from ppo_dist.plot import NO_CJK_FONT_MESSAGE, find_cjk_font

    family = find_cjk_font()  # the notebook's Chinese titles rendered as boxes with the default font
    if family is None:
        print(NO_CJK_FONT_MESSAGE)
    else:
        plt.rcParams["font.family"] = family
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot(rewards)
    axes[0].set_title("平均奖励 (reward)")
    axes[1].plot(losses)
    axes[1].set_title("策略损失 (policy loss)")
    for ax in axes:
        ax.set_xlabel("PPO step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
