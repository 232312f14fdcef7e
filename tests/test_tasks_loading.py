"""load_task: adapter choice from the config, frozen eval-mode models, options, and every load error's message."""

import json
import time

import numpy as np
import pytest
import torch
import transformers as hf
from tiny_models import tiny_conditional_detr, tiny_detr, tiny_segformer, tiny_vit

from hf_sparse_attack.tasks import (
    SUPPORTED,
    ClassificationObjective,
    ClassificationOptions,
    DetectionObjective,
    DetectionOptions,
    SegmentationObjective,
    TaskLoadError,
    load_task,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "vit": tiny_vit(root),
        "detr": tiny_detr(root),
        "conditional_detr": tiny_conditional_detr(root),
        "segformer": tiny_segformer(root),
    }


@pytest.mark.parametrize(
    "family, adapter, task",
    [
        ("vit", ClassificationObjective, "classification"),
        ("detr", DetectionObjective, "detection"),
        ("conditional_detr", DetectionObjective, "detection"),
        ("segformer", SegmentationObjective, "segmentation"),
    ],
)
def test_adapter_comes_from_the_config_and_the_model_is_frozen(dirs, family, adapter, task):
    objective = load_task(dirs[family])
    assert type(objective) is adapter and objective.task == task
    assert objective.name_or_path == str(dirs[family]) and objective.processor is not None
    assert not objective.model.training
    assert not any(p.requires_grad for p in objective.model.parameters())
    assert next(objective.model.parameters()).dtype == torch.float32
    assert type(load_task(str(dirs[family]), task=task)) is adapter
    assert objective.model.config.model_type in SUPPORTED[task]


def test_options_dtype_and_device(dirs):
    objective = load_task(dirs["detr"], loss="vanish", score_threshold=0.3, iou_threshold=0.7)
    assert objective.options == DetectionOptions(loss="vanish", score_threshold=0.3, iou_threshold=0.7)
    objective = load_task(dirs["vit"], dtype=torch.float64, device="cpu", loss="dlr", targeted=True)
    assert objective.options == ClassificationOptions(loss="dlr", targeted=True)
    assert next(objective.model.parameters()).dtype == torch.float64
    x, labels = objective.prepare(np.zeros((20, 20, 3), dtype=np.uint8), annotations=3)
    assert objective.loss(x, labels).dtype == torch.float32 and labels.tolist() == [3]


def test_missing_local_path(tmp_path):
    with pytest.raises(TaskLoadError, match=r"model directory './no/such/model' does not exist"):
        load_task("./no/such/model")
    with pytest.raises(TaskLoadError, match=r"does not exist .*check the path"):
        load_task(tmp_path / "missing")


def test_paths_that_are_not_model_directories(tmp_path):
    with pytest.raises(TaskLoadError, match="without config.json"):
        load_task(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(TaskLoadError, match="is a file"):
        load_task(tmp_path / "weights.bin")


def test_offline_hub_name_fails_at_once_and_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(
        TaskLoadError, match=r"offline mode is on.*hf download nobody/no-such-model.*local copy.*unset HF_HUB_OFFLINE"
    ):
        load_task("nobody/no-such-model")
    assert time.monotonic() - start < 10


def test_unreachable_hub_fails_within_seconds_unless_the_cache_has_the_model(monkeypatch, dirs):
    import huggingface_hub

    from hf_sparse_attack.tasks import loading

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    start = time.monotonic()
    with pytest.raises(TaskLoadError, match=r"cannot reach the Hugging Face Hub to get 'nobody/no-such-model' "
                       r"\(127.0.0.1:9: .*not in the cache"):
        load_task("nobody/no-such-model")
    assert time.monotonic() - start < loading.HUB_CONNECT_TIMEOUT + 5
    cached = {"nobody/cached-model": str(dirs["vit"] / "config.json")}
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: cached.get(repo))
    assert loading._use_cache_only("nobody/cached-model", None)  # read from the cache at once, no retries


def test_a_model_of_another_task_is_named_as_such(dirs):
    from hf_sparse_attack.tasks.loading import WrongTaskError

    with pytest.raises(WrongTaskError, match=r"is an image classifier \(ViTForImageClassification\), not an object "
                       "detector") as error:
        load_task(dirs["vit"], task="detection")
    assert error.value.found == "classification"


def test_unsupported_architectures_list_what_is_supported(dirs, tmp_path):
    text_model = hf.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)
    text_model.save_pretrained(tmp_path)
    with pytest.raises(
        TaskLoadError, match=r"'bert'.*no adapter supports; supported model types: classification: .*vit"
    ):
        load_task(tmp_path)
    with pytest.raises(  # a checkpoint without a head: the type decides
        TaskLoadError, match=r"'vit', which the detection adapter does not support; .*conditional_detr, .*detr"
    ):
        hf.ViTConfig().save_pretrained(tmp_path / "bare")
        load_task(tmp_path / "bare", task="detection")
    headless = tmp_path / "headless"
    hf.ViTConfig(architectures=["ViTModel"]).save_pretrained(headless)
    with pytest.raises(
        TaskLoadError, match=r"is a ViTModel, which no adapter supports.*pass task= one of \['classification'\]"
    ):
        load_task(headless)
    with pytest.raises(TaskLoadError, match=r"unknown task 'captioning'"):
        load_task(dirs["vit"], task="captioning")


def test_remote_code_needs_trust(tmp_path):
    config = {
        "model_type": "my_sparse_net",
        "architectures": ["MySparseNetForImageClassification"],
        "auto_map": {"AutoConfig": "configuration.MyConfig", "AutoModelForImageClassification": "modeling.MyNet"},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(TaskLoadError, match=r"needs model code from its repository .*pass trust_remote_code=True"):
        load_task(tmp_path)


def test_bad_options(dirs):
    with pytest.raises(TaskLoadError, match=r"classification task does not take the option\(s\) score_threshold"):
        load_task(dirs["vit"], score_threshold=0.5)
    with pytest.raises(TaskLoadError, match=r"detection task does not take the option\(s\) targeted"):
        load_task(dirs["detr"], targeted=True)
    with pytest.raises(TaskLoadError, match=r"unknown detection loss 'margin'.*hungarian"):
        load_task(dirs["detr"], loss="margin")
    with pytest.raises(TaskLoadError, match=r"adv_threshold must be in \(0.0, 1.0\]"):
        load_task(dirs["segformer"], adv_threshold=0)
