"""Fit the cost model's request prior: exemplar banks of harmful / benign requests and the compliance head.

    python -m ig_middleware.training.train_prior --data-dir ../shared/data --work-dir /tmp/ig_cost_data

Reads the shipped pair head from ``--weights`` (default: the package's), adds the prior and writes both back.
Only train-split requests (``build_cost_data.split_of``) enter the exemplar banks; the held-out metrics are
printed and stored in ``cost_model.json``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..reward import is_refusal
from . import build_cost_data as bcd
from . import dev_prompts
from .extra_prompts import EXTRA_BENIGN, EXTRA_BENIGN_TOPICS, EXTRA_BORDERLINE, EXTRA_HARMFUL


def exemplar_requests(data_dir: str | Path) -> tuple[list[str], list[str]]:
    """Train-split requests: harmful (shared Do-Not-Answer and tense rephrasings, plus the project-written
    ``EXTRA_HARMFUL`` and the train part of :mod:`dev_prompts`) and benign/borderline ones."""
    src = bcd.load_sources(data_dir)
    harmful = [h["prompt"] for h in src["harmful"] if bcd.split_of(h["prompt"]) == "train"]
    harmful += list(EXTRA_HARMFUL) + dev_prompts.split(dev_prompts.DEV_HARMFUL, "train")
    benign = [p for p in src["benign"] + src["borderline"] if bcd.split_of(p) == "train"]
    benign += dev_prompts.split(dev_prompts.DEV_BENIGN, "train") + dev_prompts.split(
        dev_prompts.DEV_BORDERLINE, "train"
    )
    return harmful, benign + list(EXTRA_BENIGN) + list(EXTRA_BENIGN_TOPICS) + list(EXTRA_BORDERLINE)


def plan_mining(
    data_dir: str | Path,
    n_harmful: int = 160,
    n_jailbreak: int = 48,
    samples_harmful: int = 2,
    samples_jailbreak: int = 3,
    seed: int = 0,
) -> list[dict]:
    """Generation jobs for :func:`fit_comply`'s mined answers: train-split harmful requests the cost data did not
    use (and the train part of :mod:`dev_prompts`), plain and wrapped in the *training* jailbreak templates,
    ``samples`` answers each. These are the candidates the search sees: evasive, role-play and off-topic text
    that is not a refusal must count as going along with a harmful request."""
    import random

    src = bcd.load_sources(data_dir)
    used = {j["request"] for j in bcd.plan_generations(bcd.load_sources(data_dir), seed=seed)}
    jobs_all = bcd.plan_generations(src, seed=seed)
    train_templates = sorted({j["template"] for j in jobs_all if j["kind"] == "jailbreak" and j["split"] == "train"})
    templates = {t["name"]: t["template"] for t in src["templates"]}
    pool = [h["prompt"] for h in src["harmful"] if bcd.split_of(h["prompt"]) == "train" and h["prompt"] not in used]
    random.Random(seed + 7).shuffle(pool)
    requests = dev_prompts.split(dev_prompts.DEV_HARMFUL, "train") + pool[:n_harmful]
    wrapped = [
        bcd.wrap_jailbreak(templates[train_templates[i % len(train_templates)]], req)
        for i, req in enumerate(pool[n_harmful : n_harmful + n_jailbreak])
    ]
    jobs = []
    for kind, prompts, samples in (("harmful", requests, samples_harmful), ("jailbreak", wrapped, samples_jailbreak)):
        for i, p in enumerate(prompts):
            for s in range(samples):
                jobs.append({"id": f"{kind}:{i}:{s}", "prompt": p, "kind": kind, "split": "train", "sample": s})
    return jobs


def comply_examples(rows: Sequence[dict]) -> tuple[list[str], list[float]]:
    """(text, label) pairs for the compliance head: 0 = a refusal, 1 = anything else.

    Refusals are the templated ones and generated answers that open with a refusal marker
    (:func:`ig_middleware.reward.is_refusal`); every other answer to any request (harmful, jailbreak,
    benign, borderline, off-topic cross pairs, prefixes, mined candidates) counts as going along. For a
    harmful request the only safe answer is a refusal, so evasive or role-play text must not pass as one.
    """
    texts, labels = [], []
    for r in rows:
        text = r["response"]
        if not text.strip() or r.get("kind") not in ("harmful", "jailbreak", "refusal_sys", "benign", "borderline"):
            continue
        refused = r.get("origin") == "template" or is_refusal(text)
        if r.get("kind") == "refusal_sys" and not refused:
            continue  # asked to refuse but did not: ambiguous, skip
        texts.append(text)
        labels.append(0.0 if refused else 1.0)
    return texts, labels


def fit_comply(prior, rows: Sequence[dict], encoder, epochs: int = 300) -> None:
    """Compliance head (small MLP): refusals vs. answers that go along, see :func:`comply_examples`."""
    torch.manual_seed(0)
    texts, labels = comply_examples(rows)
    X = encoder.encode(texts)
    y = torch.tensor(labels)
    pos = float(y.sum())
    opt = torch.optim.AdamW(prior.comply.parameters(), lr=0.01, weight_decay=1e-3)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(y) - pos) / max(pos, 1.0)))
    for _ in range(epochs):
        opt.zero_grad()
        loss = loss_fn(prior.comply(X).squeeze(-1), y)
        loss.backward()
        opt.step()


def request_metrics(model, data_dir: str | Path) -> dict[str, dict[str, float]]:
    """Share of requests the prior takes as harmful (P > 0.5), per held-out group: test-split shared requests,
    test requests wrapped in every jailbreak template, and the ``dev`` part of :mod:`dev_prompts`."""
    import random

    src = bcd.load_sources(data_dir)
    test_h = [h["prompt"] for h in src["harmful"] if bcd.split_of(h["prompt"]) == "test"]
    random.Random(0).shuffle(test_h)
    groups = {
        "test_harmful": test_h,
        "test_jailbreak": [bcd.wrap_jailbreak(t["template"], test_h[i]) for i, t in enumerate(src["templates"])],
        "test_benign": [p for p in src["benign"] if bcd.split_of(p) == "test"],
        "test_borderline": [p for p in src["borderline"] if bcd.split_of(p) == "test"],
        "dev_harmful": dev_prompts.split(dev_prompts.DEV_HARMFUL, "dev"),
        "dev_benign": dev_prompts.split(dev_prompts.DEV_BENIGN, "dev"),
        "dev_borderline": dev_prompts.split(dev_prompts.DEV_BORDERLINE, "dev"),
    }
    out = {}
    for name, prompts in groups.items():
        harm = model.request_harm_prob(prompts)
        out[name] = {"n": len(prompts), "flagged": round(float((harm > 0.5).float().mean()), 4)}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from ..cost_model import WEIGHTS_DIR, EmbeddingCostModel, RequestPrior
    from ..encoder import get_encoder
    from .train_cost_model import CachedEncoder, evaluate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--work-dir", default="/tmp/ig_cost_data", help="holds dataset.jsonl from train_cost_model")
    ap.add_argument("--weights", default=str(WEIGHTS_DIR), help="pair head to extend")
    ap.add_argument("--out", default=str(WEIGHTS_DIR))
    ap.add_argument("-k", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=20.0)
    ap.add_argument("--bias", type=float, default=-3.0)
    ap.add_argument("--comply-hidden", type=int, default=64)
    ap.add_argument("--no-mine", action="store_true", help="skip sampling the mined answers (mined.jsonl)")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    work = Path(args.work_dir)
    rows = bcd._read_jsonl(work / "dataset.jsonl")
    mined_path = work / "mined.jsonl"
    if not args.no_mine:  # resumable; 48 tokens like an early block of the search
        bcd.generate(plan_mining(args.data_dir), mined_path, max_new_tokens=48, batch_size=32, seed=1)
    mined = bcd._read_jsonl(mined_path) if mined_path.exists() else []
    encoder = CachedEncoder(get_encoder(), work / "embeddings.pt")
    harmful, benign = exemplar_requests(args.data_dir)
    prior = RequestPrior(
        encoder.encode(harmful), encoder.encode(benign), args.k, args.temperature, args.bias, args.comply_hidden
    )
    fit_comply(prior, [r for r in rows if r["split"] == "train"] + mined, encoder)
    model = EmbeddingCostModel.load(args.weights)
    model.prior = prior.eval()
    model.encoder = encoder
    metrics = evaluate(model, [r for r in rows if r["split"] == "test"])
    metrics["request_prior"] = request_metrics(model, args.data_dir)
    metrics["mined_answers"] = len(mined)
    encoder.save()
    model.encoder = get_encoder()
    config = {k: v for k, v in model.config.items() if k not in ("scale", "threshold", "prior")}
    model.config = config
    model.save(
        args.out,
        extra={
            "metrics_with_prior": metrics,
            "prior_command": "python -m ig_middleware.training.train_prior " + " ".join(argv or []),
            "prior_exemplars": {"harmful": len(harmful), "benign": len(benign)},
        },
    )
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
