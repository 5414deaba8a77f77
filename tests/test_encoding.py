"""Oracle and invariance tests of the span max-pooled encoder (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from xel.precompute.encoding import TextEncoder
from xel.precompute.identity import EncodeError
from xel.precompute.items import EncodeStats, context_item, entity_item, mention_item
from xel.precompute.settings import resolve_encoder

from tests.conftest import LONG

PREFIX = "query: "


@pytest.fixture(scope="module")
def encoder(tiny_model_dir) -> TextEncoder:
    return TextEncoder.load(resolve_encoder(tiny_model_dir, dtype="fp32", prefix=PREFIX, device="cpu"))


def reference_short(enc: TextEncoder, text: str, span: tuple[int, int]) -> np.ndarray:
    """One text at a time, the way e5 is used: tokenize prefix + text with specials, pool the span's subwords."""
    tok = enc.tokenizer(PREFIX + text, add_special_tokens=True, return_offsets_mapping=True)
    ids = torch.tensor([tok["input_ids"]])
    with torch.no_grad():
        hidden = enc.model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
    special = set(enc.tokenizer.all_special_ids)
    lo, hi = span[0] + len(PREFIX), span[1] + len(PREFIX)
    rows = [
        i for i, ((s, e), t) in enumerate(zip(tok["offset_mapping"], tok["input_ids"]))
        if t not in special and s < hi and e > lo
    ]
    assert rows, "reference found no subword"
    return hidden[rows].max(dim=0).values.numpy()


def reference_windowed(enc: TextEncoder, text: str, span: tuple[int, int]) -> np.ndarray:
    """Brute force over every window of the allowed size that holds the mention; pick the most centred."""
    tok = enc.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offs = tok["input_ids"], tok["offset_mapping"]
    prefix_ids = enc.tokenizer(PREFIX.rstrip(), add_special_tokens=False)["input_ids"]
    budget = enc.max_length - 2 - len(prefix_ids)
    hit = [i for i, (s, e) in enumerate(offs) if s < span[1] and e > span[0]]
    centre = (hit[0] + hit[-1] + 1) / 2
    windows = [lo for lo in range(0, len(ids) - budget + 1) if lo <= hit[0] and hit[-1] < lo + budget]
    lo = min(windows, key=lambda w: (abs(w + budget / 2 - centre), w))
    row = [enc.tokenizer.cls_token_id, *prefix_ids, *ids[lo : lo + budget], enc.tokenizer.sep_token_id]
    x = torch.tensor([row])
    with torch.no_grad():
        hidden = enc.model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state[0]
    pooled = [1 + len(prefix_ids) + i - lo for i in hit]
    return hidden[pooled].max(dim=0).values.numpy()


CASES = [
    ("start", "Barack Obama visited Moscow in 2009.", (0, 6)),
    ("end", "Barack Obama visited Moscow", (21, 27)),
    ("multi-subword", "Бывший президент США Барак Обама с женой Мишель.", (21, 32)),
    ("cjk-no-spaces", "北京是中华人民共和国的首都，上海是最大的城市。", (16, 18)),
    ("punctuation-inside", "Paris is the capital of France; Berlin is the capital of Germany.", (25, 38)),
]


@pytest.mark.parametrize("name,text,span", CASES, ids=[c[0] for c in CASES])
def test_mention_pool_equals_one_text_reference(encoder, name, text, span):
    got = encoder.encode([mention_item("x", "en", text, *span)])[0]
    want = reference_short(encoder, text, span)
    np.testing.assert_allclose(got.astype(np.float32), want, atol=2e-3, rtol=2e-3)


def test_entity_pool_is_whole_text_without_specials_or_prefix(encoder):
    got = encoder.encode([entity_item("e", "en", "Senate of the Republic")])[0]
    want = reference_short(encoder, "Senate of the Republic", (0, len("Senate of the Republic")))
    np.testing.assert_allclose(got.astype(np.float32), want, atol=2e-3, rtol=2e-3)


def test_long_sentence_is_windowed_around_the_mention_not_dropped(encoder):
    text = LONG + " Obama"
    span = (len(LONG) + 1, len(LONG) + 6)
    tok = encoder.tokenize([mention_item("x", "en", text, *span)])
    assert len(tok.ids[0]) == encoder.max_length and tok.windowed == 1
    assert tok.pool_masks[0].any()
    got = encoder.encode([mention_item("x", "en", text, *span)])[0]
    np.testing.assert_allclose(got.astype(np.float32), reference_windowed(encoder, text, span), atol=2e-3, rtol=2e-3)


def test_mention_in_the_middle_of_a_long_sentence(encoder):
    text = LONG + " Obama " + LONG
    span = (len(LONG) + 1, len(LONG) + 6)
    got = encoder.encode([mention_item("x", "en", text, *span)])[0]
    np.testing.assert_allclose(got.astype(np.float32), reference_windowed(encoder, text, span), atol=2e-3, rtol=2e-3)


def test_context_window_is_centred_on_the_mention(encoder):
    context = LONG + " Barack Obama visited Moscow."
    item = context_item("x", "en", context, "Barack Obama visited Moscow.", 21, 27)
    assert context[item.anchor[0] : item.anchor[1]] == "Moscow"
    tok = encoder.tokenize([item])
    assert tok.windowed == 1 and tok.pool_masks[0].sum() == encoder.budget


def test_batched_equals_one_by_one(encoder):
    items = [mention_item(str(i), "en", t, *s) for i, (_, t, s) in enumerate(CASES)]
    items += [entity_item("e", "en", "Angela Merkel"), mention_item("l", "en", LONG + " Obama", len(LONG) + 1,
                                                                    len(LONG) + 6)]
    one_by_one = np.stack([encoder.encode([it])[0] for it in items])
    for budget in (64, 200, 100000):
        encoder.max_tokens_per_batch = budget
        np.testing.assert_allclose(encoder.encode(items), one_by_one, atol=1e-3)
    encoder.max_tokens_per_batch = 16384
    for chunk_size in (1, 2, 3):  # tokenization pipelined in chunks on a background thread
        np.testing.assert_allclose(encoder.encode(items, chunk_size=chunk_size), one_by_one, atol=1e-3)


def test_items_with_the_same_encoder_input_share_a_forward_pass_and_pool_their_own_spans(encoder):
    """The mentions of one sentence (``ms``) and of one context (``mc``) are one forward pass each, pooled over
    each item's span; a long sentence windowed around two far-apart mentions is two inputs, not one."""
    sentence = "Barack Obama met Angela Merkel in Berlin."
    spans = [(0, 12), (17, 30), (34, 40)]
    far = LONG + " Obama " + LONG + " Merkel"
    far_spans = [(len(LONG) + 1, len(LONG) + 6), (len(far) - 6, len(far))]
    items = [mention_item(f"m{i}", "en", sentence, *span) for i, span in enumerate(spans)]
    items += [context_item(f"c{i}", "en", "Before. " + sentence, sentence, *span) for i, span in enumerate(spans)]
    items += [mention_item(f"f{i}", "en", far, *span) for i, span in enumerate(far_spans)]
    items += [entity_item("e0", "en", "Berlin"), entity_item("e1", "en", "Berlin"), entity_item("e2", "en", "Bonn")]
    order = [4, 0, 9, 2, 7, 5, 1, 10, 3, 6, 8]  # duplicates apart in the input
    items = [items[i] for i in order]
    one_by_one = np.stack([encoder.encode([it])[0] for it in items])
    for chunk_size in (2048, 4, 1):
        stats = EncodeStats()
        got = encoder.encode(items, stats, chunk_size=chunk_size)
        np.testing.assert_allclose(got, one_by_one, atol=1e-3)
        if chunk_size == 2048:  # 3 mentions of a sentence, 3 of a context, 2 same names: 2 + 2 + 1 shared
            assert stats.texts == len(items) and stats.shared == 5
    assert not np.allclose(one_by_one[order.index(0)], one_by_one[order.index(1)], atol=1e-3)  # spans differ
    np.testing.assert_array_equal(got[order.index(3)], got[order.index(5)])  # a context pools whole


def test_bf16_close_to_fp32(tiny_model_dir):
    fp32 = TextEncoder.load(resolve_encoder(tiny_model_dir, dtype="fp32", device="cpu"))
    bf16 = TextEncoder.load(resolve_encoder(tiny_model_dir, dtype="bf16", device="cpu"))
    items = [mention_item(str(i), "en", t, *s) for i, (_, t, s) in enumerate(CASES)]
    a, b = fp32.encode(items).astype(np.float32), bf16.encode(items).astype(np.float32)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99


def test_padding_stays_low_with_length_bucketing(encoder):
    rng = np.random.default_rng(0)
    words = "Paris Berlin Moscow capital France Germany Russia city large".split()
    items = [entity_item(str(i), "en", " ".join(rng.choice(words, rng.integers(1, 30)))) for i in range(400)]
    from xel.precompute.items import EncodeStats

    stats = EncodeStats()
    encoder.max_tokens_per_batch = 2048
    encoder.encode(items, stats)
    encoder.max_tokens_per_batch = 16384
    assert stats.padding_fraction < 0.10


def test_span_covering_no_subword_is_an_error(encoder):
    with pytest.raises(EncodeError, match="covers no subword"):
        # a lone combining accent: NFKC composes it into the previous letter's subword, so the span is empty
        encoder.encode([mention_item("bad", "en", "Obama\u0301 visited", 5, 6)])


def test_layer_out_of_range_is_refused(tiny_model_dir):
    with pytest.raises(EncodeError, match="out of range"):
        TextEncoder.load(resolve_encoder(tiny_model_dir, layer=7, device="cpu"))


def test_not_a_model_directory(tmp_path):
    with pytest.raises(EncodeError, match="not a Hugging Face model directory"):
        TextEncoder.load(resolve_encoder(tmp_path))


def test_loading_an_encoder_leaves_the_process_torch_threads_alone(tiny_model_dir):
    """torch's thread count is the process's, set by entry points (an actor's OMP_NUM_THREADS), not by a library."""
    before = torch.get_num_threads()
    TextEncoder.load(resolve_encoder(tiny_model_dir, dtype="fp32", device="cpu"), threads=1 if before > 1 else 2)
    assert torch.get_num_threads() == before
