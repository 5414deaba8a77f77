"""A tiny random XLM-R encoder with a small Unigram tokenizer, built in memory and saved for tests.

2 layers, hidden 32, 64 positions (so long sentences exercise windowing), Metaspace pre-tokenizer as in
XLM-R, offsets on. Deterministic: the same seed gives byte-identical weights.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "Barack Obama visited Moscow in 2009 and met the president of Russia.",
    "The Senate of the Republic voted on the new law in Mexico City.",
    "El Senado de la República aprobó la ley en la Ciudad de México.",
    "Бывший президент США Барак Обама с женой Мишель приобрели жильё в Вашингтоне.",
    "Angela Merkel war Bundeskanzlerin der Bundesrepublik Deutschland.",
    "北京是中华人民共和国的首都，上海是最大的城市。",
    "Paris is the capital of France; Berlin is the capital of Germany.",
    "London, New York, Tokyo and Moscow are large cities.",
]


def build_tiny_model(out: str | Path, seed: int = 0, max_positions: int = 66) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaModel

    out = Path(out)
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>", shrinking_factor=0.75
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        cls_token="<s>", sep_token="</s>", model_max_length=max_positions - 2,
    )
    config = XLMRobertaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=max_positions, pad_token_id=1, bos_token_id=0,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = XLMRobertaModel(config, add_pooling_layer=False)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out
