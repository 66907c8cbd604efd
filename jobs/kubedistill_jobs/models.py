"""Locating, loading and building the teacher and the student.

Model URIs: `pkg://`, `file://`, `/abs`, `pvc://` (local folders), `hf://<id>` (the hub, where the cluster
reaches it) and `s3://` (downloaded once into the job's output with fsspec). A GGUF teacher
(`teacher.ggufFile`) is dequantised once and cached as an fp32 copy: reloading GGUF costs ~5× more.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from kubedistill.api.distillationjob import DistillationJobSpec, StudentArchitecture
from kubedistill.errors import InputError
from kubedistill.uris import field_errors, local_path, parse_uri

LAYER_KEY = re.compile(r"(\.layers?\.)(\d+)\.")
# The appended mean-pooling layer: its output projection is scaled so that the residual (the token's own
# state) weighs 1/POOL_SCALE against the mean; the LayerNorm that follows is scale-invariant.
POOL_SCALE = 1000.0


class ModelError(InputError):
    """A model that cannot be used as the spec asks; the message names the field and the fix."""


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def auto_model_class(task: str) -> Any:
    """The transformers Auto class of a task's models: `AutoModelForSequenceClassification` or
    `AutoModelForCausalLM`."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if task == "sequence-classification" else AutoModelForCausalLM


def model_source(uri: str, field: str, download_dir: Path | None = None) -> str:
    """A local folder or hub id that `from_pretrained` accepts; s3:// is downloaded into download_dir."""
    with field_errors(field, ModelError):
        parsed = parse_uri(uri)
    if parsed.scheme == "hf":
        return parsed.location
    if parsed.scheme == "s3":
        if download_dir is None:
            raise ModelError(f"{field}: s3 models need a download folder")
        if not (download_dir / "config.json").is_file():
            import fsspec

            fs, root = fsspec.core.url_to_fs(uri)
            fs.get(root.rstrip("/") + "/", str(download_dir), recursive=True)
        return str(download_dir)
    with field_errors(field, ModelError):
        path = local_path(uri)
    if not path.is_dir():
        raise ModelError(f"{field}: {uri}: no such model folder ({path})")
    return str(path)


def check_model_files(source: str, field: str, gguf_file: str | None = None) -> None:
    """Refuse a local folder that holds no loadable model, before any compute."""
    path = Path(source)
    if not path.is_absolute():
        return  # a hub id: checked when it is fetched
    if gguf_file:
        if not (path / gguf_file).is_file():
            ggufs = ", ".join(p.name for p in path.glob("*.gguf")) or "none"
            raise ModelError(f"teacher.ggufFile: {gguf_file!r} is not in {path} (GGUF files there: {ggufs})")
        return
    if not (path / "config.json").is_file():
        hint = " (it holds GGUF files: set teacher.ggufFile)" if any(path.glob("*.gguf")) else ""
        raise ModelError(f"{field}: {path} has no config.json: not a transformers model folder{hint}")


def takes_argument(model: Any, argument: str) -> bool:
    """Whether `model.forward` has the keyword `argument` (transformers' `logits_to_keep`, `position_ids`)."""
    import inspect

    return argument in inspect.signature(model.forward).parameters


def load_saved_model(path: Path, task: str) -> Any:
    """A model this pipeline saved (`teacher/`, `student/`), in fp32 and eval mode."""
    _quiet_transformers()
    return auto_model_class(task).from_pretrained(str(path), dtype="float32").eval()


def load_tokenizer(source: str, gguf_file: str | None = None) -> Any:
    """A model's tokenizer, with a pad token (the eos or unk token where it has none: batches are padded)."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file) if gguf_file else \
        AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


# RoBERTa-style position tables start after the padding index: `pad_token_id + 1` rows are no positions.
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "longformer")
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def load_config(source: str, field: str, gguf_file: str | None = None) -> Any:
    """The model's config (no weights): what preflight compares before any compute."""
    from transformers import AutoConfig

    _quiet_transformers()
    try:
        return AutoConfig.from_pretrained(source, gguf_file=gguf_file) if gguf_file else \
            AutoConfig.from_pretrained(source)
    except Exception as error:
        raise ModelError(f"{field}: cannot read the model's config in {source}: {error}") from None


def position_limit(config: Any) -> int | None:
    """Tokens one sequence may hold: the model's position table; None when its config names none."""
    config = getattr(config, "text_config", None) or config  # multimodal configs hold the text model's
    for key in POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            if getattr(config, "model_type", None) in OFFSET_POSITIONS:
                return value - ((getattr(config, "pad_token_id", None) or 0) + 1)
            return value
    return None


def embedding_rows(config: Any) -> int | None:
    """Rows of the model's token embedding (its output logits' width for a causal LM): may be padded
    beyond the tokenizer's size, to a multiple of 8 or 64, for speed."""
    config = getattr(config, "text_config", None) or config
    value = getattr(config, "vocab_size", None)
    return value if isinstance(value, int) and value > 0 else None


# ---------------------------------------------------------------- classification teachers


def _sentence_transformer_pooling(source: str) -> str | None:
    """'mean' / 'cls' / ... for a sentence-transformers folder, None for a plain transformers model."""
    config = Path(source) / "1_Pooling" / "config.json"
    if not config.is_file():
        return None
    modes = json.loads(config.read_text())
    for mode in ("mean_tokens", "cls_token", "max_tokens"):
        if modes.get(f"pooling_mode_{mode}"):
            return mode.split("_")[0]
    return None


def append_mean_pooling_layer(model: Any) -> None:
    """Append an encoder layer whose output at every position (so also at [CLS]) is LayerNorm(mean of the
    previous layer's states over the non-padding tokens).

    Sentence-transformers encoders are trained for mean pooling, while `*ForSequenceClassification` pools
    the [CLS] state: this layer makes the saved teacher compute the pooling it was trained for, with
    nothing but standard BERT weights (so it loads with AutoModelForSequenceClassification).
    Query and key are 0, so attention is uniform over the tokens the attention mask keeps; value is the
    identity; the output projection scales the mean by POOL_SCALE so the residual becomes negligible
    before the scale-invariant LayerNorm; the feed-forward block outputs 0.
    """
    import torch

    config = model.config
    encoder = model.base_model.encoder
    layer = type(encoder.layer[0])(config)
    hidden = config.hidden_size
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.zero_()
        layer.attention.self.value.weight.copy_(torch.eye(hidden))
        layer.attention.output.dense.weight.copy_(torch.eye(hidden) * POOL_SCALE)
        layer.attention.output.LayerNorm.weight.fill_(1.0)
        layer.output.LayerNorm.weight.fill_(1.0)
    encoder.layer.append(layer)
    config.num_hidden_layers = len(encoder.layer)


def load_classification_teacher(source: str, labels: list[str]) -> tuple[Any, bool]:
    """The teacher as `AutoModelForSequenceClassification` with the task's labels, and whether it already
    had a trained head for them (a checkpoint whose id2label names exactly these labels)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    _quiet_transformers()
    config = AutoConfig.from_pretrained(source)
    existing = [config.id2label[i] for i in sorted(config.id2label)] if getattr(config, "id2label", None) else []
    has_head = existing == list(labels) and bool(getattr(config, "architectures", None)) and any(
        a.endswith("ForSequenceClassification") for a in config.architectures
    )
    model = AutoModelForSequenceClassification.from_pretrained(
        source,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        ignore_mismatched_sizes=True,
        torch_dtype=torch.float32,
    )
    if not has_head and _sentence_transformer_pooling(source) == "mean" and config.model_type == "bert":
        append_mean_pooling_layer(model)
    return model.eval(), has_head


# ---------------------------------------------------------------- causal-lm teachers


def load_causal_teacher(source: str, gguf_file: str | None) -> Any:
    """The causal LM teacher in fp32 (a GGUF checkpoint dequantised)."""
    import torch
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    kwargs: dict[str, Any] = {"torch_dtype": torch.float32}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if gguf_file:  # the weights are dequantised fp32 now: save and load them as a plain model
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.is_quantized = False
    return model.eval()


# ---------------------------------------------------------------- students


def default_layers(num_teacher_layers: int) -> list[int]:
    """DistilBERT's choice: every other layer of the teacher."""
    return list(range(0, num_teacher_layers, 2))


def _remap_layers(state: dict[str, Any], layers: list[int]) -> dict[str, Any]:
    new_index = {old: new for new, old in enumerate(layers)}
    out = {}
    for key, value in state.items():
        match = LAYER_KEY.search(key)
        if match is None:
            out[key] = value
        elif int(match.group(2)) in new_index:
            out[LAYER_KEY.sub(f"{match.group(1)}{new_index[int(match.group(2))]}.", key, count=1)] = value
    return out


def _student_config(teacher_config: Any, arch: StudentArchitecture) -> Any:
    config = teacher_config.__class__.from_dict(teacher_config.to_dict())
    config.num_hidden_layers = arch.num_layers
    config.hidden_size = arch.hidden_size
    config.num_attention_heads = arch.num_attention_heads
    config.intermediate_size = arch.intermediate_size or 4 * arch.hidden_size
    if hasattr(config, "num_key_value_heads"):
        config.num_key_value_heads = arch.num_attention_heads
    if hasattr(config, "head_dim"):
        config.head_dim = arch.hidden_size // arch.num_attention_heads
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = list(config.layer_types)[: arch.num_layers]
    config.architectures = None
    return config


def _project_embeddings(student: Any, teacher: Any) -> None:
    """Initialise the student's embeddings from the teacher's, projected onto their top principal
    components (when narrower) or copied (same width): a fresh student then starts from the teacher's
    geometry of its shared vocabulary instead of noise, which matters on small datasets."""
    import torch

    t_embeddings, s_embeddings = teacher.get_input_embeddings().weight, student.get_input_embeddings().weight
    if t_embeddings.shape[0] != s_embeddings.shape[0]:
        return
    width = s_embeddings.shape[1]
    if width > t_embeddings.shape[1]:
        return
    with torch.no_grad():
        weight = t_embeddings.float()
        mean = weight.mean(0, keepdim=True)
        _, _, v = torch.linalg.svd(weight - mean, full_matrices=False)
        basis = v[:width].T  # (H_teacher, H_student)
        scale = weight.std() / ((weight - mean) @ basis).std().clamp_min(1e-8)
        projected = ((weight - mean) @ basis) * scale
        s_embeddings.copy_(projected.to(s_embeddings.dtype))
        # Other embedding tables of the same residual space (BERT positions, token types), same basis.
        t_modules = dict(teacher.base_model.named_modules())
        for name, module in student.base_model.named_modules():
            other = t_modules.get(name)
            if (isinstance(module, torch.nn.Embedding) and isinstance(other, torch.nn.Embedding)
                    and module is not student.get_input_embeddings()
                    and module.weight.shape[0] <= other.weight.shape[0]):
                rows = other.weight[: module.weight.shape[0]].float()
                module.weight.copy_((((rows - rows.mean(0, keepdim=True)) @ basis) * scale).to(module.weight.dtype))


def build_student(spec: DistillationJobSpec, teacher: Any, *, download_dir: Path | None = None,
                  calibration: dict[str, Any] | None = None) -> Any:
    """The untrained student: a fresh architecture (embeddings from the teacher's), a subset of the
    teacher's layers (derive_student; `calibration` token arrays rank feed-forward channels), or a pretrained
    model; for classification with the task's labels."""
    import torch

    _quiet_transformers()
    classification = spec.task.type == "sequence-classification"
    auto = auto_model_class(spec.task.type)
    label_kwargs: dict[str, Any] = {}
    if classification:
        labels = spec.task.labels or []
        label_kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                        "label2id": {n: i for i, n in enumerate(labels)}}
    student_spec = spec.student
    torch.manual_seed(spec.training.seed)
    if student_spec.uri is not None:
        source = model_source(student_spec.uri, "student.uri", download_dir)
        check_model_files(source, "student.uri")
        return auto.from_pretrained(source, ignore_mismatched_sizes=True, torch_dtype=torch.float32, **label_kwargs)
    if student_spec.architecture is not None:
        config = _student_config(teacher.config, student_spec.architecture)
        for key, value in label_kwargs.items():
            setattr(config, key, value)
        student = auto.from_config(config)
        _project_embeddings(student, teacher)
        return student
    assert student_spec.from_teacher is not None
    return derive_student(teacher, student_spec.from_teacher.layers, student_spec.from_teacher.intermediate_size,
                          auto=auto, calibration=calibration)


def derive_student(teacher: Any, layers: list[int] | None, intermediate_size: int | None = None, *,
                   auto: Any = None, calibration: dict[str, Any] | None = None) -> Any:
    """A student made of the teacher's embeddings, final norm, head and the chosen `layers` (default: every
    other one), in order; with `intermediate_size`, each feed-forward block keeps only that many channels,
    the most important ones (feedforward_importance). Tied input and output embeddings stay tied.

    `calibration` ({"input_ids", "attention_mask"}, (N, L) arrays) measures activation importance; without it
    the channels' weight norms decide. Raises ModelError (naming student.fromTeacher) for indices outside
    the teacher or a width it cannot be cut to."""
    auto = auto or type(teacher)
    n_teacher = teacher.config.num_hidden_layers
    layers = list(layers or default_layers(n_teacher))
    bad = [i for i in layers if not 0 <= i < n_teacher]
    if bad:
        raise ModelError(f"student.fromTeacher.layers: {bad} outside the teacher's layers 0..{n_teacher - 1}")
    config = teacher.config.__class__.from_dict(teacher.config.to_dict())
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in layers]
    state = _remap_layers(teacher.state_dict(), layers)
    if intermediate_size is not None:
        width = getattr(teacher.config, "intermediate_size", None)
        if not isinstance(width, int) or not _gated_mlps(teacher):
            raise ModelError("student.fromTeacher.intermediateSize: narrowing feed-forward blocks needs a Llama-style "
                             f"teacher (mlp.gate_proj, up_proj, down_proj); {teacher.config.model_type} has none: "
                             "remove intermediateSize")
        if intermediate_size > width:
            raise ModelError(f"student.fromTeacher.intermediateSize: {intermediate_size} is wider than the teacher's "
                             f"feed-forward blocks ({width}); use at most {width}")
        importance = feedforward_importance(teacher, calibration)
        kept = {new: importance[old].topk(intermediate_size).indices.sort().values for new, old in enumerate(layers)}
        state = _narrow_mlps(state, kept)
        config.intermediate_size = intermediate_size
    student = auto.from_config(config) if hasattr(auto, "from_config") else auto(config)  # Auto or concrete class
    missing, _ = student.load_state_dict(state, strict=False)
    missing = [k for k in missing if not _tied_head(student, k)]
    if missing:
        raise ModelError(f"student.fromTeacher: could not map teacher weights onto the student: {missing[:5]}")
    return student


def _tied_head(model: Any, key: str) -> bool:
    """Whether `key` is an output embedding tied to the input embedding (it is loaded through that one)."""
    output = model.get_output_embeddings()
    return output is not None and key.startswith("lm_head.") and \
        output.weight is model.get_input_embeddings().weight


def _gated_mlps(model: Any) -> list[Any]:
    """The Llama-style feed-forward block of every layer (gate_proj, up_proj, down_proj), or [] when the model
    has other blocks."""
    layers = getattr(model.base_model, "layers", None)
    mlps = [getattr(layer, "mlp", None) for layer in layers or []]
    ok = mlps and all(all(hasattr(m, n) for n in ("gate_proj", "up_proj", "down_proj")) for m in mlps)
    return mlps if ok else []


def narrowable(config: Any, task: str) -> bool:
    """Whether a model of this config has Llama-style feed-forward blocks that derive_student can narrow: built
    on the meta device (no weights, no memory) and looked at."""
    import torch

    _quiet_transformers()
    with torch.device("meta"):
        return bool(_gated_mlps(auto_model_class(task).from_config(config)))


def feedforward_importance(model: Any, calibration: dict[str, Any] | None = None) -> list[Any]:
    """Importance of each feed-forward channel, per layer (a list of (I,) tensors): the L2 norm over the
    calibration tokens of the channel's activation (the input of down_proj), as Minitron ranks neurons; without
    calibration data, |gate_j| · |up_j| · |down_:,j|, the channel's weight norms."""
    import torch

    mlps = _gated_mlps(model)
    if calibration is None:
        with torch.no_grad():
            return [m.gate_proj.weight.norm(dim=1) * m.up_proj.weight.norm(dim=1) * m.down_proj.weight.norm(dim=0)
                    for m in mlps]
    ids = torch.as_tensor(calibration["input_ids"], dtype=torch.long)
    mask = torch.as_tensor(calibration["attention_mask"], dtype=torch.long)
    sums = [torch.zeros(m.down_proj.in_features) for m in mlps]
    current: dict[str, Any] = {}

    def hook(index: int) -> Any:
        def record(_module: Any, args: tuple[Any, ...]) -> None:
            activation = args[0].float() * current["mask"]  # (B, L, I), padding zeroed
            sums[index] += activation.pow(2).sum(dim=(0, 1))
        return record

    handles = [m.down_proj.register_forward_pre_hook(hook(i)) for i, m in enumerate(mlps)]
    try:
        with torch.no_grad():
            for start in range(0, len(ids), 8):
                batch_mask = mask[start:start + 8]
                current["mask"] = batch_mask[..., None].float()
                model(input_ids=ids[start:start + 8], attention_mask=batch_mask)
    finally:
        for handle in handles:
            handle.remove()
    return [total.sqrt() for total in sums]


def _narrow_mlps(state: dict[str, Any], kept: dict[int, Any]) -> dict[str, Any]:
    """The state with each layer's feed-forward block cut to the `kept` channel indices of that layer."""
    out = dict(state)
    for key, value in state.items():
        match = LAYER_KEY.search(key)
        if match is None or ".mlp." not in key or int(match.group(2)) not in kept:
            continue
        index = kept[int(match.group(2))]
        if key.endswith(("gate_proj.weight", "up_proj.weight", "gate_proj.bias", "up_proj.bias")):
            out[key] = value[index].clone()
        elif key.endswith("down_proj.weight"):
            out[key] = value[:, index].clone()
    return out


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def save_tokenizer(tokenizer: Any, folder: Path) -> None:
    """`tokenizer.save_pretrained`, without the padding and truncation that the last padded batch call left on a
    fast tokenizer's backend: saved, they would pad and cut every prompt a server encodes with tokenizer.json."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.no_padding()
        backend.no_truncation()
    tokenizer.save_pretrained(folder)


def save_model(model: Any, tokenizer: Any, path: Path) -> None:
    """safetensors + config + tokenizer, written to a temporary folder first so a crash leaves no half model."""
    import shutil

    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    save_tokenizer(tokenizer, tmp)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
