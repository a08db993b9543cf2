"""The embedded tokenizer: a small byte-level BPE that works offline.

Byte-level means every string round-trips (Chinese included); the BPE merges, learned once from
``CORPUS`` below, make common Chinese characters and the seed reward's positive words single
tokens, so the tiny default model can learn the seed task in minutes on a CPU.

The trained file ships as ``ppo_dist/assets/tokenizer.json``. Rebuild it with
``python -m ppo_dist.models.tokenizer`` (deterministic for a given ``tokenizers`` version).
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerFast

TOKENIZER_FILE = Path(__file__).resolve().parents[1] / "assets" / "tokenizer.json"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
VOCAB_SIZE = 512

CORPUS = """
今天天气很好，我们一起去公园散步吧。我喜欢学习新的知识，每天都有成长。
学习编程很有趣，写代码让我感到开心和快乐。这部电影真棒，我非常喜欢。
人工智能正在改变世界，机器学习是人工智能的重要分支。深度学习需要大量的数据。
我喜欢读书，读书让人快乐。生活中有很多美好的事情。朋友们在一起很开心。
今天的工作完成得很好，明天继续努力。春天来了，花开得很漂亮。
音乐让人放松，我喜欢听音乐。运动对身体很好，每天跑步半小时。
这家餐厅的菜很好吃，服务也很棒。孩子们在学校学习，老师很认真。
旅行可以开阔眼界，我想去很多地方看看。科技让生活更方便，也更有趣。
我们应该保护环境，爱护地球。努力学习，天天向上，健康成长。
早上好，你好吗？我很好，谢谢。晚安，祝你做个好梦。
中国的历史很悠久，文化很丰富。北京是中国的首都，上海是一个大城市。
他是一个很有意思的人，大家都喜欢和他聊天。这个问题很简单，我来回答。
请告诉我你的想法，我们可以一起讨论。时间过得真快，一年又过去了。
我觉得这本书写得很好，内容有趣又有用。小猫在阳光下睡觉，看起来很快乐。
好好学习，快乐成长，开心每一天。这是一个美好的开始，未来会更好。
写一句关于春天的话。描述一下你最喜欢的食物。说说你今天的心情。
介绍一下你的家乡。给朋友写一段祝福。谈谈学习的方法。
The quick brown fox jumps over the lazy dog. Hello world, reinforcement learning from human feedback.
0123456789 + - * / = ( ) [ ] { } , . ! ? : ; ' " \n
"""


def build_tokenizer_file(path: Path = TOKENIZER_FILE, vocab_size: int = VOCAB_SIZE) -> Path:
    """Train the byte-level BPE on ``CORPUS`` and write it to ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Each line repeated so that whole positive words get merged into single tokens.
    lines = [line for line in CORPUS.splitlines() if line.strip()]
    tok.train_from_iterator(lines * 4, trainer=trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def load_embedded_tokenizer() -> PreTrainedTokenizerFast:
    """The shipped tokenizer with explicit EOS and a pad token distinct from EOS."""
    return PreTrainedTokenizerFast(
        tokenizer_file=str(TOKENIZER_FILE),
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


if __name__ == "__main__":
    print(f"wrote {build_tokenizer_file()}")
