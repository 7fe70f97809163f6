"""Train the latent critic (:mod:`ig_middleware.critic`) on rollouts of the base model.

As in the paper (arXiv 2502.01208, Sec. 4 and Table 3), the critic is fitted to samples of the *base* model on
training prompts, labelled by the cost model (safety) and the reward model (task value):

1. **Rollouts.** For each training prompt (harmful, jailbreak-wrapped harmful, benign, borderline; the
   training side of the judge's split, :func:`ig_middleware.training.judge_data.split_of`), sample
   ``--rollouts`` answers with the engine's sampler (temperature 0.8, top-p 0.95 inside the top 256) and keep
   the last-layer hidden state of the last token at every block boundary, exactly where the engine reads it
   for the critic. Prompts are batched (left padding with explicit position ids; the rollouts of one prompt
   share its prefill), which gives the engine's hidden states up to float rounding
   (:func:`check_against_engine`). Rollouts are cached (``--rollouts-cache``): they do not depend on the judges.
2. **Labels.** Every prefix is scored by the cost model; the cumulative cost is monotone
   (:func:`ig_middleware.safety.cumulative_cost`). For block ``t`` the engine asks the critic with the block's
   hidden state ``h_t`` and the parent's safety state ``z``; the target is whether the answer still ends within
   budget from ``z``: ``z - sum_{j>=t} gamma^(j-t) c_j / d > 0``. Each example is used at the state the rollout
   actually had (from ``z0 = 1``) and at ``--z-samples`` random ``z ~ U(0, 1]``, so the critic learns the
   dependence on ``z``. The value target is the discounted final reward ``gamma^(T-t) R(x, y_T)``.
3. **Training** (Adam, BCE + MSE) with a held-out split *by prompt*; reports AUROC of the safety head and
   MSE / Pearson correlation of the value head, and saves ``critic_<model>.safetensors`` + ``.json``.

Usage::

    python -m ig_middleware.training.train_critic --data-dir ../shared/data \
        --rollouts-cache /tmp/ig_critic_rollouts.pt --out ig_middleware/weights
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import safety
from ..critic import WEIGHTS_DIR, LatentCritic
from ..models import DEFAULT_MODEL, LoadedModel, load_model
from .judge_data import TEST_TEMPLATES, split_of

_TOP_K = 256  # as the engine's sampler


# -- prompts --------------------------------------------------------------------------------------------------
def held_out_templates(sources: dict[str, Any]) -> set[str]:
    """Names of the shared jailbreak templates the judge holds out entirely (its test split)."""
    return {t["name"] for t in sources["templates"] if t["name"] in TEST_TEMPLATES}


def load_sources(data_dir: str | Path) -> dict[str, Any]:
    d = Path(data_dir)

    def lines(name: str) -> list[str]:
        return [s.strip() for s in (d / name).read_text(encoding="utf-8").splitlines() if s.strip()]

    def jsonl(name: str) -> list[dict[str, Any]]:
        return [json.loads(s) for s in lines(name)]

    return {
        "harmful": jsonl("harmful_prompts.jsonl"),
        "templates": jsonl("jailbreak_templates.jsonl"),
        "benign": lines("benign_prompts.txt"),
        "borderline": lines("borderline_prompts.txt"),
    }


def wrap_jailbreak(template: str, request: str, model_name: str = "SmolLM") -> str:
    """A role-play jailbreak around a request (the cost model's data uses the same wrapping)."""
    return template.replace("{generator.name}", model_name).rstrip() + "\n\n" + request


def select_prompts(
    sources: dict[str, Any],
    split: str,
    counts: dict[str, int],
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Prompts of one split: ``counts`` per group (harmful, jailbreak, benign, borderline), deterministic.

    Harmful/benign/borderline prompts are split by request; jailbreaks wrap a request of the same split in a
    template of the same split (test templates are the ones the cost model held out)."""
    rng = random.Random(f"{seed}:{split}")
    harmful = sorted((h for h in sources["harmful"] if split_of(h["prompt"]) == split), key=lambda h: h["prompt"])
    rng.shuffle(harmful)
    test_t = held_out_templates(sources)
    templates = sorted(
        (t for t in sources["templates"] if (t["name"] in test_t) == (split == "test")), key=lambda t: t["name"]
    )
    out: list[dict[str, Any]] = []
    n_h = counts.get("harmful", 0)
    for h in harmful[:n_h]:
        out.append({"prompt": h["prompt"], "group": "harmful", "request": h["prompt"], "category": h["category"]})
    rest = harmful[n_h:]
    for i in range(counts.get("jailbreak", 0)):
        if not templates or i >= len(rest):
            break
        t, h = templates[i % len(templates)], rest[i]
        out.append(
            {
                "prompt": wrap_jailbreak(t["template"], h["prompt"]),
                "group": "jailbreak",
                "request": h["prompt"],
                "template": t["name"],
                "category": h["category"],
            }
        )
    for group in ("benign", "borderline"):
        pool = sorted(p for p in sources[group] if split_of(p) == split)
        rng.shuffle(pool)
        for p in pool[: counts.get(group, 0)]:
            out.append({"prompt": p, "group": group, "request": p})
    return out


# -- rollouts -------------------------------------------------------------------------------------------------
def _choose(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator | None) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    top_logits, top_ids = logits.topk(min(_TOP_K, logits.shape[-1]), dim=-1)
    probs = torch.softmax(top_logits / temperature, -1)
    if top_p < 1:
        probs = probs.masked_fill(probs.cumsum(-1) - probs > top_p, 0.0)
    return top_ids.gather(1, torch.multinomial(probs, 1, generator=gen)).squeeze(1)


def rollout_batch(
    lm: LoadedModel,
    prompts: Sequence[str],
    n_per_prompt: int = 1,
    *,
    max_new_tokens: int = 64,
    block_size: int = 16,
    temperature: float = 0.8,
    top_p: float = 0.95,
    generator: torch.Generator | None = None,
) -> list[dict[str, Any]]:
    """Sample ``n_per_prompt`` answers for each (user) prompt in one batch, as the engine's ``sample`` method would.

    Returns one dict per answer: ``prompt_index``, ``tokens`` (without EOS), ``text``, ``block_texts`` (the
    answer's prefix at each block boundary), ``hidden`` ([blocks, H] last-layer state of the last token fed at
    each boundary, EOS included, as the engine records it), ``logp`` (sum of token log-probs), ``finished``."""
    model, tok = lm.model, lm.tokenizer
    ids = [lm.encode(lm.render([{"role": "user", "content": p}])) for p in prompts]
    width = max(len(x) for x in ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
    attn = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        out = model(input_ids=input_ids, attention_mask=attn, position_ids=pos, use_cache=True)
    cache = out.cache if "cache" in out else out.past_key_values
    rows = torch.arange(len(prompts)).repeat_interleave(n_per_prompt)
    cache.reorder_cache(rows)
    attn = attn[rows]
    logits = out.logits[rows, -1, :].float()
    n = rows.numel()
    eos = torch.tensor(lm.eos_token_ids, dtype=torch.long)
    tokens = torch.full((n, max_new_tokens), pad, dtype=torch.long)
    done_at = torch.full((n,), max_new_tokens, dtype=torch.long)
    logp = torch.zeros(n)
    hiddens: list[torch.Tensor] = []  # per step [n, H]
    hidden = torch.zeros(0)
    steps = 0
    for step in range(max_new_tokens):
        token = _choose(logits, temperature, top_p, generator)
        live = done_at == max_new_tokens
        token = torch.where(live, token, torch.full_like(token, pad))
        logp += torch.log_softmax(logits, -1).gather(1, token[:, None]).squeeze(1) * live
        tokens[:, step] = token
        if eos.numel():
            done_at[torch.isin(token, eos) & live] = step
        attn = torch.cat([attn, torch.ones(n, 1, dtype=attn.dtype)], dim=1)
        with torch.inference_mode():
            out = model(
                input_ids=token[:, None],
                attention_mask=attn,
                position_ids=(attn.sum(-1, keepdim=True) - 1),
                **{lm.cache_kwarg: cache},
                use_cache=True,
                output_hidden_states=True,
            )
        logits = out.logits[:, -1, :].float()
        last_h = out.hidden_states[-1][:, -1, :].float()
        hidden = last_h if step == 0 else torch.where((done_at >= step)[:, None], last_h, hidden)
        hiddens.append(hidden.clone())
        steps = step + 1
        if bool((done_at < max_new_tokens).all()):
            break
    results = []
    for i in range(n):
        end = int(done_at[i])  # EOS index, or max_new_tokens
        fed = min(end + 1, steps)  # tokens fed to the model (EOS included)
        n_blocks = max(1, math.ceil(fed / block_size))
        ans = tokens[i, : min(end, steps)].tolist()
        bounds = [min((b + 1) * block_size, fed) for b in range(n_blocks)]
        block_texts = [lm.decode(ans[: min(bd, len(ans))]) for bd in bounds]
        hid = torch.stack([hiddens[bd - 1][i] for bd in bounds])
        results.append(
            {
                "prompt_index": int(rows[i]),
                "tokens": ans,
                "text": lm.decode(ans),
                "block_texts": block_texts,
                "hidden": hid,
                "logp": float(logp[i]),
                "finished": end < max_new_tokens,
            }
        )
    return results


def generate_rollouts(
    lm: LoadedModel,
    prompts: Sequence[dict[str, Any]],
    n_per_prompt: int,
    *,
    max_new_tokens: int = 64,
    block_size: int = 16,
    max_batch_rows: int = 48,
    max_batch_tokens: int = 12000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Rollouts for all ``prompts`` (dicts with ``prompt``), batched by length; adds ``group`` and ``prompt``."""
    gen = torch.Generator().manual_seed(seed)
    lens = [len(lm.encode(lm.render([{"role": "user", "content": p["prompt"]}]))) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lens[i])
    batches: list[list[int]] = [[]]
    for i in order:
        b = batches[-1]
        rows = (len(b) + 1) * n_per_prompt
        if b and (rows > max_batch_rows or rows * (lens[i] + max_new_tokens) > max_batch_tokens):
            batches.append([])
        batches[-1].append(i)
    out: list[dict[str, Any]] = []
    bar = tqdm(total=len(prompts) * n_per_prompt, desc="rollouts", unit="answer")
    for b in batches:
        res = rollout_batch(
            lm,
            [prompts[i]["prompt"] for i in b],
            n_per_prompt,
            max_new_tokens=max_new_tokens,
            block_size=block_size,
            generator=gen,
        )
        for r in res:
            src = prompts[b[r["prompt_index"]]]
            r.update(prompt=src["prompt"], group=src["group"], request=src.get("request", src["prompt"]))
            r["hidden"] = r["hidden"].to(torch.float16)  # halves the cache; the critic reads float32
            out.append(r)
        bar.update(len(res))
    bar.close()
    return out


def check_against_engine(lm: LoadedModel, prompt: str, max_new_tokens: int = 32, block_size: int = 16) -> float:
    """Max abs difference between the engine's greedy block hidden states and :func:`rollout_batch`'s (batched
    with a longer prompt, so the padding path is exercised). Same text is asserted."""
    from ..engine import GuardedEngine
    from ..judges import KeywordCostModel

    eng = GuardedEngine(lm, cost_model=KeywordCostModel())
    r = eng.generate(
        prompt,
        method="greedy",
        safety_mode="none",
        enforce_budget=False,
        max_new_tokens=max_new_tokens,
        block_size=block_size,
        num_candidates=1,
        num_beams=1,
    )
    mine = rollout_batch(
        lm,
        [prompt, prompt + " Please answer in detail, with examples."],
        1,
        max_new_tokens=max_new_tokens,
        block_size=block_size,
        temperature=0,
    )[0]
    if mine["text"] != r.text:
        raise AssertionError(f"texts differ: {mine['text']!r} vs {r.text!r}")
    return float((mine["hidden"] - r.hidden_states).abs().max())


# -- labels ---------------------------------------------------------------------------------------------------
def future_costs(block_costs: Sequence[float], budget: float, gamma: float) -> list[float]:
    """``F_t = sum_{j>=t} gamma^(j-t) c_j / d``: the budget share still to be spent from block ``t`` on.
    Starting block ``t`` with state ``z``, the answer ends within budget iff ``z - F_t > 0``."""
    out, acc = [0.0] * len(block_costs), 0.0
    for t in range(len(block_costs) - 1, -1, -1):
        acc = block_costs[t] / budget + gamma * acc
        out[t] = acc
    return out


def score_rollouts(rollouts: list[dict[str, Any]], cost_model: Any, reward_model: Any | None, batch: int = 256) -> None:
    """Adds ``scores`` (cost of each block prefix) and ``reward`` (of the final text) to every rollout."""
    pairs = [(r["prompt"], t) for r in rollouts for t in r["block_texts"]]
    scores: list[float] = []
    for i in tqdm(range(0, len(pairs), batch), desc="cost model", unit="batch"):
        chunk = pairs[i : i + batch]
        scores += [float(s) for s in cost_model.score([p for p, _ in chunk], [t for _, t in chunk])]
    k = 0
    for r in rollouts:
        r["scores"] = scores[k : k + len(r["block_texts"])]
        k += len(r["block_texts"])
    if reward_model is None:
        for r in rollouts:  # the engine's default value: mean token log-likelihood
            r["reward"] = r["logp"] / max(1, len(r["tokens"]))
        return
    finals = [(r["prompt"], r["text"]) for r in rollouts]
    rewards: list[float] = []
    for i in tqdm(range(0, len(finals), batch), desc="reward", unit="batch"):
        chunk = finals[i : i + batch]
        rewards += [float(v) for v in reward_model.score([p for p, _ in chunk], [t for _, t in chunk])]
    for r, v in zip(rollouts, rewards, strict=True):
        r["reward"] = v


def build_examples(
    rollouts: Sequence[dict[str, Any]],
    budget: float,
    gamma: float,
    z_samples: int = 3,
    z0: float = 1.0,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Critic training examples: ``hidden`` [n, H], ``z`` [n], ``safe`` [n] (0/1), ``value`` [n], ``natural`` [n]
    (1 where z is the state the rollout really had), ``rollout`` [n] (index, for splits)."""
    gen = torch.Generator().manual_seed(seed)
    hs, zs, ys, vs, nat, rid = [], [], [], [], [], []
    for i, r in enumerate(rollouts):
        cum = safety.cumulative_cost(torch.zeros(len(r["scores"]), dtype=torch.float64), torch.tensor(r["scores"]))
        cum = torch.cummax(torch.nan_to_num(cum, posinf=1e9), 0).values
        block = torch.diff(cum, prepend=torch.zeros(1, dtype=cum.dtype)).tolist()
        fut = future_costs(block, budget, gamma)
        n_blocks = len(block)
        z = z0
        for t in range(n_blocks):
            states = [z] + (torch.rand(z_samples, generator=gen) * 0.999 + 0.001).tolist()
            for k, zt in enumerate(states):
                hs.append(r["hidden"][t].float())
                zs.append(zt)
                ys.append(1.0 if zt - fut[t] > 0 else 0.0)
                vs.append(gamma ** (n_blocks - 1 - t) * float(r["reward"]))
                nat.append(1.0 if k == 0 else 0.0)
                rid.append(i)
            z = (z - block[t] / budget) / gamma
    return {
        "hidden": torch.stack(hs),
        "z": torch.tensor(zs, dtype=torch.float32),
        "safe": torch.tensor(ys),
        "value": torch.tensor(vs, dtype=torch.float32),
        "natural": torch.tensor(nat),
        "rollout": torch.tensor(rid),
    }


# -- metrics --------------------------------------------------------------------------------------------------
def auroc(scores: Sequence[float], labels: Sequence[float]) -> float:
    """Area under the ROC curve (rank form, ties averaged); NaN if one class is missing."""
    s, y = torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(labels, dtype=torch.float64)
    pos, neg = int((y > 0.5).sum()), int((y <= 0.5).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = s.argsort()
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    for v in s.unique():  # average ties
        m = s == v
        if int(m.sum()) > 1:
            ranks[m] = ranks[m].mean()
    return float((ranks[y > 0.5].sum() - pos * (pos + 1) / 2) / (pos * neg))


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else float("nan")


def evaluate_critic(critic: LatentCritic, ex: dict[str, torch.Tensor]) -> dict[str, float]:
    p, v = critic.predict(ex["hidden"], ex["z"])
    nat = ex["natural"] > 0.5
    pred = (p >= 0.5).float()
    return {
        "n": int(len(p)),
        "auroc_safe": auroc(p.tolist(), ex["safe"].tolist()),
        "auroc_safe_natural_z": auroc(p[nat].tolist(), ex["safe"][nat].tolist()),
        "accuracy_safe": float((pred == ex["safe"]).float().mean()),
        "safe_share": float(ex["safe"].mean()),
        "value_mse": float(((v - ex["value"]) ** 2).mean()),
        "value_var": float(ex["value"].var()),
        "value_pearson": pearson(v, ex["value"]),
    }


# -- training -------------------------------------------------------------------------------------------------
def train(
    train_ex: dict[str, torch.Tensor],
    *,
    width: int = 256,
    epochs: int = 40,
    lr: float = 1e-3,
    batch_size: int = 128,
    weight_decay: float = 1e-4,
    value_weight: float = 1.0,
    model_name: str = DEFAULT_MODEL,
    gamma: float = 0.999,
    budget: float = 10.0,
    seed: int = 0,
    progress: bool = True,
) -> LatentCritic:
    """Fit a :class:`LatentCritic` (BCE on the safety head, MSE on the standardised value)."""
    torch.manual_seed(seed)
    h = train_ex["hidden"].float()
    critic = LatentCritic(h.shape[1], width, model_name=model_name, gamma=gamma, budget=budget)
    critic.h_mean.copy_(h.mean(0))
    critic.h_std.copy_(h.std(0).clamp(min=1e-4))
    critic.v_mean.copy_(train_ex["value"].mean())
    critic.v_std.copy_(train_ex["value"].std().clamp(min=1e-4) if len(h) > 1 else torch.tensor(1.0))
    v_norm = (train_ex["value"] - critic.v_mean) / critic.v_std
    opt = torch.optim.AdamW(critic.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(h)
    pos = float(train_ex["safe"].mean())
    pos_weight = torch.tensor((1 - pos) / pos if 0 < pos < 1 else 1.0).clamp(0.2, 5.0)  # balance the classes
    bce = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    critic.train()
    bar = tqdm(range(epochs), desc="critic", unit="epoch", disable=not progress)
    for _ in bar:
        perm = torch.randperm(n)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            logit, v = critic(h[idx], train_ex["z"][idx])
            loss = bce(logit, train_ex["safe"][idx]) + value_weight * ((v - v_norm[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        bar.set_postfix(loss=f"{total / n:.4f}")
    critic.eval()
    return critic


def _subset(ex: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[mask] for k, v in ex.items()}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train the latent critic on base-model rollouts.")
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--out", default=str(WEIGHTS_DIR), help="folder for critic_<model>.safetensors/.json")
    ap.add_argument("--rollouts-cache", default=None, help="reuse/save rollouts here (torch file)")
    ap.add_argument("--rollouts-only", action="store_true", help="generate (and cache) rollouts, then stop")
    ap.add_argument("--n-harmful", type=int, default=110)
    ap.add_argument("--n-jailbreak", type=int, default=30)
    ap.add_argument("--n-benign", type=int, default=60)
    ap.add_argument("--n-borderline", type=int, default=22)
    ap.add_argument("--rollouts", type=int, default=2, help="answers sampled per training prompt (paper: 5)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--budget", type=float, default=10.0)
    ap.add_argument("--gamma", type=float, default=0.999)
    ap.add_argument("--z-samples", type=int, default=3)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--holdout", type=float, default=0.2, help="share of training prompts held out for metrics")
    ap.add_argument("--cost-model", choices=["default", "keyword"], default="default")
    ap.add_argument("--cost-model-dir", default=None, help="load the embedding cost model from this folder")
    ap.add_argument("--reward-model", choices=["default", "likelihood"], default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--metrics-out", default=None, help="also write the metrics JSON here")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a CPU shared with other jobs)"
    )
    a = ap.parse_args(argv)
    t0 = time.time()
    if a.threads:
        torch.set_num_threads(a.threads)

    cache = Path(a.rollouts_cache) if a.rollouts_cache else None
    if cache is not None and cache.is_file():
        blob = torch.load(cache, weights_only=False)
        rollouts, meta = blob["rollouts"], blob["meta"]
        print(f"loaded {len(rollouts)} rollouts from {cache}")
    else:
        sources = load_sources(a.data_dir)
        counts = {
            "harmful": a.n_harmful,
            "jailbreak": a.n_jailbreak,
            "benign": a.n_benign,
            "borderline": a.n_borderline,
        }
        prompts = select_prompts(sources, "train", counts, seed=a.seed)
        lm = load_model(a.model)
        t = time.time()
        rollouts = generate_rollouts(
            lm, prompts, a.rollouts, max_new_tokens=a.max_new_tokens, block_size=a.block_size, seed=a.seed
        )
        meta = {
            "prompts": {g: sum(p["group"] == g for p in prompts) for g in counts},
            "rollouts_per_prompt": a.rollouts,
            "max_new_tokens": a.max_new_tokens,
            "block_size": a.block_size,
            "rollout_seconds": round(time.time() - t, 1),
            "model": a.model,
        }
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"rollouts": rollouts, "meta": meta}, cache)
            print(f"saved {len(rollouts)} rollouts to {cache}")
    if a.rollouts_only:
        return 0

    if a.cost_model_dir:
        from ..cost_model import MiniLMCostModel

        cost_model = MiniLMCostModel.load(a.cost_model_dir)
    elif a.cost_model == "default":
        from ..cost_model import load_default_cost_model

        cost_model = load_default_cost_model()
    else:
        from ..judges import KeywordCostModel

        cost_model = KeywordCostModel()
    reward_model = None
    if a.reward_model == "default":
        from ..reward import DefaultReward

        reward_model = DefaultReward(cost_model if hasattr(cost_model, "request_harm_prob") else None)
    score_rollouts(rollouts, cost_model, reward_model)

    held = torch.tensor([split_of("critic:" + r["prompt"], a.holdout) == "test" for r in rollouts])
    ex = build_examples(rollouts, a.budget, a.gamma, a.z_samples, seed=a.seed)
    test_mask = held[ex["rollout"]]
    train_ex, test_ex = _subset(ex, ~test_mask), _subset(ex, test_mask)
    kw = dict(
        width=a.width,
        epochs=a.epochs,
        lr=a.lr,
        batch_size=a.batch_size,
        model_name=a.model,
        gamma=a.gamma,
        budget=a.budget,
        seed=a.seed,
    )
    critic = train(train_ex, **kw)
    held_metrics = evaluate_critic(critic, test_ex)
    train_metrics = evaluate_critic(critic, train_ex)
    # per-group view of the held-out safety head at the natural states
    groups = sorted({r["group"] for r in rollouts})
    by_group = {}
    for g in groups:
        gm = torch.tensor([r["group"] == g for r in rollouts])[test_ex["rollout"]]
        if int(gm.sum()):
            sub = _subset(test_ex, gm & (test_ex["natural"] > 0.5))
            p, _ = critic.predict(sub["hidden"], sub["z"])
            by_group[g] = {
                "n": int(len(p)),
                "safe_share": float(sub["safe"].mean()),
                "pred_safe_share": float((p >= 0.5).float().mean()),
            }
    print(f"held-out: {json.dumps(held_metrics)}")
    # the shipped critic is refitted on all examples (same settings) once the held-out numbers are measured
    final = train(ex, **kw)
    final.stats = {
        "rollouts": len(rollouts),
        "examples": int(len(ex["z"])),
        "train_examples": int(len(train_ex["z"])),
        "heldout_examples": int(len(test_ex["z"])),
        "heldout": held_metrics,
        "train": train_metrics,
        "heldout_by_group_natural_z": by_group,
        "safe_share_final_answers": float(
            sum((1.0 - float(max([0.0] + list(r["scores"]))) / a.budget) > 0 for r in rollouts) / len(rollouts)
        ),
        "cost_model": a.cost_model_dir or a.cost_model,
        "reward_model": a.reward_model,
        "rollout_meta": meta,
        "z_samples": a.z_samples,
        "epochs": a.epochs,
        "lr": a.lr,
        "seconds_total": round(time.time() - t0, 1),
        "refit_on_all": True,
    }
    weights, cfg = final.save(a.out)
    print(f"saved {weights} and {cfg}")
    print(json.dumps(final.stats, indent=2))
    if a.metrics_out:
        Path(a.metrics_out).write_text(json.dumps(final.stats, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
