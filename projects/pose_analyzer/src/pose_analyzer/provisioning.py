"""Provision pose model weights into models/ and record where each file came from.

Official sources come first (MediaPipe's model bucket, Ultralytics' release
assets). Where they cannot be reached (CI reaches only package registries), the
MediaPipe Pose Landmarker `.task` bundles are rebuilt from the Apache-2.0 npm
package `@mediapipe/pose`, which carries the same detector and landmark
networks as plain `.tflite` files:

* `pose_solution_packed_assets.data` is byte for byte `pose_detection.tflite`;
* `pose_landmark_{lite,full,heavy}.tflite` are the landmark networks.

A Tasks bundle is an uncompressed zip of `pose_detector.tflite` and
`pose_landmarks_detector.tflite`. The Tasks runtime refuses float models
without TFLite metadata describing the input normalisation, and mediapipe's
metadata writer needs a compiled module its wheel lacks, so the metadata
flatbuffer is written here from the schema mediapipe ships.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

MEDIAPIPE_VARIANTS: tuple[str, ...] = ("lite", "full", "heavy")
MEDIAPIPE_TASK_URL = (
    "https://storage.googleapis.com/mediapipe-models/pose_landmarker/"
    "pose_landmarker_{variant}/float16/latest/pose_landmarker_{variant}.task"
)
YOLO_POSE_FILE = "yolo11n-pose.pt"
YOLO_POSE_URL = "https://github.com/ultralytics/assets/releases/download/v8.3.0/yolo11n-pose.pt"

NPM_PACKAGE = "@mediapipe/pose"
NPM_VERSION = "0.5.1675469404"
NPM_INTEGRITY = "sha512-" + (
    "DFZsNWTsSphRIZppnUCuunzBiHP2FdJXR9ehc7mMi4KG+oPaOH0Em3d6kr7Py+TSyTXC1doH88KcF28k2sBxsQ=="
)
NPM_DETECTOR_MEMBER = "package/pose_solution_packed_assets.data"
NPM_DETECTOR_SIZE = 2_962_288  # the packed-assets loader lists pose_detection.tflite at 0..2962288
NPM_LANDMARK_MEMBER = "package/pose_landmark_{variant}.tflite"

TASK_MEMBERS = ("pose_detector.tflite", "pose_landmarks_detector.tflite")
# Input normalisation the two networks were trained with: (x - mean) / std.
DETECTOR_NORMALIZATION = (127.5, 127.5)  # to [-1, 1]
LANDMARKS_NORMALIZATION = (0.0, 255.0)  # to [0, 1]

MANIFEST_NAME = "manifest.json"
DOWNLOAD_TIMEOUT_S = 20.0

Progress = Callable[[str, int, int | None], None]  # (label, bytes done, bytes total)


class ProvisioningError(RuntimeError):
    """A model could not be provisioned; the message says why and what to do."""


def task_filename(variant: str) -> str:
    return f"pose_landmarker_{variant}.task"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- metadata


def image_input_metadata(name: str, mean: float, std: float, num_outputs: int) -> bytes:
    """A TFLite ModelMetadata flatbuffer describing one RGB image input."""
    import flatbuffers
    from mediapipe.tasks.metadata import metadata_schema_py_generated as md

    norm = md.NormalizationOptionsT()
    norm.mean = [float(mean)]
    norm.std = [float(std)]
    unit = md.ProcessUnitT()
    unit.optionsType = md.ProcessUnitOptions.NormalizationOptions
    unit.options = norm

    props = md.ImagePropertiesT()
    props.colorSpace = md.ColorSpaceType.RGB
    content = md.ContentT()
    content.contentPropertiesType = md.ContentProperties.ImageProperties
    content.contentProperties = props

    image = md.TensorMetadataT()
    image.name = "image"
    image.content = content
    image.processUnits = [unit]

    outputs = []
    for i in range(num_outputs):
        out = md.TensorMetadataT()
        out.name = f"output_{i}"
        outputs.append(out)

    subgraph = md.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [image]
    subgraph.outputTensorMetadata = outputs

    model = md.ModelMetadataT()
    model.name = name
    model.subgraphMetadata = [subgraph]
    model.minParserVersion = "1.0.0"

    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), b"M001")
    return bytes(builder.Output())


def attach_metadata(model_bytes: bytes, name: str, mean: float, std: float) -> bytes:
    """Return the TFLite model with (replaced) TFLITE_METADATA for an image input."""
    import flatbuffers
    from mediapipe.tasks.metadata import schema_py_generated as tfl

    if model_bytes[4:8] != b"TFL3":
        raise ProvisioningError(f"{name}: not a TFLite flatbuffer (missing TFL3 identifier)")
    model = tfl.ModelT.InitFromObj(tfl.Model.GetRootAsModel(model_bytes, 0))
    num_outputs = len(model.subgraphs[0].outputs)
    buffer = tfl.BufferT()
    buffer.data = image_input_metadata(name, mean, std, num_outputs)

    model.metadata = [m for m in (model.metadata or []) if m.name != b"TFLITE_METADATA"]
    model.buffers = list(model.buffers or [])
    model.buffers.append(buffer)
    entry = tfl.MetadataT()
    entry.name = "TFLITE_METADATA"
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)

    builder = flatbuffers.Builder(len(model_bytes) + 4096)
    builder.Finish(model.Pack(builder), b"TFL3")
    return bytes(builder.Output())


def read_input_normalization(model_bytes: bytes) -> tuple[float, float]:
    """(mean, std) of the image input as recorded in the model's metadata."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as md
    from mediapipe.tasks.metadata import schema_py_generated as tfl

    model = tfl.Model.GetRootAsModel(model_bytes, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == b"TFLITE_METADATA":
            raw = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
            meta = md.ModelMetadataT.InitFromObj(md.ModelMetadata.GetRootAsModelMetadata(raw, 0))
            unit = meta.subgraphMetadata[0].inputTensorMetadata[0].processUnits[0]
            return float(unit.options.mean[0]), float(unit.options.std[0])
    raise ProvisioningError("model has no TFLITE_METADATA")


def build_task_bundle(detector: bytes, landmarks: bytes) -> bytes:
    """A Pose Landmarker `.task` bundle (stored zip) from the two raw networks."""
    members = {
        TASK_MEMBERS[0]: attach_metadata(detector, "pose_detector", *DETECTOR_NORMALIZATION),
        TASK_MEMBERS[1]: attach_metadata(
            landmarks, "pose_landmarks_detector", *LANDMARKS_NORMALIZATION
        ),
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as bundle:
        for name, data in members.items():
            # A fixed timestamp makes the build reproducible: same inputs, same sha256.
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            bundle.writestr(info, data)
    return out.getvalue()


def check_task_bundle(path: Path) -> None:
    """Raise ProvisioningError unless `path` is a readable Pose Landmarker bundle."""
    try:
        with zipfile.ZipFile(path) as bundle:
            names = set(bundle.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise ProvisioningError(f"{path.name} is not a valid .task bundle: {exc}") from exc
    missing = [m for m in TASK_MEMBERS if m not in names]
    if missing:
        raise ProvisioningError(f"{path.name} lacks {', '.join(missing)}")


# --------------------------------------------------------------------------- sources


def download(url: str, dest: Path, progress: Progress | None = None) -> None:
    """Download to `dest` atomically; raise ProvisioningError on any network failure."""
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            done = 0
            with tmp.open("wb") as fh:
                while chunk := resp.read(1 << 16):
                    fh.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(dest.name, done, total)
        tmp.replace(dest)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise ProvisioningError(f"cannot download {url}: {reason}") from exc


def npm_tarball(workdir: Path) -> Path:
    """`npm pack` the pinned @mediapipe/pose release and verify its integrity."""
    npm = shutil.which("npm")
    if npm is None:
        raise ProvisioningError(
            "npm is not installed, so the @mediapipe/pose fallback is unavailable "
            "(install Node.js/npm, or give this machine internet access)"
        )
    spec = f"{NPM_PACKAGE}@{NPM_VERSION}"
    try:
        proc = subprocess.run(
            [npm, "pack", spec, "--json", "--pack-destination", str(workdir)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ProvisioningError(f"npm pack {spec} timed out") from exc
    if proc.returncode != 0:
        raise ProvisioningError(f"npm pack {spec} failed: {proc.stderr.strip()[-500:]}")
    info = json.loads(proc.stdout)[0]
    if info.get("integrity") != NPM_INTEGRITY:
        raise ProvisioningError(
            f"npm pack {spec}: integrity {info.get('integrity')} differs from the pinned one"
        )
    return workdir / info["filename"]


def tasks_from_npm(variants: Iterable[str], workdir: Path) -> dict[str, bytes]:
    """Build the `.task` bundles for `variants` from the npm package."""
    tarball = npm_tarball(workdir)
    with tarfile.open(tarball, "r:gz") as tar:

        def member(name: str) -> bytes:
            fh = tar.extractfile(name)
            if fh is None:
                raise ProvisioningError(f"{tarball.name} lacks {name}")
            return fh.read()

        detector = member(NPM_DETECTOR_MEMBER)
        if len(detector) != NPM_DETECTOR_SIZE:
            raise ProvisioningError(
                f"{NPM_DETECTOR_MEMBER} has {len(detector)} bytes, expected {NPM_DETECTOR_SIZE}"
            )
        return {
            v: build_task_bundle(detector, member(NPM_LANDMARK_MEMBER.format(variant=v)))
            for v in variants
        }


# --------------------------------------------------------------------------- manifest


@dataclass
class ManifestEntry:
    sha256: str
    size: int
    source: str
    license: str
    provisioned_at: str


@dataclass
class Manifest:
    files: dict[str, ManifestEntry] = field(default_factory=dict)

    @classmethod
    def load(cls, models_dir: Path) -> Manifest:
        path = models_dir / MANIFEST_NAME
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text())
            return cls({k: ManifestEntry(**v) for k, v in raw.get("files", {}).items()})
        except (ValueError, TypeError) as exc:
            raise ProvisioningError(f"{path} is not a valid manifest ({exc}); delete it") from exc

    def save(self, models_dir: Path) -> None:
        data = {"files": {k: asdict(v) for k, v in sorted(self.files.items())}}
        tmp = models_dir / (MANIFEST_NAME + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(models_dir / MANIFEST_NAME)

    def record(self, path: Path, source: str, license: str) -> ManifestEntry:
        entry = ManifestEntry(
            sha256=sha256_file(path),
            size=path.stat().st_size,
            source=source,
            license=license,
            provisioned_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        )
        self.files[path.name] = entry
        return entry

    def is_current(self, path: Path) -> bool:
        entry = self.files.get(path.name)
        return (
            entry is not None
            and path.exists()
            and path.stat().st_size == entry.size
            and sha256_file(path) == entry.sha256
        )


# --------------------------------------------------------------------------- provisioning


@dataclass
class Outcome:
    file: str
    status: str  # "present" | "downloaded" | "built" | "failed"
    source: str = ""
    detail: str = ""


UNRECORDED_SOURCE = "placed in models/ by hand (source unknown)"


def _check_torch_checkpoint(path: Path) -> None:
    # A .pt file is a zip archive (torch.save's format); anything else is not usable.
    if not zipfile.is_zipfile(path):
        raise ProvisioningError(f"{path.name} is not a PyTorch checkpoint")


def _adopt_unrecorded(
    manifest: Manifest, path: Path, license: str, check: Callable[[Path], None]
) -> bool:
    """Record a valid file someone placed by hand, so it is not downloaded over."""
    if path.name in manifest.files or not path.exists():
        return False
    try:
        check(path)
    except ProvisioningError:
        return False
    manifest.record(path, UNRECORDED_SOURCE, license)
    return True


MEDIAPIPE_LICENSE = "Apache-2.0"
YOLO_LICENSE = "AGPL-3.0 (Ultralytics)"


def provision_mediapipe(
    models_dir: Path,
    variants: Iterable[str] = MEDIAPIPE_VARIANTS,
    *,
    sources: tuple[str, ...] = ("official", "npm"),
    force: bool = False,
    progress: Progress | None = None,
) -> list[Outcome]:
    models_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.load(models_dir)
    outcomes: dict[str, Outcome] = {}
    wanted: list[str] = []
    for v in variants:
        if v not in MEDIAPIPE_VARIANTS:
            raise ProvisioningError(f"unknown MediaPipe variant {v!r}; use {MEDIAPIPE_VARIANTS}")
        path = models_dir / task_filename(v)
        if not force and (
            _adopt_unrecorded(manifest, path, MEDIAPIPE_LICENSE, check_task_bundle)
            or manifest.is_current(path)
        ):
            outcomes[v] = Outcome(path.name, "present", manifest.files[path.name].source)
        else:
            wanted.append(v)

    errors: dict[str, list[str]] = {v: [] for v in wanted}
    if "official" in sources:
        for v in list(wanted):
            path = models_dir / task_filename(v)
            url = MEDIAPIPE_TASK_URL.format(variant=v)
            try:
                download(url, path, progress)
                check_task_bundle(path)
            except ProvisioningError as exc:
                path.unlink(missing_ok=True)
                errors[v].append(str(exc))
                continue
            manifest.record(path, url, MEDIAPIPE_LICENSE)
            outcomes[v] = Outcome(path.name, "downloaded", url)
            wanted.remove(v)

    if wanted and "npm" in sources:
        source = f"npm:{NPM_PACKAGE}@{NPM_VERSION} (rebuilt as a Tasks bundle)"
        try:
            with tempfile.TemporaryDirectory() as tmp:
                bundles = tasks_from_npm(wanted, Path(tmp))
        except ProvisioningError as exc:
            for v in wanted:
                errors[v].append(str(exc))
        else:
            for v, data in bundles.items():
                path = models_dir / task_filename(v)
                tmp_path = path.with_name(path.name + ".part")
                tmp_path.write_bytes(data)
                tmp_path.replace(path)
                manifest.record(path, source, MEDIAPIPE_LICENSE)
                outcomes[v] = Outcome(path.name, "built", source)
            wanted = []

    for v in wanted:
        outcomes[v] = Outcome(task_filename(v), "failed", detail="; ".join(errors[v]))
    manifest.save(models_dir)
    return [outcomes[v] for v in variants if v in outcomes]


def provision_yolo(
    models_dir: Path, *, force: bool = False, progress: Progress | None = None
) -> Outcome:
    models_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.load(models_dir)
    path = models_dir / YOLO_POSE_FILE
    if not force and (
        _adopt_unrecorded(manifest, path, YOLO_LICENSE, _check_torch_checkpoint)
        or manifest.is_current(path)
    ):
        manifest.save(models_dir)
        return Outcome(path.name, "present", manifest.files[path.name].source)
    try:
        download(YOLO_POSE_URL, path, progress)
    except ProvisioningError as exc:
        return Outcome(path.name, "failed", detail=str(exc))
    manifest.record(path, YOLO_POSE_URL, YOLO_LICENSE)
    manifest.save(models_dir)
    return Outcome(path.name, "downloaded", YOLO_POSE_URL)
