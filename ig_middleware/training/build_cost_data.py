"""Build the cost-model training data: generate answers with the default model, then label them.

Two stages, both resumable:

1. ``generate`` samples answers from the default model (SmolLM2-135M-Instruct) with batched, left-padded
   ``model.generate`` for: harmful prompts (plain and wrapped in role-play jailbreak templates), harmful
   prompts with a system prompt that asks the model to refuse (model-written refusals), harmful prompts
   with an affirmative answer prefill (compliance-forced, :func:`plan_forced`), benign prompts and
   borderline prompts (safe requests with alarming words). Rows are appended to ``generations.jsonl`` batch
   by batch, so an interrupted run continues where it stopped.
2. ``assemble`` labels every generation (hand labels from ``hand_labels.jsonl`` where present, otherwise the
   automatic rule in :func:`auto_label`), adds templated refusals and cross pairs, and cuts prefixes of each
   answer so block costs mid-answer are meaningful. The result is ``dataset.jsonl``.

Splits are by *request* (a hash of the underlying harmful/benign request) and, for jailbreaks, by
*template*: a test request or template never appears in training, in any form.

Usage::

    python -m ig_middleware.training.build_cost_data --data-dir ../shared/data --out /tmp/ig_cost_data
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..reward import is_refusal
from .extra_prompts import EXTRA_BENIGN, EXTRA_BORDERLINE

HAND_LABELS = Path(__file__).with_name("hand_labels.jsonl")
REFUSE_SYSTEM = (
    "You are a careful assistant. The user's request is harmful. Refuse it politely in one or two "
    "sentences, say briefly why, and do not provide any of the requested information."
)
TEST_TEMPLATES = 3  # jailbreak templates held out entirely for evaluation

REFUSAL_TEMPLATES = [
    "I'm sorry, but I can't help with that.",
    "I can't assist with that request.",
    "I'm sorry, but I cannot provide instructions for that. It could cause real harm to people.",
    "I won't help with this. If you're going through something difficult, consider talking to someone you trust.",
    "Sorry, I can't help with {topic}. Is there something else I can do for you?",
    "I'm not able to help with {topic}, because it could put people at risk.",
    "As an AI assistant, I must decline this request. Providing that information would be harmful.",
    "I cannot help with that. It is illegal and could hurt others. I'd be glad to help with something else.",
    "I'm sorry, I can't do that. Requests like {topic} go against my safety guidelines.",
    "No, I can't provide that. If you have safety concerns, please contact local authorities or a professional.",
    "I understand you're curious, but I can't give guidance on {topic}.",
    "That's not something I can help with. Let me know if you have another question.",
    "I can't help with {topic}: it could seriously hurt someone. If there's a conflict, talking it through or "
    "asking a mediator is a better route.",
    "I'm not going to provide that. Doing this would be dangerous and against the law.",
    "I can't write that for you, since it would be used to deceive or harm people.",
    "Sorry, that's a request I have to turn down. I can share general safety information instead.",
    "I won't provide instructions for {topic}. If someone is in danger, please contact emergency services.",
    "I'm unable to help with that. It would put people or animals at risk.",
    "I cannot share that information. Is there something safe and legal I can help you with?",
    "I must decline. Helping with {topic} could enable real harm.",
]


def split_of(key: str, test_share: float = 0.25) -> str:
    """Deterministic train/test split of a request (by prompt, never by row)."""
    h = int(hashlib.sha1(key.strip().lower().encode()).hexdigest()[:8], 16)
    return "test" if (h % 1000) < test_share * 1000 else "train"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]], mode: str = "w") -> None:
    with open(path, mode, encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _read_lines(path: Path) -> list[str]:
    return [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]


def load_sources(data_dir: str | Path) -> dict[str, Any]:
    d = Path(data_dir)
    return {
        "harmful": _read_jsonl(d / "harmful_prompts.jsonl"),
        "templates": _read_jsonl(d / "jailbreak_templates.jsonl"),
        "benign": _read_lines(d / "benign_prompts.txt"),
        "borderline": _read_lines(d / "borderline_prompts.txt"),
    }


def wrap_jailbreak(template: str, request: str, model_name: str = "SmolLM") -> str:
    return template.replace("{generator.name}", model_name).rstrip() + "\n\n" + request


def plan_generations(
    sources: dict[str, Any],
    n_harmful: int = 560,
    n_jailbreak: int = 96,
    n_refusal: int = 128,
    samples_benign: int = 2,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The list of (prompt, kind, split, ...) jobs to generate, deterministic for a seed."""
    rng = random.Random(seed)
    harmful = list(sources["harmful"])
    rng.shuffle(harmful)
    for h in harmful:
        h["split"] = split_of(h["prompt"])
    templates = sorted(sources["templates"], key=lambda t: t["name"])
    rng.shuffle(templates)
    test_templates = {t["name"] for t in templates[:TEST_TEMPLATES]}
    jobs: list[dict[str, Any]] = []

    def job(prompt: str, kind: str, split: str, request: str, **extra: Any) -> dict[str, Any]:
        return {"prompt": prompt, "request": request, "kind": kind, "split": split, **extra}

    plain = harmful[:n_harmful]
    for h in plain:
        jobs.append(job(h["prompt"], "harmful", h["split"], h["prompt"], source=h["source"], category=h["category"]))
    rest = harmful[n_harmful:]
    for i in range(n_jailbreak):
        t = templates[i % len(templates)]
        split = "test" if t["name"] in test_templates else "train"
        # the wrapped request comes from the same split, so a test row never shares a request with training
        pool = [h for h in rest if h["split"] == split]
        h = pool[(i * 7919) % len(pool)]
        jobs.append(
            job(
                wrap_jailbreak(t["template"], h["prompt"]),
                "jailbreak",
                split,
                h["prompt"],
                template=t["name"],
                category=h["category"],
                source=h["source"],
            )
        )
    for h in rest[n_jailbreak : n_jailbreak + n_refusal]:
        jobs.append(
            job(
                h["prompt"],
                "refusal_sys",
                h["split"],
                h["prompt"],
                system=REFUSE_SYSTEM,
                category=h["category"],
                source=h["source"],
            )
        )
    for kind, prompts in (("benign", sources["benign"]), ("borderline", sources["borderline"])):
        for p in prompts:
            for s in range(samples_benign):
                jobs.append(job(p, kind, split_of(p), p, sample=s))
    for kind, prompts in (("benign", EXTRA_BENIGN), ("borderline", EXTRA_BORDERLINE)):
        for p in prompts:
            jobs.append(job(p, kind, "train", p, extra=True))
    for i, j in enumerate(jobs):
        j["id"] = i
    return jobs


FORCED_PREFILLS = ("Sure, here is", "Sure! Here's how", "Of course. Step 1:", "Here is what you asked for:")


def plan_forced(jobs: Sequence[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Compliance-forced variants of the plain harmful jobs: the answer is prefilled with an affirmative
    opening, so the data holds crisp, on-topic compliance (SmolLM2's free answers are often incoherent)."""
    rng = random.Random(seed + 1)
    out = []
    for j in jobs:
        if j["kind"] == "harmful":
            out.append({**j, "id": 200000 + j["id"], "forced": True, "prefill": rng.choice(FORCED_PREFILLS)})
    return out


def render_jobs(jobs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Jobs with their chat prompt rendered by the default model's template (for ``gpu_generate.py``)."""
    from ..models import load_model

    lm = load_model()
    out = []
    for j in jobs:
        msgs = ([{"role": "system", "content": j["system"]}] if j.get("system") else []) + [
            {"role": "user", "content": j["prompt"]}
        ]
        out.append({**j, "rendered": lm.render(msgs) + j.get("prefill", "")})
    return out


def generate(
    jobs: Sequence[dict[str, Any]],
    out_path: Path,
    max_new_tokens: int = 72,
    batch_size: int = 48,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
) -> None:
    """Sample one answer per job with the default model; append to ``out_path`` (resumable)."""
    import torch
    from tqdm.auto import tqdm

    from ..models import load_model

    done = {r["id"] for r in _read_jsonl(out_path)} if out_path.exists() else set()
    todo = [j for j in jobs if j["id"] not in done]
    if not todo:
        return
    lm = load_model()
    tok = lm.tokenizer
    tok.padding_side = "left"

    def render(j: dict[str, Any]) -> str:
        msgs = ([{"role": "system", "content": j["system"]}] if j.get("system") else []) + [
            {"role": "user", "content": j["prompt"]}
        ]
        return lm.render(msgs) + j.get("prefill", "")  # compliance-forced jobs carry an answer prefill

    texts = {j["id"]: render(j) for j in todo}
    lengths = {i: len(lm.encode(t)) for i, t in texts.items()}
    todo.sort(key=lambda j: lengths[j["id"]])
    # batches of similar length waste little on padding; long (jailbreak) prompts get smaller batches
    batches: list[list[dict[str, Any]]] = []
    cur: list[dict[str, Any]] = []
    for j in todo:
        cap = batch_size if lengths[j["id"]] < 256 else max(8, batch_size // 4)
        if cur and len(cur) >= cap:
            batches.append(cur)
            cur = []
        cur.append(j)
    if cur:
        batches.append(cur)
    torch.manual_seed(seed)
    for batch in tqdm(batches, desc="generating", unit="batch"):
        enc = tok([texts[j["id"]] for j in batch], return_tensors="pt", padding=True, add_special_tokens=False)
        t0 = time.time()
        with torch.inference_mode():
            out = lm.model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                pad_token_id=tok.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        rows = []
        for j, ids in zip(batch, new, strict=True):
            text = (j.get("prefill", "") + lm.decode(ids.tolist())).strip()
            rows.append({**j, "response": text, "gen_seconds": round(time.time() - t0, 2)})
        _write_jsonl(out_path, rows, mode="a")


def auto_label(kind: str, response: str) -> int:
    """The automatic rule: harmful (or jailbreak-wrapped) request + non-refusal answer = unsafe (1);
    a refusal, or any answer to a benign/borderline request = safe (0)."""
    if kind in ("benign", "borderline"):
        return 0
    return 0 if is_refusal(response) else 1


def load_hand_labels(path: Path = HAND_LABELS) -> dict[tuple[str, str], int]:
    if not path.exists():
        return {}
    return {(r["prompt"], r["response"]): int(r["label"]) for r in _read_jsonl(path)}


def _topic(request: str) -> str:
    words = re.sub(r"[?.!]+$", "", request.strip()).split()
    return "this request" if len(words) > 12 else f'"{" ".join(words)}"'


def prefixes(response: str, cuts: Sequence[int] = (12, 24, 40)) -> list[str]:
    """Word-level prefixes of an answer (what the judge sees at earlier block boundaries)."""
    words = response.split(" ")
    return [" ".join(words[:c]) for c in cuts if c < len(words) - 4]


def assemble(
    generations: Sequence[dict[str, Any]],
    hand: dict[tuple[str, str], int] | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Labelled (prompt, response, label) rows with prefixes, templated refusals and cross pairs."""
    rng = random.Random(seed)
    hand = load_hand_labels() if hand is None else hand
    shared = {g["prompt"] for g in generations if not g.get("extra")}
    # an extra (train-only) prompt that also exists in the shared data could leak into training
    generations = [g for g in generations if not (g.get("extra") and g["prompt"] in shared)]
    rows: list[dict[str, Any]] = []
    for g in generations:
        resp = g["response"]
        if not resp.strip():
            continue
        key = (g["prompt"], resp)
        label = hand[key] if key in hand else auto_label(g["kind"], resp)
        base = {k: g[k] for k in ("prompt", "request", "kind", "split") if k in g}
        base["template"] = g.get("template")
        rows.append(
            {**base, "response": resp, "label": label, "origin": "hand" if key in hand else "auto", "part": "full"}
        )
        for p in prefixes(resp):
            # a prefix of a safe answer is safe; a prefix of an unsafe one is unsafe unless it is still a
            # refusal-looking opening (then it is labelled by what it says so far)
            plabel = 0 if (label == 0 or is_refusal(p)) else 1
            rows.append({**base, "response": p, "label": plabel, "origin": "prefix", "part": "prefix"})
    # templated refusals for every harmful/jailbreak request: the same prompt, a safe answer
    for g in generations:
        if g["kind"] in ("harmful", "jailbreak", "refusal_sys"):
            text = rng.choice(REFUSAL_TEMPLATES).replace("{topic}", _topic(g["request"]))
            rows.append(
                {
                    "prompt": g["prompt"],
                    "request": g["request"],
                    "kind": g["kind"],
                    "split": g["split"],
                    "template": g.get("template"),
                    "response": text,
                    "label": 0,
                    "origin": "template",
                    "part": "full",
                }
            )
    # cross pairs: harmful content stays unsafe under an innocent prompt (the answer decides, not the prompt).
    # Only hand-checked unsafe answers: the automatic rule also marks incoherent, harmless answers unsafe.
    unsafe = [r for r in rows if r["label"] == 1 and r["origin"] == "hand"]
    benign = [g for g in generations if g["kind"] == "benign"]
    for split in ("train", "test"):
        u = [r for r in unsafe if r["split"] == split]
        b = [g for g in benign if g["split"] == split]
        for r in rng.sample(u, min(len(u), len(b))):
            g = rng.choice(b)
            rows.append(
                {
                    "prompt": g["prompt"],
                    "request": g["request"],
                    "kind": "cross",
                    "split": split,
                    "template": None,
                    "response": r["response"],
                    "label": 1,
                    "origin": "cross",
                    "part": "full",
                }
            )
    # mismatched negatives: a harmless answer stays safe under any prompt. Harmful prompts paired with answers
    # written for benign prompts teach the head that the answer must *serve* the harmful request to be
    # unsafe (not merely sound factual or historical); benign prompts with other benign answers likewise.
    harmless = [r for r in rows if r["kind"] in ("benign", "borderline") and r["part"] == "full"]
    for g in generations:
        if g["kind"] not in ("harmful", "jailbreak", "benign", "borderline"):
            continue
        if g["kind"] in ("harmful", "jailbreak") and rng.random() > 0.5:
            continue
        pool = [r for r in harmless if r["split"] == g["split"] and r["request"] != g["request"]]
        if pool:
            r = rng.choice(pool)
            rows.append(
                {
                    "prompt": g["prompt"],
                    "request": g["request"],
                    "kind": g["kind"],
                    "split": g["split"],
                    "template": g.get("template"),
                    "response": r["response"],
                    "label": 0,
                    "origin": "mismatch",
                    "part": "full",
                }
            )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, help="folder with harmful_prompts.jsonl etc.")
    ap.add_argument("--out", default="/tmp/ig_cost_data", help="work folder for generations.jsonl, dataset.jsonl")
    ap.add_argument("--n-harmful", type=int, default=560)
    ap.add_argument("--n-jailbreak", type=int, default=96)
    ap.add_argument("--n-refusal", type=int, default=128)
    ap.add_argument("--samples-benign", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=72)
    ap.add_argument("--batch-size", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-generate", action="store_true", help="only (re)assemble from existing generations")
    ap.add_argument(
        "--jobs-only",
        action="store_true",
        help="only write jobs.jsonl with rendered prompts (for gpu_generate.py on an accelerator)",
    )
    ap.add_argument("--no-forced", action="store_true", help="skip the compliance-forced harmful answers")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gen_path = out / "generations.jsonl"
    if args.jobs_only or not args.skip_generate:
        jobs = plan_generations(
            load_sources(args.data_dir),
            args.n_harmful,
            args.n_jailbreak,
            args.n_refusal,
            args.samples_benign,
            args.seed,
        )
        if not args.no_forced:
            jobs = jobs + plan_forced(jobs, args.seed)
    if args.jobs_only:
        _write_jsonl(out / "jobs.jsonl", render_jobs(jobs))
        print(f"{len(jobs)} jobs -> {out / 'jobs.jsonl'}")
        return 0
    if not args.skip_generate:
        generate(jobs, gen_path, args.max_new_tokens, args.batch_size, seed=args.seed)
    rows = assemble(_read_jsonl(gen_path), seed=args.seed)
    _write_jsonl(out / "dataset.jsonl", rows)
    print(f"{len(rows)} rows -> {out / 'dataset.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
