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

from . import build_cost_data as bcd
from .extra_prompts import EXTRA_BENIGN, EXTRA_BORDERLINE


def exemplar_requests(data_dir: str | Path) -> tuple[list[str], list[str]]:
    """Train-split harmful requests (incl. jailbreak-free Do-Not-Answer and tense rephrasings) and benign ones."""
    src = bcd.load_sources(data_dir)
    harmful = [h["prompt"] for h in src["harmful"] if bcd.split_of(h["prompt"]) == "train"]
    benign = [p for p in src["benign"] + src["borderline"] if bcd.split_of(p) == "train"]
    return harmful, benign + list(EXTRA_BENIGN) + list(EXTRA_BORDERLINE)


def fit_comply(prior, rows: Sequence[dict], encoder, epochs: int = 200) -> None:
    """Logistic compliance head: refusals (templated and model-written) vs. answers that go along."""
    texts, labels = [], []
    for r in rows:
        if not r["response"].strip():
            continue
        refused = r.get("origin") == "template" or (r["kind"] == "refusal_sys" and r["label"] == 0)
        complied = (r["kind"] in ("harmful", "jailbreak") and r["label"] == 1) or r["kind"] in ("benign", "borderline")
        if refused or complied:
            texts.append(r["response"])
            labels.append(0.0 if refused else 1.0)
    X = encoder.encode(texts)
    y = torch.tensor(labels)
    pos = float(y.sum())
    opt = torch.optim.AdamW(prior.comply.parameters(), lr=0.05, weight_decay=1e-3)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(y) - pos) / max(pos, 1.0)))
    for _ in range(epochs):
        opt.zero_grad()
        loss = loss_fn(prior.comply(X).squeeze(-1), y)
        loss.backward()
        opt.step()


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
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    work = Path(args.work_dir)
    rows = bcd._read_jsonl(work / "dataset.jsonl")
    encoder = CachedEncoder(get_encoder(), work / "embeddings.pt")
    harmful, benign = exemplar_requests(args.data_dir)
    prior = RequestPrior(encoder.encode(harmful), encoder.encode(benign), args.k, args.temperature, args.bias)
    fit_comply(prior, [r for r in rows if r["split"] == "train"], encoder)
    model = EmbeddingCostModel.load(args.weights)
    model.prior = prior.eval()
    model.encoder = encoder
    metrics = evaluate(model, [r for r in rows if r["split"] == "test"])
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
