"""Model provisioning: the rebuilt MediaPipe bundles are valid and really detect a person."""

from __future__ import annotations

import importlib.util
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pose_analyzer import provisioning as prov

REPO = Path(__file__).resolve().parents[3]
MODELS = REPO / "models"
# The leftmost pedestrian of ultralytics' assets/bus.jpg (810x1080), x1, y1, x2, y2 in pixels,
# drawn by hand around the whole person (head to shoes, arms included).
BUS_LEFT_PERSON_BOX = (45.0, 395.0, 250.0, 910.0)


def _bus_jpg() -> Path:
    import ultralytics

    return Path(ultralytics.__file__).parent / "assets" / "bus.jpg"


def _tiny_tflite() -> bytes:
    """The smallest real TFLite model at hand: the npm detector in the provisioned bundle."""
    with zipfile.ZipFile(MODELS / prov.task_filename("lite")) as bundle:
        return bundle.read("pose_detector.tflite")


@pytest.fixture(scope="module")
def provisioned() -> dict:
    manifest = MODELS / prov.MANIFEST_NAME
    if not manifest.exists():
        pytest.fail("models are not provisioned: run `make download-models` first")
    return json.loads(manifest.read_text())["files"]


def test_manifest_records_sha256_and_source_of_every_file(provisioned: dict) -> None:
    for variant in prov.MEDIAPIPE_VARIANTS:
        name = prov.task_filename(variant)
        entry = provisioned[name]
        path = MODELS / name
        assert entry["sha256"] == prov.sha256_file(path)
        assert entry["size"] == path.stat().st_size
        assert entry["source"] and entry["license"] == "Apache-2.0"


@pytest.mark.parametrize("variant", prov.MEDIAPIPE_VARIANTS)
def test_bundle_is_a_stored_zip_with_normalisation_metadata(variant: str) -> None:
    path = MODELS / prov.task_filename(variant)
    with zipfile.ZipFile(path) as bundle:
        infos = {i.filename: i for i in bundle.infolist()}
        assert set(infos) >= set(prov.TASK_MEMBERS)
        assert all(infos[m].compress_type == zipfile.ZIP_STORED for m in prov.TASK_MEMBERS)
        detector = bundle.read("pose_detector.tflite")
        landmarks = bundle.read("pose_landmarks_detector.tflite")
    assert prov.read_input_normalization(detector) == (127.5, 127.5)
    assert prov.read_input_normalization(landmarks) == (0.0, 255.0)


@pytest.mark.parametrize("variant", prov.MEDIAPIPE_VARIANTS)
def test_each_task_finds_the_leftmost_person_of_bus_jpg(variant: str) -> None:
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.PoseLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(MODELS / prov.task_filename(variant))),
        running_mode=vision.RunningMode.IMAGE,
        num_poses=1,
    )
    image = mp.Image.create_from_file(str(_bus_jpg()))
    with vision.PoseLandmarker.create_from_options(options) as landmarker:
        result = landmarker.detect(image)
    assert len(result.pose_landmarks) == 1
    pose = result.pose_landmarks[0]
    assert len(pose) == 33
    xs = np.array([lm.x for lm in pose]) * image.width
    ys = np.array([lm.y for lm in pose]) * image.height
    x1, y1, x2, y2 = BUS_LEFT_PERSON_BOX
    assert np.all((xs >= x1) & (xs <= x2)), xs
    assert np.all((ys >= y1) & (ys <= y2)), ys
    # The person is standing: head (nose) above hips above ankles.
    assert ys[0] < ys[23] < ys[27]


def test_attach_metadata_replaces_instead_of_duplicating() -> None:
    model = _tiny_tflite()
    again = prov.attach_metadata(model, "x", 1.0, 2.0)
    assert prov.read_input_normalization(again) == (1.0, 2.0)
    from mediapipe.tasks.metadata import schema_py_generated as tfl

    parsed = tfl.Model.GetRootAsModel(again, 0)
    names = [parsed.Metadata(i).Name() for i in range(parsed.MetadataLength())]
    assert names.count(b"TFLITE_METADATA") == 1


def test_attach_metadata_rejects_a_non_tflite_file() -> None:
    with pytest.raises(prov.ProvisioningError, match="not a TFLite"):
        prov.attach_metadata(b"\0" * 64, "x", 0.0, 1.0)


def test_unreachable_official_source_fails_clearly_without_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Port 9 (discard) on loopback refuses at once: the same path as a machine offline.
    monkeypatch.setattr(prov, "MEDIAPIPE_TASK_URL", "http://127.0.0.1:9/{variant}.task")
    outcomes = prov.provision_mediapipe(tmp_path, ["lite"], sources=("official",))
    assert [o.status for o in outcomes] == ["failed"]
    assert "cannot download http://127.0.0.1:9/lite.task" in outcomes[0].detail
    assert not (tmp_path / "pose_landmarker_lite.task").exists()
    assert not list(tmp_path.glob("*.part"))


def test_a_file_placed_by_hand_is_adopted_and_a_corrupt_one_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prov, "MEDIAPIPE_TASK_URL", "http://127.0.0.1:9/{variant}.task")
    target = tmp_path / prov.task_filename("lite")
    target.write_bytes((MODELS / prov.task_filename("lite")).read_bytes())
    [outcome] = prov.provision_mediapipe(tmp_path, ["lite"], sources=("official",))
    assert outcome.status == "present"
    assert outcome.source == prov.UNRECORDED_SOURCE

    target.write_bytes(b"truncated")  # corrupted after it was recorded
    [outcome] = prov.provision_mediapipe(tmp_path, ["lite"], sources=("official",))
    assert outcome.status == "failed"  # re-provisioning was attempted, not skipped


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("npm") is None, reason="npm (Node.js) is not installed")
def test_npm_fallback_builds_identical_bundles_and_is_idempotent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prov, "MEDIAPIPE_TASK_URL", "http://127.0.0.1:9/{variant}.task")
    first = prov.provision_mediapipe(tmp_path, ["lite"])
    assert [o.status for o in first] == ["built"]
    built = tmp_path / prov.task_filename("lite")
    prov.check_task_bundle(built)
    mtime = built.stat().st_mtime_ns
    second = prov.provision_mediapipe(tmp_path, ["lite"])
    assert [o.status for o in second] == ["present"]
    assert built.stat().st_mtime_ns == mtime
    # The build is deterministic: the same bytes as the provisioned models/ copy when
    # that one came from npm too.
    entry = json.loads((MODELS / prov.MANIFEST_NAME).read_text())["files"][built.name]
    if entry["source"].startswith("npm:"):
        assert prov.sha256_file(built) == entry["sha256"]


def test_download_models_script_exits_non_zero_when_nothing_can_be_provisioned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location(
        "download_models", REPO / "scripts" / "download_models.py"
    )
    assert spec and spec.loader
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(prov, "MEDIAPIPE_TASK_URL", "http://127.0.0.1:9/{variant}.task")
    monkeypatch.setattr(prov, "YOLO_POSE_URL", "http://127.0.0.1:9/yolo11n-pose.pt")
    rc = script.main(["--models-dir", str(tmp_path), "--source", "official"])
    assert rc == 1
    assert "no pose model could be provisioned" in capsys.readouterr().err
