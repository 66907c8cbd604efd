"""Checks a job can run before any compute is spent: every problem is an error naming the field and the fix.

A rule that needs only the spec lives in the API models (`kubedistill.api`, with its CEL twin in the CRD, so
that `kubectl apply` refuses it); these checks need the run, the models or the data themselves.
"""

from __future__ import annotations

import math
from typing import Any

from kubedistill.api.distillationjob import DistillationJobSpec
from kubedistill.artifacts import OutputLayout
from kubedistill.env import PipelineEnv
from kubedistill.errors import InputError
from kubedistill_jobs import cross_tokenizer, models


class PreflightError(InputError):
    """A job that cannot run as specified."""


def check_spec(spec: DistillationJobSpec, workers: int) -> None:
    """Checks on the spec against this run: `workers` is the run's Ray Train worker count, which
    `kubedistill run --workers` may set apart from `ray.workers.replicas`."""
    if spec.training.batch_size < workers:
        raise PreflightError(
            f"training.batchSize: {spec.training.batch_size} is smaller than the {workers} training workers; "
            "each worker needs at least one example per step"
        )
    keyed = [field for field, teacher in spec.all_teachers()
             if teacher.endpoint is not None and teacher.endpoint.api_key_secret_ref is not None]
    if keyed and not PipelineEnv.from_env().teacher_api_key:
        # In a cluster the operator sets it from the Secret; locally it is the user's to export. Without it every
        # request would go out unauthenticated, and an endpoint that allows that is not the one the spec names.
        raise PreflightError(
            f"{keyed[0]}.endpoint.apiKeySecretRef: names a key, but KUBEDISTILL_TEACHER_API_KEY is not set; "
            "export it (kubedistill run reads the key from it), or remove apiKeySecretRef for an endpoint "
            "without one"
        )


def check_models(spec: DistillationJobSpec, layout: OutputLayout) -> dict[str, Any]:
    """Teacher and student exist; a causal-lm student with another tokenizer gets a method that needs no shared
    vocabulary (`cross_tokenizer`, refused where the spec needs one); k ≤ vocabulary; and what the models must
    agree on (check_model_contracts). Returns the loaded teacher tokenizer (and the student's, when it has its
    own), where each model is, and `cross_tokenizer` (None, or the method used instead of logit KD)."""
    if spec.evaluation.tiers:  # the cascade's mid-size models score task.labels (only a local teacher has tiers)
        from kubedistill_jobs.tiers import check_tiers

        check_tiers(spec, layout)
    if spec.teacher is None:
        return _check_teachers(spec, layout)
    if spec.teacher.endpoint is not None:
        if spec.teacher.prompt is not None:  # before any request: first-token logprobs must tell labels apart
            from kubedistill_jobs import chat_teacher, llm_teacher

            chat_teacher.check_first_characters(llm_teacher.LabelPrompt.from_spec(spec).answers)
        return _check_endpoint_student(spec, layout)
    assert spec.teacher.uri is not None
    teacher_source = models.model_source(spec.teacher.uri, "teacher.uri", layout.downloads / "teacher")
    models.check_model_files(teacher_source, "teacher.uri", spec.teacher.gguf_file)
    try:
        teacher_tokenizer = models.load_tokenizer(teacher_source, spec.teacher.gguf_file)
    except Exception as error:
        raise PreflightError(f"teacher.uri: cannot load the tokenizer of {teacher_source}: {error}") from None
    found: dict[str, Any] = {"teacher_source": teacher_source, "teacher_tokenizer": teacher_tokenizer}
    if spec.teacher.prompt is not None:
        _check_language_model_teacher(spec, teacher_source, teacher_tokenizer)
    if spec.student.uri is not None:
        found["student_source"], student_tokenizer = _student_tokenizer(spec.student.uri, layout)
        found["student_tokenizer"] = student_tokenizer
        if spec.task.type == "causal-lm":  # another tokenizer: a method that needs no shared vocabulary
            found["cross_tokenizer"] = cross_tokenizer.choose_method(spec, found)
    if spec.task.type == "causal-lm":
        vocab = len(teacher_tokenizer)
        if spec.distillation.top_k > vocab:
            raise PreflightError(
                f"distillation.topK: {spec.distillation.top_k} is larger than the teacher's vocabulary ({vocab})"
            )
    check_model_contracts(spec, found)
    return found


def _student_tokenizer(uri: str, layout: OutputLayout) -> tuple[str, Any]:
    """Where a pretrained student (`student.uri`) is, fetched into the output's downloads, and its tokenizer."""
    source = models.model_source(uri, "student.uri", layout.downloads / "student")
    models.check_model_files(source, "student.uri")
    try:
        return source, models.load_tokenizer(source)
    except Exception as error:
        raise PreflightError(f"student.uri: cannot load the student's tokenizer: {error}") from None


def _check_endpoint_student(spec: DistillationJobSpec, layout: OutputLayout) -> dict[str, Any]:
    """With an endpoint teacher the student's tokenizer is the only one: it renders, tokenises and maps
    the teacher's tokens. k ≤ its vocabulary (the endpoint may return fewer candidates: they are padded)."""
    assert spec.student.uri is not None
    student_source, student_tokenizer = _student_tokenizer(spec.student.uri, layout)
    vocab = len(student_tokenizer)
    if spec.task.type == "causal-lm" and spec.distillation.top_k > vocab:
        raise PreflightError(
            f"distillation.topK: {spec.distillation.top_k} is larger than the student's vocabulary ({vocab})"
        )
    found = {"student_source": student_source, "student_tokenizer": student_tokenizer}
    check_model_contracts(spec, found)
    return found


def _check_teachers(spec: DistillationJobSpec, layout: OutputLayout) -> dict[str, Any]:
    """Several teachers: each is checked as if it were the only one (its errors name `teachers[i]`); the data
    is then tokenised with the student's tokenizer, as with any teacher without a graph."""
    from kubedistill_jobs import ensemble

    for index, (field, _) in enumerate(spec.all_teachers()):
        try:
            check_models(ensemble.member_spec(spec, index), layout.teacher_member(index))
        except (PreflightError, models.ModelError) as error:
            raise type(error)(str(error).replace("teacher.", f"{field}.", 1)) from None
    return _check_endpoint_student(spec, layout)


def model_configs(spec: DistillationJobSpec, found: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """{role: (the spec field naming it, config)} of every model the job trains with; a student derived
    from the teacher (student.architecture, student.fromTeacher) takes the teacher's positions and
    vocabulary (models.build_student copies its config), so it is checked as the teacher's."""
    configs: dict[str, tuple[str, Any]] = {}
    if "teacher_source" in found and spec.teacher is not None:
        configs["teacher"] = ("teacher.uri", models.load_config(found["teacher_source"], "teacher.uri",
                                                                spec.teacher.gguf_file))
        derived = "student.architecture" if spec.student.architecture is not None else "student.fromTeacher"
        if spec.student.uri is None:
            configs["student derived from the teacher"] = (derived, configs["teacher"][1])
    if "student_source" in found:
        configs["student"] = ("student.uri", models.load_config(found["student_source"], "student.uri"))
    return configs


def check_model_contracts(spec: DistillationJobSpec, found: dict[str, Any]) -> None:
    """What teacher and student must agree on, from their configs and tokenizers, before any compute."""
    configs = model_configs(spec, found)
    check_model_limits(spec, found, configs)
    check_student_layers(spec, configs)
    check_teacher_head(spec, configs)
    check_online_tokens(spec, found)
    check_trimmable_vocabulary(spec, found)


def check_trimmable_vocabulary(spec: DistillationJobSpec, found: dict[str, Any]) -> None:
    """student.fromTeacher.vocabulary corpus trims a byte-level BPE tokenizer (vocabulary.trim_tokenizer_json);
    another kind is refused here, before the teacher answers anything."""
    derived = spec.student.from_teacher
    teacher = found.get("teacher_tokenizer")
    if derived is None or derived.vocabulary != "corpus" or teacher is None:
        return
    from kubedistill_jobs import vocabulary

    kind = vocabulary.model_type(teacher)
    if kind != vocabulary.BPE:
        raise PreflightError(
            f"student.fromTeacher.vocabulary: corpus trims a BPE tokenizer (byte-level, as GPT-2, Llama 3 and "
            f"SmolLM use); the teacher's is {kind or 'not a fast tokenizer'}: use vocabulary teacher")


def check_model_limits(spec: DistillationJobSpec, found: dict[str, Any], configs: dict[str, tuple[str, Any]]) -> None:
    """task.maxLength fits every model's positions (a longer sequence dies inside the teacher's forward pass
    in Ray Data, or trains on positions the model never had); a causal-lm tokenizer's ids fit every model's
    embedding (models padded beyond the tokenizer are fine: logits are compared over the tokenizer's range)."""
    too_short = [(role, field, limit) for role, (field, config) in configs.items()
                 if (limit := models.position_limit(config)) is not None and spec.task.max_length > limit]
    if too_short:
        shortest = min(limit for _, _, limit in too_short)
        named = ", ".join(f"the {role}'s {limit} ({field})" for role, field, limit in too_short)
        raise PreflightError(
            f"task.maxLength: {spec.task.max_length} tokens is more than the models' positions: {named}; "
            f"set task.maxLength to at most {shortest} (longer texts are truncated to it)"
        )
    if spec.task.type != "causal-lm":
        return
    tokenizer = found.get("teacher_tokenizer") if "teacher_source" in found else found.get("student_tokenizer")
    for role, (field, config) in configs.items():
        # a student.uri reads its own tokenizer's ids (the same as the teacher's, or another: crossTokenizer)
        tokens = len(found["student_tokenizer"] if role == "student" else tokenizer)
        rows = models.embedding_rows(config)
        if rows is not None and rows < tokens:
            raise PreflightError(
                f"{field}: the {role} has {rows} token embeddings but its tokenizer {tokens} tokens: ids past "
                f"{rows - 1} have no embedding; use a model whose vocabulary covers its tokenizer"
            )


def _layers_and_heads(config: Any) -> tuple[int | None, int | None]:
    config = getattr(config, "text_config", None) or config
    layers, heads = getattr(config, "num_hidden_layers", None), getattr(config, "num_attention_heads", None)
    return (layers if isinstance(layers, int) else None), (heads if isinstance(heads, int) else None)


def check_student_layers(spec: DistillationJobSpec, configs: dict[str, tuple[str, Any]]) -> None:
    """student.fromTeacher.layers are the teacher's; compression.pruning fits the student it prunes (else
    both fail after training, minutes or hours in)."""
    teacher_layers, teacher_heads = _layers_and_heads(configs["teacher"][1]) if "teacher" in configs else (None,
                                                                                                          None)
    layers, heads = None, None
    if spec.student.from_teacher is not None and teacher_layers is not None:
        chosen = spec.student.from_teacher.layers or models.default_layers(teacher_layers)
        bad = [i for i in chosen if not 0 <= i < teacher_layers]
        if bad:
            raise PreflightError(f"student.fromTeacher.layers: {bad} outside the teacher's layers "
                                 f"0..{teacher_layers - 1}")
        layers, heads = len(chosen), teacher_heads
        width = getattr(configs["teacher"][1], "intermediate_size", None)
        narrower = spec.student.from_teacher.intermediate_size
        if narrower is not None and isinstance(width, int) and narrower > width:
            raise PreflightError(f"student.fromTeacher.intermediateSize: {narrower} is wider than the teacher's "
                                 f"feed-forward blocks ({width}); use at most {width}")
        if narrower is not None and not models.narrowable(configs["teacher"][1], spec.task.type):
            raise PreflightError("student.fromTeacher.intermediateSize: narrowing feed-forward blocks needs a "
                                 "Llama-style teacher (mlp.gate_proj, up_proj, down_proj); "
                                 f"{configs['teacher'][1].model_type} has none: remove intermediateSize")
    elif spec.student.architecture is not None:
        layers, heads = spec.student.architecture.num_layers, spec.student.architecture.num_attention_heads
    elif "student" in configs:
        layers, heads = _layers_and_heads(configs["student"][1])
    pruning = spec.compression.pruning
    if pruning.method == "layers" and layers is not None:
        keep = list(pruning.keep_layers or [])
        if any(not 0 <= i < layers for i in keep) or len(set(keep)) != len(keep):
            raise PreflightError(f"compression.pruning.keepLayers: {keep} must be distinct indices of the "
                                 f"student's {layers} layers (0..{layers - 1})")
    if pruning.method == "heads" and heads is not None and pruning.head_ratio is not None:
        remove = math.floor(heads * pruning.head_ratio)
        if remove < 1 or remove >= heads:
            raise PreflightError(f"compression.pruning.headRatio: {pruning.head_ratio} of the student's {heads} "
                                 f"heads removes {remove}; it must remove at least one head and keep at least one")


def check_teacher_head(spec: DistillationJobSpec, configs: dict[str, tuple[str, Any]]) -> None:
    """teacher.adapt.method none distils the teacher's own classifier: it must have one for task.labels, in
    their order (a missing head would be a random one, and the student would learn noise)."""
    if spec.task.type != "sequence-classification" or spec.teacher is None or spec.teacher.adapt.method != "none" \
            or "teacher" not in configs:
        return
    config = configs["teacher"][1]
    head = [config.id2label[i] for i in sorted(config.id2label)] if getattr(config, "id2label", None) else []
    trained = any(a.endswith("ForSequenceClassification") for a in getattr(config, "architectures", None) or [])
    if not trained or head != list(spec.task.labels or []):
        has = f"a head for {head}" if trained else "no classification head"
        raise PreflightError(
            f"teacher.adapt.method: none uses the teacher's own classifier, but it has {has}, not one for "
            f"task.labels {spec.task.labels} in that order; use method auto or head (fit one), or finetune"
        )


def check_online_tokens(spec: DistillationJobSpec, found: dict[str, Any]) -> None:
    """Online, the teacher runs on the student's token ids in every step: a student.uri with another tokenizer
    would feed the teacher ids that mean other words (causal-lm refuses that already: a shared vocabulary)."""
    if spec.distillation.teacher_mode != "online" or "student_tokenizer" not in found or \
            "teacher_tokenizer" not in found:
        return
    student, teacher = found["student_tokenizer"], found["teacher_tokenizer"]
    probe = "Knowledge distillation, 42 times: the student's tokens."
    if student.get_vocab() != teacher.get_vocab() or student(probe)["input_ids"] != teacher(probe)["input_ids"]:
        raise PreflightError(
            "distillation.teacherMode: online runs the teacher on the student's tokens, and student.uri tokenizes "
            "differently from the teacher; use teacherMode cached (the teacher reads the texts with its own "
            "tokenizer), or a student that shares the teacher's tokenizer"
        )


def _check_language_model_teacher(spec: DistillationJobSpec, source: str, tokenizer: Any) -> None:
    """`teacher.prompt` scores answers with a causal LM: the model must be one, and the labels' answers must
    be distinct token sequences for it."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from kubedistill_jobs import llm_teacher

    try:
        config = AutoConfig.from_pretrained(source, gguf_file=spec.teacher.gguf_file)
    except Exception as error:
        raise PreflightError(f"teacher.uri: cannot read the teacher's config from {source}: {error}") from None
    architectures = config.architectures or []
    causal = (any(a.endswith("ForCausalLM") for a in architectures) if architectures
              else config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    if not causal:
        raise PreflightError(
            f"teacher.prompt: needs a causal language model as teacher.uri, but {source} is "
            f"{', '.join(architectures) or config.model_type}; remove teacher.prompt to adapt an encoder "
            "teacher to the labels, or point teacher.uri at a causal LM"
        )
    llm_teacher.answer_ids(tokenizer, llm_teacher.LabelPrompt.from_spec(spec).answers)
