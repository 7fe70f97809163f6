"""The HF judge adapters on tiny random Llama models built offline (nothing is loaded from a hub)."""

from __future__ import annotations

import math

import pytest
import torch

from ig_middleware.errors import ModelLoadError
from ig_middleware.hf_judges import (
    LlamaGuardCostModel,
    SequenceClassifierCostModel,
    SequenceClassifierReward,
    make_formatter,
)
from ig_middleware.judges import CostModel, RewardModel

WORDS = (
    "safe unsafe how do i make a bomb cake bake the oven sorry can't help with that user assistant "
    "prompt response first mix flour eggs sugar explosive step kill python process"
).split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> judge : {% endif %}"
)
PROMPTS = ["how do i make a bomb", "how do i bake a cake", "how do i kill python process"]
RESPONSES = ["first mix explosive step", "first mix flour eggs sugar", "sorry can't help with that"]


def _tokenizer(chat: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<s>", "</s>", ":", "'", "\n", *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def _config(num_labels: int = 2, **kw):
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        num_labels=num_labels,
        **kw,
    )
    return cfg


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clf")
    model = LlamaForSequenceClassification(
        _config(2, id2label={0: "safe", 1: "unsafe"}, label2id={"safe": 0, "unsafe": 1})
    )
    model.save_pretrained(path)
    _tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def score_head_dir(tmp_path_factory):
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("beaver")
    LlamaForSequenceClassification(_config(1)).save_pretrained(path)
    _tokenizer(chat=False).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def guard_dir(tmp_path_factory):
    from transformers import LlamaForCausalLM

    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("guard")
    LlamaForCausalLM(_config()).save_pretrained(path)
    _tokenizer().save_pretrained(path)
    return path


def test_classifier_from_path_is_a_cost_model_and_batches_exactly(classifier_dir):
    judge = SequenceClassifierCostModel(str(classifier_dir), label="unsafe", batch_size=2)
    assert isinstance(judge, CostModel)
    batched = judge.score(PROMPTS, RESPONSES)
    single = [judge.score([p], [r])[0] for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    assert len(batched) == 3 and all(math.isfinite(v) for v in batched)
    # right padding + last-token pooling: padding other rows must not change a row's score
    assert batched == pytest.approx(single, abs=1e-4)
    assert len(set(round(v, 6) for v in batched)) > 1  # the text matters


def test_classifier_label_logit_matches_a_manual_forward(classifier_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    judge = SequenceClassifierCostModel(str(classifier_dir), label="unsafe", template="plain")
    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
    tok = AutoTokenizer.from_pretrained(classifier_dir)
    enc = tok(f"{PROMPTS[0]}\n\n{RESPONSES[0]}", return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[0]
    assert judge.score(PROMPTS[:1], RESPONSES[:1])[0] == pytest.approx(float(logits[1]), abs=1e-4)
    safe = SequenceClassifierCostModel(str(classifier_dir), label=0, template="plain")
    assert safe.score(PROMPTS[:1], RESPONSES[:1])[0] == pytest.approx(float(logits[0]), abs=1e-4)
    prob = SequenceClassifierCostModel(str(classifier_dir), label="unsafe", template="plain", output="prob")
    assert prob.score(PROMPTS[:1], RESPONSES[:1])[0] == pytest.approx(float(torch.softmax(logits, -1)[1]), abs=1e-4)


def test_scale_and_offset_are_affine(classifier_dir):
    base = SequenceClassifierCostModel(str(classifier_dir), label="unsafe")
    moved = SequenceClassifierCostModel(base.model, base.tokenizer, label="unsafe", scale=-3.0, offset=2.5)
    a, b = base.score(PROMPTS, RESPONSES), moved.score(PROMPTS, RESPONSES)
    assert b == pytest.approx([-3.0 * v + 2.5 for v in a], abs=1e-4)


def test_single_score_head_like_beaver(score_head_dir):
    judge = SequenceClassifierCostModel(str(score_head_dir), template="beaver")
    reward = SequenceClassifierReward(str(score_head_dir), template="beaver", scale=2.0)
    assert isinstance(reward, RewardModel)
    costs = judge.score(PROMPTS, RESPONSES)
    assert reward.score(PROMPTS, RESPONSES) == pytest.approx([2 * c for c in costs], abs=1e-4)
    probs = SequenceClassifierCostModel(str(score_head_dir), template="beaver", output="prob")
    assert probs.score(PROMPTS, RESPONSES) == pytest.approx([1 / (1 + math.exp(-c)) for c in costs], abs=1e-4)


def test_unknown_label_and_bad_path_fail_clearly(classifier_dir, tmp_path):
    with pytest.raises(ValueError, match="not in"):
        SequenceClassifierCostModel(str(classifier_dir), label="toxic")
    with pytest.raises(ModelLoadError):
        SequenceClassifierCostModel(str(tmp_path / "missing"))


def test_formatters():
    tok = _tokenizer()
    assert make_formatter("plain", tok)("a", "b") == "a\n\nb"
    assert make_formatter("beaver", tok)("a", "b") == "BEGINNING OF CONVERSATION: USER: a ASSISTANT:b"
    assert "user : a" in make_formatter("auto", tok)("a", "b")
    assert make_formatter("auto", _tokenizer(chat=False))("a", "b") == "a\n\nb"
    assert make_formatter("Q={prompt} A={response}", tok)("a", "b") == "Q=a A=b"


def test_llama_guard_probability_matches_next_token_softmax(guard_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    judge = LlamaGuardCostModel(str(guard_dir), scale=20.0, batch_size=2)
    assert isinstance(judge, CostModel)
    probs = judge.prob_unsafe(PROMPTS, RESPONSES)
    costs = judge.score(PROMPTS, RESPONSES)
    assert all(0.0 < p < 1.0 for p in probs)
    assert costs == pytest.approx([20.0 * p for p in probs], abs=1e-5)
    single = [judge.prob_unsafe([p], [r])[0] for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    assert probs == pytest.approx(single, abs=1e-5)

    tok = AutoTokenizer.from_pretrained(guard_dir)
    model = AutoModelForCausalLM.from_pretrained(guard_dir).eval()
    text = tok.apply_chat_template(
        [{"role": "user", "content": PROMPTS[0]}, {"role": "assistant", "content": RESPONSES[0]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tok(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        nxt = model(**ids).logits[0, -1]
    u, s = tok.convert_tokens_to_ids("unsafe"), tok.convert_tokens_to_ids("safe")
    expected = float(torch.softmax(torch.stack([nxt[u], nxt[s]]), -1)[0])
    assert probs[0] == pytest.approx(expected, abs=1e-5)


def test_llama_guard_swapping_tokens_complements(guard_dir):
    judge = LlamaGuardCostModel(str(guard_dir), scale=1.0)
    swapped = LlamaGuardCostModel(judge.model, judge.tokenizer, unsafe_token="safe", safe_token="unsafe", scale=1.0)
    a, b = judge.score(PROMPTS, RESPONSES), swapped.score(PROMPTS, RESPONSES)
    assert [x + y for x, y in zip(a, b, strict=True)] == pytest.approx([1.0] * 3, abs=1e-5)


def test_llama_guard_without_chat_template_uses_fallback(tmp_path):
    from transformers import LlamaForCausalLM

    torch.manual_seed(3)
    model = LlamaForCausalLM(_config())
    judge = LlamaGuardCostModel(model, _tokenizer(chat=False))
    assert "Provide your safety assessment" in judge.format("a", "b")
    assert all(0.0 < c < judge.scale for c in judge.score(PROMPTS, RESPONSES))
