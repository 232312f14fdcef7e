"""Evaluation data sources: imagefolder + metadata.jsonl, save_to_disk, COCO json; ids, columns, bad samples."""

import json

import datasets
import numpy as np
import pytest
from PIL import Image

from hf_sparse_attack.evaluation.harness.data import BadSample, CocoDataset, Columns, DataError, HFDataset, load_hf

SIZE = (12, 16)  # height, width
BOXES = [[[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 10.0, 6.0]], [], [[2.0, 2.0, 5.0, 5.0]]]
LABELS = [[2, 0], [], [1]]


def photo(i):
    return np.full((*SIZE, 3), 40 * i, dtype=np.uint8)


def pil(i):
    return Image.fromarray(photo(i))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    with open(root / "metadata.jsonl", "w") as f:
        for i, (boxes, labels) in enumerate(zip(BOXES, LABELS)):
            Image.fromarray(photo(i)).save(root / f"{i}.png")
            f.write(json.dumps({"file_name": f"{i}.png", "objects": {"bbox": boxes, "category": labels}}) + "\n")
    return root


@pytest.fixture(scope="module")
def coco_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    (root / "images").mkdir()
    images, annotations = [], []
    for n, image_id in enumerate([30, 10, 20]):  # ids out of file order: samples come in id order
        Image.fromarray(photo(n)).save(root / "images" / f"img{image_id}.jpg", quality=95)
        images.append({"id": image_id, "file_name": f"img{image_id}.jpg", "height": SIZE[0], "width": SIZE[1]})
        for box, label in zip(BOXES[n], LABELS[n]):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "bbox": box,
                                "category_id": label + 1, "area": 7.0, "iscrowd": int(label == 0)})
    categories = [{"id": c + 1, "name": f"thing{c}"} for c in range(3)]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path, root / "images"


def test_image_folder_with_metadata(image_folder, tmp_path):
    data = load_hf("detection", str(image_folder), split="train", cache_dir=str(tmp_path))
    assert data.ids == [0, 1, 2]
    for position, (boxes, labels) in enumerate(zip(BOXES, LABELS)):
        sample = data[position]
        assert sample.id == position and sample.size == SIZE and sample.image.mode == "RGB"
        assert sample.annotation["boxes"].tolist() == (boxes or np.zeros((0, 4)).tolist())
        assert sample.annotation["labels"].tolist() == labels
        assert sample.annotation["iscrowd"].tolist() == [0] * len(labels)
    limited = load_hf("detection", str(image_folder), split="train", max_eval_samples=2, cache_dir=str(tmp_path))
    assert limited.ids == [0, 1]
    only = load_hf("detection", str(image_folder), split="validation", cache_dir=str(tmp_path))  # its one split
    assert only.description["split"] == "train" and len(only) == len(data)


def test_save_to_disk_dataset_and_dict(tmp_path):
    features = datasets.Features({"img": datasets.Image(), "mask": datasets.Image()})
    maps = [Image.fromarray(np.full(SIZE, v, np.uint8), mode="L") for v in (1, 255)]
    dataset = datasets.Dataset.from_dict({"img": [photo(0), photo(1)], "mask": maps}, features=features)
    dataset.save_to_disk(tmp_path / "single")
    datasets.DatasetDict({"test": dataset}).save_to_disk(tmp_path / "dict")
    columns = Columns(image="img", label="mask")
    single = load_hf("segmentation", str(tmp_path / "single"), columns=columns)
    split = load_hf("segmentation", str(tmp_path / "dict"), split="test", columns=columns)
    for data in (single, split):
        assert data[1].annotation.dtype == np.uint8 and data[1].annotation.shape == SIZE
        assert int(data[1].annotation[0, 0]) == 255
    with pytest.raises(DataError, match="--label_column_name"):
        load_hf("segmentation", str(tmp_path / "single"), columns=Columns(image="img"))
    with pytest.raises(DataError, match=r"splits: \['test'\]"):
        load_hf("segmentation", str(tmp_path / "dict"), split="validation", columns=columns)


def test_list_of_objects_and_xyxy_boxes():
    rows = datasets.Dataset.from_list([
        {"image": pil(0),
         "objects": [{"box": [1.0, 2.0, 4.0, 6.0], "cat": 1}, {"box": [0.0, 0.0, 2.0, 2.0], "cat": 0}]},
        {"image": pil(1), "objects": []},
    ])
    data = HFDataset(rows, "detection", Columns(bbox="box", category="cat", bbox_format="xyxy"))
    assert data[0].annotation["boxes"].tolist() == [[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 2.0, 2.0]]
    assert data[0].annotation["labels"].tolist() == [1, 0]
    assert data[1].annotation["boxes"].shape == (0, 4)


def test_bad_samples_are_reported_not_fatal():
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    rows = datasets.Dataset.from_dict(
        {"image": [photo(0), {"bytes": b"not an image", "path": None}, photo(2)], "label": [3, 1, -1]},
        features=features,
    )
    data = HFDataset(rows, "classification")
    assert data[0].annotation == 3
    with pytest.raises(BadSample, match="row 1 could not be read"):
        data[1]
    with pytest.raises(BadSample, match="unlabelled"):
        data[2]
    rgb_map = datasets.Dataset.from_dict({"image": [photo(0)], "label": [photo(1)]},
                                         features=datasets.Features({"image": datasets.Image(),
                                                                     "label": datasets.Image()}))
    with pytest.raises(BadSample, match="single-channel"):
        HFDataset(rgb_map, "segmentation")[0]
    bad_boxes = datasets.Dataset.from_list([{"image": pil(0), "objects": {"bbox": [[0.0, 0.0, float("nan"), 1.0]],
                                                                          "category": [0]}}])
    with pytest.raises(BadSample, match="NaN"):
        HFDataset(bad_boxes, "detection")[0]


def test_unusable_datasets_raise_data_errors(tmp_path):
    empty = datasets.Dataset.from_dict({"image": [], "label": []})
    with pytest.raises(DataError, match="no samples"):
        HFDataset(empty, "classification")
    with pytest.raises(DataError, match="not a directory"):
        load_hf("classification", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="unknown bbox format"):
        Columns(bbox_format="cxcywh")


def test_coco_json(coco_files):
    annotation_file, image_dir = coco_files
    data = CocoDataset(annotation_file, image_dir)
    assert data.ids == [10, 20, 30]
    sample = data[2]  # image id 30 holds the first boxes
    assert sample.id == 30 and sample.size == SIZE
    assert sample.annotation["boxes"].tolist() == BOXES[0]
    assert sample.annotation["labels"].tolist() == [3, 1]  # category ids
    assert sample.annotation["iscrowd"].tolist() == [0, 1] and sample.annotation["area"].tolist() == [7.0, 7.0]
    names = {5: "Thing0", 6: "thing_1", 7: "THING2"}  # the same classes under other ids: matched by name
    by_name = CocoDataset(annotation_file, image_dir, max_eval_samples=1, id2label=names)
    assert by_name.ids == [10] and by_name[0].annotation["labels"].tolist() == []
    assert by_name.description["category_mapping"] == "name"
    assert CocoDataset(annotation_file, image_dir, id2label=names)[2].annotation["labels"].tolist() == [7, 5]
    zero_based = {0: "thing0", 1: "thing1", 2: "thing2"}  # the file's ids are 1-based: auto maps by name
    assert CocoDataset(annotation_file, image_dir, id2label=zero_based)[2].annotation["labels"].tolist() == [2, 0]
    with pytest.raises(DataError, match=r"are not the model's labels \['thing0', 'thing1'\] \('thing2' not found\); "
                       "pass --category_mapping id"):
        CocoDataset(annotation_file, image_dir, id2label={0: "thing0", 1: "thing1"})
    with pytest.raises(DataError, match=r"COCO category ids \[3\] are not class ids of the model \(0..2\).*"
                       "--category_mapping name"):
        CocoDataset(annotation_file, image_dir, id2label={0: "a", 1: "b", 2: "c"}, mapping="id")
    (image_dir / "img20.jpg").write_bytes(b"truncated")
    with pytest.raises(BadSample, match="img20.jpg"):
        data[1]
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(image_dir / "img20.jpg")
    with pytest.raises(BadSample, match="5x5 but the annotation file says 12x16"):
        data[1]
    with pytest.raises(DataError, match="does not exist"):
        CocoDataset(annotation_file.parent / "nothing.json", image_dir)


def test_an_image_folder_of_one_split_is_read_whatever_split_is_asked(tmp_path):
    for name in ("circle", "square"):
        (tmp_path / "train" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / name / "0.png")
    data = load_hf("classification", str(tmp_path))  # asks for "validation", the default
    assert len(data) == 2 and data.description["split"] == "train"
    assert data.class_names() == {0: "circle", 1: "square"}
    (tmp_path / "test" / "circle").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "test" / "circle" / "0.png")
    with pytest.raises(DataError, match=r"split 'validation' is not in the image folder .*splits: \['test', 'train'\]"):
        load_hf("classification", str(tmp_path))
