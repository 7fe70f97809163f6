"""Train the default cost model and measure it on prompts it never saw (``ig-guard train-cost-model``).

    python -m ig_middleware.training.train_cost_model --data-dir ../shared/data --work-dir /tmp/ig_cost_data \
        --out ig_middleware/weights

Steps: build the dataset with :mod:`build_cost_data` if ``<work-dir>/generations.jsonl`` is missing (CPU
generation, ~20+ minutes), label/assemble it, train the head on the *train* split, evaluate on the
*test* split (split by request, jailbreak templates held out), and write the head, its config and the
metrics to ``--out``. The shipped weights are the ones trained here on the train split only, so the
reported metrics are held-out numbers for exactly what ships.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import build_cost_data as bcd


class CachedEncoder:
    """Wraps a :class:`~ig_middleware.encoder.MiniLMEncoder`, memoising embeddings by text in a file, so
    re-training and re-evaluating do not re-encode ~15k texts (minutes on a small CPU)."""

    def __init__(self, encoder: Any, path: Path) -> None:
        import torch

        self.encoder, self.path, self.dim = encoder, Path(path), encoder.dim
        self.memo: dict[tuple[str, str], Any] = torch.load(self.path) if self.path.exists() else {}
        self.dirty = False

    def encode(self, texts: Sequence[str], batch_size: int = 64, truncation: str = "left"):
        import torch

        missing = list(dict.fromkeys(t for t in texts if (truncation, t) not in self.memo))
        if missing:
            for t, e in zip(missing, self.encoder.encode(missing, batch_size, truncation), strict=True):
                self.memo[(truncation, t)] = e.clone()
            self.dirty = True
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.stack([self.memo[(truncation, t)] for t in texts])

    def save(self) -> None:
        import torch

        if self.dirty:
            torch.save(self.memo, self.path)
            self.dirty = False


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve (rank statistic, ties averaged); NaN if one class is missing."""
    pairs = sorted(zip(scores, labels, strict=True), key=lambda t: t[0])
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = 0.0
    i = 0
    while i < len(pairs):
        j = i
        while j + 1 < len(pairs) and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        avg = (i + j) / 2 + 1
        rank_sum += avg * sum(1 for k in range(i, j + 1) if pairs[k][1] == 1)
        i = j + 1
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def agreement(pred: Sequence[int], truth: Sequence[int]) -> dict[str, float]:
    """Accuracy and Cohen's kappa of two binary labelings."""
    n = len(truth)
    if n == 0:
        return {"n": 0, "accuracy": float("nan"), "kappa": float("nan")}
    po = sum(int(a == b) for a, b in zip(pred, truth, strict=True)) / n
    p1, t1 = sum(pred) / n, sum(truth) / n
    pe = p1 * t1 + (1 - p1) * (1 - t1)
    kappa = (po - pe) / (1 - pe) if pe < 1 else float("nan")
    return {"n": n, "accuracy": round(po, 4), "kappa": round(kappa, 4)}


def confusion(pred: Sequence[int], truth: Sequence[int]) -> dict[str, int]:
    z = list(zip(pred, truth, strict=True))
    return {
        "tp": sum(1 for p, t in z if p == 1 and t == 1),
        "fp": sum(1 for p, t in z if p == 1 and t == 0),
        "tn": sum(1 for p, t in z if p == 0 and t == 0),
        "fn": sum(1 for p, t in z if p == 0 and t == 1),
    }


def evaluate(model: Any, rows: Sequence[dict[str, Any]], threshold: float = 0.5) -> dict[str, Any]:
    """Held-out metrics of ``model`` on labelled rows (see docs/cost_model.md for their meaning)."""
    probs = model.prob_unsafe([r["prompt"] for r in rows], [r["response"] for r in rows])
    labels = [int(r["label"]) for r in rows]
    pred = [int(p > threshold) for p in probs]

    def sub(cond):
        idx = [i for i, r in enumerate(rows) if cond(r)]
        return idx, [labels[i] for i in idx], [pred[i] for i in idx], [probs[i] for i in idx]

    out: dict[str, Any] = {"threshold": threshold, "rows": len(rows)}
    idx, y, p, s = sub(lambda r: r["part"] == "full")
    out["full_answers"] = {
        "n": len(idx),
        "auroc": round(auroc(s, y), 4),
        "confusion": confusion(p, y),
        **agreement(p, y),
    }
    out["all_incl_prefixes"] = {
        "n": len(rows),
        "auroc": round(auroc(probs, labels), 4),
        "confusion": confusion(pred, labels),
        **agreement(pred, labels),
    }
    for kind in ("borderline", "benign"):
        idx, y, p, s = sub(lambda r, k=kind: r["kind"] == k and r["origin"] in ("auto", "hand", "prefix"))
        out[f"{kind}_false_positive_rate"] = {
            "n": len(idx),
            "fpr": round(sum(p) / max(1, len(p)), 4),
            "max_p": round(max(s, default=0.0), 4),
        }
    idx, y, p, s = sub(lambda r: r["kind"] == "jailbreak" and r["origin"] in ("auto", "hand"))
    out["jailbreak_generated_answers"] = {"n": len(idx), "confusion": confusion(p, y), **agreement(p, y)}
    idx, y, p, s = sub(lambda r: r["kind"] == "jailbreak" and r["part"] == "full")
    out["jailbreak_all_full_answers"] = {
        "n": len(idx),
        "auroc": round(auroc(s, y), 4),
        "confusion": confusion(p, y),
        **agreement(p, y),
    }
    idx, y, p, s = sub(lambda r: r["kind"] in ("harmful", "jailbreak", "refusal_sys") and r["origin"] == "template")
    out["templated_refusals_flagged"] = {"n": len(idx), "rate": round(sum(p) / max(1, len(p)), 4)}
    idx, y, p, s = sub(lambda r: r["origin"] == "hand")
    out["vs_hand_labels"] = {"auroc": round(auroc(s, y), 4), "confusion": confusion(p, y), **agreement(p, y)}
    return out


def auto_rule_agreement() -> dict[str, Any]:
    """How the automatic labelling rule agrees with the hand labels (all of them)."""
    rows = bcd._read_jsonl(bcd.HAND_LABELS)
    auto = [bcd.auto_label(r["kind"], r["response"]) for r in rows]
    truth = [int(r["label"]) for r in rows]
    return {**agreement(auto, truth), "confusion": confusion(auto, truth)}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train and evaluate the default cost model head.")
    ap.add_argument("--data-dir", required=True, help="folder with harmful_prompts.jsonl etc. (../shared/data)")
    ap.add_argument("--work-dir", default="/tmp/ig_cost_data", help="generations/dataset cache (not committed)")
    ap.add_argument(
        "--out",
        default=str(Path(__file__).resolve().parents[1] / "weights"),
        help="where cost_model.safetensors/.json are written",
    )
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=20.0)
    ap.add_argument("--benign-weight", type=float, default=3.0, help="loss weight of benign/borderline rows")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for the head (small ops)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))

    from ..cost_model import train_cost_model
    from ..encoder import get_encoder

    work = Path(args.work_dir)
    if not (work / "generations.jsonl").exists():
        bcd.main(["--data-dir", args.data_dir, "--out", str(work)])
    rows = bcd.assemble(bcd._read_jsonl(work / "generations.jsonl"), seed=args.seed)
    bcd._write_jsonl(work / "dataset.jsonl", rows)
    train = [r for r in rows if r["split"] == "train"]
    for r in train:  # benign answers are scarce next to ~10k harmful-prompt rows: weight them up
        if r["kind"] in ("benign", "borderline"):
            r["weight"] = args.benign_weight
    test = [r for r in rows if r["split"] == "test"]
    print(f"{len(train)} train rows, {len(test)} test rows")
    encoder = CachedEncoder(get_encoder(), work / "embeddings.pt")
    model = train_cost_model(
        train,
        None,
        epochs=args.epochs,
        lr=args.lr,
        hidden=args.hidden,
        seed=args.seed,
        scale=args.scale,
        encoder=encoder,
    )
    encoder.save()
    metrics = {"test": evaluate(model, test), "auto_rule_vs_hand_labels": auto_rule_agreement()}
    encoder.save()
    model.save(
        args.out,
        extra={
            "metrics": metrics,
            "training_command": "python -m ig_middleware.training.train_cost_model " + " ".join(argv or []),
        },
    )
    (work / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
