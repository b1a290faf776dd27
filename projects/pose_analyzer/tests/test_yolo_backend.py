"""YOLO backend: keypoint mapping on constructed outputs, the real architecture batched."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pose_analyzer.detectors.yolo_backend import (
    COCO17,
    YoloDetector,
    coco17_to_canonical,
    common_shape_batch,
    resolve_device,
    results_to_people,
)
from pose_analyzer.keypoints import JOINT_INDEX, JOINTS, NUM_JOINTS, ModelNotFoundError

torch = pytest.importorskip("torch")

ABSENT = ("left_heel", "right_heel", "left_foot_index", "right_foot_index")


def _coco(n: int) -> np.ndarray:
    """(n, 17, 3): x = 100 * person + joint, y = 10 * joint, conf = joint / 20."""
    kp = np.zeros((n, 17, 3), dtype=np.float32)
    kp[:, :, 0] = 100 * np.arange(n)[:, None] + np.arange(17)[None, :]
    kp[:, :, 1] = 10 * np.arange(17)[None, :]
    kp[:, :, 2] = np.arange(17)[None, :] / 20
    return kp


def test_coco17_maps_by_name_and_leaves_feet_absent() -> None:
    out = coco17_to_canonical(_coco(2))
    assert out.shape == (2, NUM_JOINTS, 3) and out.dtype == np.float32
    for k, name in enumerate(COCO17):
        j = JOINT_INDEX[name]
        assert out[1, j].tolist() == pytest.approx([100 + k, 10 * k, k / 20])
    for name in ABSENT:
        j = JOINT_INDEX[name]
        assert np.isnan(out[:, j, :2]).all() and (out[:, j, 2] == 0).all()
    assert set(COCO17) | set(ABSENT) == set(JOINTS)


def test_coco17_rejects_other_layouts_and_clips_confidence() -> None:
    with pytest.raises(ValueError, match=r"\(N, 17, 3\)"):
        coco17_to_canonical(np.zeros((1, 33, 3)))
    kp = _coco(1)
    kp[0, 0, 2] = 1.7
    assert coco17_to_canonical(kp)[0, JOINT_INDEX["nose"], 2] == 1.0


def _fake_result(kp: np.ndarray, boxes: np.ndarray, conf: np.ndarray) -> SimpleNamespace:
    # Shaped like ultralytics.engine.results.Results, holding torch tensors as it does.
    return SimpleNamespace(
        keypoints=SimpleNamespace(data=torch.from_numpy(kp)),
        boxes=SimpleNamespace(xyxy=torch.from_numpy(boxes), conf=torch.from_numpy(conf)),
    )


def test_results_become_people_with_boxes_scores_and_no_ids() -> None:
    boxes = np.array([[10, 20, 110, 220], [300, 40, 380, 200]], dtype=np.float32)
    result = _fake_result(_coco(2), boxes, np.array([0.91, 0.42], dtype=np.float32))
    people = results_to_people(result)
    assert [p.score for p in people] == pytest.approx([0.91, 0.42])
    assert [p.box for p in people] == [(10, 20, 110, 220), (300, 40, 380, 200)]
    assert all(p.track_id is None for p in people)
    assert people[1].keypoints[JOINT_INDEX["right_ankle"]].tolist() == pytest.approx(
        [116, 160, 0.8]
    )
    assert people[0].keypoints[JOINT_INDEX["left_heel"], 2] == 0


def test_empty_and_non_pose_results() -> None:
    empty = _fake_result(
        np.zeros((0, 17, 3), np.float32), np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    )
    assert results_to_people(empty) == []
    with pytest.raises(ValueError, match="pose model"):
        results_to_people(SimpleNamespace(keypoints=None, boxes=None))


def _no_download(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"tried to download {args} {kwargs}")


@pytest.mark.parametrize("weights", [None, "nowhere/yolo11n-pose.pt"])
def test_missing_weights_name_the_command_and_never_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weights: str | None
) -> None:
    import ultralytics.utils.downloads as downloads

    monkeypatch.setattr(downloads, "safe_download", _no_download)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match="make download-models") as err:
        YoloDetector(weights, models_dir=tmp_path, device="cpu")
    assert "yolo11n-pose.pt" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_damaged_weights_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ultralytics.utils.downloads as downloads

    monkeypatch.setattr(downloads, "safe_download", _no_download)
    bad = tmp_path / "yolo11n-pose.pt"
    bad.write_bytes(b"not a checkpoint" * 64)
    with pytest.raises(RuntimeError, match="make download-models") as err:
        YoloDetector(bad, device="cpu")
    assert str(bad.resolve()) in str(err.value)


def test_bad_batch_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        YoloDetector.from_architecture(batch_size=0, device="cpu")


def test_auto_device_follows_cuda_availability() -> None:
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == expected
    assert resolve_device("cpu") == "cpu"


@pytest.fixture(scope="module")
def random_yolo() -> YoloDetector:
    detector = YoloDetector.from_architecture("yolo11n-pose.yaml", device="cpu", imgsz=320)
    detector.warmup((320, 240))  # Ultralytics builds its predictor on the first call
    return detector


def _count_forwards(detector: YoloDetector) -> list[int]:
    sizes: list[int] = []
    # Once set up, Ultralytics runs its own wrapper (AutoBackend) around the network.
    detector._model.predictor.model.register_forward_hook(
        lambda _m, args, _out: sizes.append(int(args[0].shape[0]))
    )
    return sizes


def _frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(n)]


def test_real_architecture_runs_four_frames_in_one_batch(random_yolo: YoloDetector) -> None:
    sizes = _count_forwards(random_yolo)
    out = random_yolo.detect(_frames(4), [0.0, 0.1, 0.2, 0.3])
    # Random weights: well-formed, and nobody found.
    assert out == [[], [], [], []]
    assert sizes[-1:] == [4] and len(sizes) == 1  # one forward pass over the whole batch
    assert random_yolo.weights is None
    assert random_yolo._model.task == "pose"
    assert random_yolo._model.model.yaml["kpt_shape"] == [17, 3]


def test_batch_size_splits_a_call(random_yolo: YoloDetector) -> None:
    random_yolo.batch_size = 2
    try:
        sizes = _count_forwards(random_yolo)
        out = random_yolo.detect(_frames(5), [0.0, 0.1, 0.2, 0.3, 0.4])
    finally:
        random_yolo.batch_size = None
    assert len(out) == 5 and all(people == [] for people in out)
    assert sizes[-3:] == [2, 2, 1]
    with pytest.raises(ValueError, match="timestamps"):
        random_yolo.detect(_frames(2), [0.0])
    assert random_yolo.detect([], []) == []


def test_mixed_frame_sizes_are_brought_to_one_shape() -> None:
    a = np.zeros((1920, 1080, 3), np.uint8)
    b = np.zeros((1920, 1088, 3), np.uint8)
    a[:30, :30] = 200
    batch, scales = common_shape_batch([a, b], 640)
    assert scales == pytest.approx([1 / 3, 1 / 3])
    assert [f.shape for f in batch] == [(640, 363, 3), (640, 363, 3)]
    assert batch[0][0, 0].tolist() == [200, 200, 200]
    assert batch[0][0, -1].tolist() == [114, 114, 114]  # right padding of the narrower view
    same, ones = common_shape_batch([a, a], 640)
    assert same[0] is a and ones == [1.0, 1.0]


class _FakeModel:
    """Answers like YOLO.predict: one pose at fixed pixels of whatever image it is given."""

    def __init__(self) -> None:
        self.shapes: list[list[tuple[int, ...]]] = []

    def predict(self, images, **kwargs):
        self.shapes.append([im.shape for im in images])
        kp = np.zeros((1, 17, 3), np.float32)
        kp[0, :, :2] = (30, 60)
        kp[0, :, 2] = 0.9
        box = np.array([[30, 60, 90, 120]], np.float32)
        return [_fake_result(kp, box, np.array([0.8], np.float32)) for _ in images]


def test_keypoints_map_back_to_each_original_frame() -> None:
    detector = YoloDetector.__new__(YoloDetector)
    detector._configure("cpu", 640, 0.25, None)
    detector._model = fake = _FakeModel()
    frames = [np.zeros((1920, 1080, 3), np.uint8), np.zeros((1920, 1088, 3), np.uint8)]
    out = detector.detect(frames, [0.0, 0.0])
    assert fake.shapes == [[(640, 363, 3), (640, 363, 3)]]
    for (person,) in out:
        assert person.keypoints[JOINT_INDEX["nose"]].tolist() == pytest.approx([90, 180, 0.9])
        assert person.box == pytest.approx((90, 180, 270, 360))
        assert np.isnan(person.keypoints[JOINT_INDEX["left_heel"], :2]).all()


def test_real_architecture_keeps_rect_inference_for_mixed_sizes(
    random_yolo: YoloDetector,
) -> None:
    shapes: list[tuple[int, ...]] = []
    random_yolo._model.predictor.model.register_forward_hook(
        lambda _m, args, _out: shapes.append(tuple(args[0].shape))
    )
    frames = [np.zeros((320, 180, 3), np.uint8), np.zeros((320, 184, 3), np.uint8)] * 2
    assert random_yolo.detect(frames, [0.0] * 4) == [[], [], [], []]
    # One batch of 4 at 320x192 (stride-32 rect), not the 320x320 square of mixed sizes.
    assert shapes[-1] == (4, 3, 320, 192)


@pytest.mark.gpu
def test_real_architecture_batched_on_cuda() -> None:
    detector = YoloDetector.from_architecture(device="auto")
    assert detector.device.startswith("cuda")
    out = detector.detect(_frames(4), [0.0, 0.1, 0.2, 0.3])
    assert out == [[], [], [], []]
    detector.close()


def test_factory_builds_the_architecture_from_a_model_yaml() -> None:
    """`--backend yolo --model yolo11n-pose.yaml`: the real network, random weights, no fetch."""
    from pose_analyzer.detectors import create_detector

    detector = create_detector("yolo", "yolo11n-pose.yaml", device="cpu")
    try:
        assert detector.weights is None  # type: ignore[attr-defined]
        frames = [np.zeros((96, 128, 3), dtype=np.uint8)] * 2
        assert detector.detect(frames, [0.0, 0.1]) == [[], []]
    finally:
        detector.close()
