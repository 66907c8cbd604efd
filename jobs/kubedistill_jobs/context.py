"""What every stage of a run may use: the spec, the output, the models preflight found, the split, and the
hooks that show and report progress. Stages share state through this object only, never through each other.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kubedistill.api.distillationjob import DistillationJob, DistillationJobSpec
from kubedistill.artifacts import OutputLayout, Stage
from kubedistill_jobs import data
from kubedistill_jobs.storage import Output

if TYPE_CHECKING:
    from kubedistill_jobs.pipeline import Display

Progress = Callable[[int, int], None]
GENERATED_TRAIN = "train_generated.jsonl"  # prompt + an endpoint teacher's completion, per training row


@dataclass
class Context:
    """One run's shared state. `found` is what preflight loaded (tokenizers); `report` is the evaluation's
    report once the evaluate stage ran or finished earlier."""

    job: DistillationJob
    output: Output
    workers: int
    display: Display
    on_status: Callable[..., None]
    found: dict[str, Any] = field(default_factory=dict)
    _split: data.Split | None = field(default=None, init=False)
    _report: Any = field(default=None, init=False)

    @property
    def spec(self) -> DistillationJobSpec:
        return self.job.spec

    @property
    def layout(self) -> OutputLayout:
        return OutputLayout(self.output.local)

    @property
    def endpoint_teacher(self) -> bool:
        return self.spec.teacher is not None and self.spec.teacher.endpoint is not None

    @property
    def prompt_teacher(self) -> bool:
        """A language model labels the texts through `teacher.prompt` (no classifier weights to run later)."""
        return self.spec.teacher is not None and self.spec.teacher.prompt is not None

    @property
    def ensemble(self) -> bool:
        """Several teachers (`teachers`): their combined distributions teach (see kubedistill_jobs.ensemble)."""
        return self.spec.teachers is not None

    @property
    def teacher_has_graph(self) -> bool:
        """Whether later stages can run the teacher's weights as the task's model (not an endpoint, not an
        LLM labeller, not several teachers)."""
        return not (self.endpoint_teacher or self.prompt_teacher or self.ensemble)

    @property
    def tokenizer(self) -> Any:
        """The tokenizer the data is rendered and tokenised with: the teacher's, or the student's when the
        teacher is a remote endpoint or a language model labelling through a prompt."""
        return self.found["teacher_tokenizer"] if self.teacher_has_graph else self.found["student_tokenizer"]

    @property
    def model_version(self) -> str:
        path = self.layout.stages / "run.json"
        if path.is_file():
            return json.loads(path.read_text())["model_version"]
        version = f"{self.job.metadata.name}-{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"model_version": version}) + "\n")
        return version

    def marker(self, stage: Stage) -> dict[str, Any] | None:
        """A finished stage's marker (its result), or None."""
        path = self.layout.stage_marker(stage)
        return json.loads(path.read_text()) if path.is_file() else None

    def split(self) -> data.Split:
        """The split as the data stage wrote it; the training texts are an endpoint teacher's generations
        once it has written them (sequence-level KD)."""
        if self._split is None:
            generated = self.layout.data / GENERATED_TRAIN
            train = generated if generated.is_file() else self.layout.data / "train.jsonl"
            self._split = data.Split(train=data.read_jsonl(train),
                                     eval=data.read_jsonl(self.layout.data / "eval.jsonl"))
        return self._split

    def set_split(self, split: data.Split | None) -> None:
        """What a stage just wrote (None: read it again from the output)."""
        self._split = split

    def prompts(self) -> list[str]:
        """The training texts as the data stage wrote them (an endpoint teacher's prompts)."""
        return [r["text"] for r in data.read_jsonl(self.layout.data / "train.jsonl")]

    @property
    def report(self) -> Any:
        """kubedistill.report.Report from the evaluate stage, or None before it ran."""
        if self._report is None and self.layout.report_json.is_file():
            from kubedistill.report import load_report

            self._report = load_report(self.layout.report_json.read_text())
        return self._report

    @report.setter
    def report(self, report: Any) -> None:
        self._report = report
