"""The locked environment: one OpenCV for MediaPipe and Ultralytics, torch for CUDA 12.8."""

from __future__ import annotations

import importlib.metadata as md

import numpy as np


def test_exactly_one_opencv_distribution_is_installed() -> None:
    opencv = sorted(
        d.metadata["Name"]
        for d in md.distributions()
        if (d.metadata["Name"] or "").lower().startswith("opencv")
    )
    assert opencv == ["opencv-contrib-python-headless"]


def test_cv2_does_what_mediapipe_and_ultralytics_ask_of_it() -> None:
    import cv2

    image = np.zeros((64, 96, 3), dtype=np.uint8)
    cv2.rectangle(image, (10, 10), (50, 40), (0, 255, 0), -1)
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    assert rgb[20, 20].tolist() == [0, 255, 0]
    resized = cv2.resize(image, (48, 32), interpolation=cv2.INTER_LINEAR)
    assert resized.shape == (32, 48, 3)
    padded = cv2.copyMakeBorder(image, 2, 2, 3, 3, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    assert padded.shape == (68, 102, 3)
    ok, jpeg = cv2.imencode(".jpg", image)
    assert ok
    decoded = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
    assert decoded.shape == image.shape
    warped = cv2.warpAffine(image, np.float32([[1, 0, 5], [0, 1, 0]]), (96, 64))
    assert warped[20, 15].tolist() == [0, 255, 0]
    assert warped[20, 14].tolist() == [0, 0, 0]
    cv2.setNumThreads(1)
    assert hasattr(cv2, "VideoCapture") and hasattr(cv2, "VideoWriter_fourcc")
    # contrib modules are present (the distribution mediapipe asked for)
    assert hasattr(cv2, "ximgproc")
    # both libraries import with this cv2
    import mediapipe
    import ultralytics.utils.ops  # noqa: F401

    assert mediapipe.__version__


def test_torch_is_the_cuda_12_8_build_of_2_10() -> None:
    import torch
    import torchvision

    assert torch.__version__.startswith("2.10.")
    assert torchvision.__version__.startswith("0.25.")
    assert torch.version.cuda == "12.8"
    # sm_120 (Blackwell, RTX 5070 Ti) kernels ship in this build
    assert "sm_120" in torch.cuda.get_arch_list() or not torch.cuda.is_available()


def test_nvml_comes_from_nvidia_ml_py() -> None:
    import pynvml

    assert md.version("nvidia-ml-py")
    assert pynvml.__file__.endswith("pynvml.py")
    names = {d.metadata["Name"].lower() for d in md.distributions()}
    assert "pynvml" not in names  # the deprecated wrapper package
