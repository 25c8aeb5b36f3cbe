"""The pipeline spec: TOML in, canonical JSON out, and one clear error for each wiring mistake."""

from __future__ import annotations

import pytest

from protocol.pipeline import (
    PipelineManifest,
    PipelineSpec,
    PipelineSpecError,
    PipelineStage,
    StageIO,
    check_wiring,
    pipeline_target,
    spec_from_toml,
)
from protocol.pipeline_steps import TensorType

GOOD = """
name = "digits"
version = 1
description = "locate a digit, crop it, classify it"

[[inputs]]
name = "image"
shape = [1, 64, 64, 1]
dtype = "float32"

[[stages]]
name = "locate"
model = "digit-locator"
version = 3
inputs = { image = "inputs.image" }

[[steps]]
name = "crop"
op = "crop_resize"
params = { size = [28, 28], max_crops = 1 }
inputs = { image = "inputs.image", boxes = "locate.boxes" }

[[stages]]
name = "classify"
model = "digits"
version = 2
inputs = { pixels = "crop.crops" }

[[steps]]
name = "best"
op = "argmax"
inputs = { x = "classify.probs" }

[outputs]
digit = "best.out"
probs = "classify.probs"
box = "locate.boxes"
"""


def io(
    inputs: dict[str, TensorType], outputs: dict[str, TensorType], quantized: frozenset[str] = frozenset()
) -> StageIO:
    return StageIO(inputs=inputs, outputs=outputs, quantized_inputs=quantized)


def t(shape: list[int | None], dtype: str = "float32") -> TensorType:
    return TensorType(shape=shape, dtype=dtype)  # type: ignore[arg-type]


STAGES = {
    "locate": io({"image": t([None, 64, 64, 1])}, {"boxes": t([None, 4])}),
    "classify": io({"pixels": t([None, 28, 28, 1])}, {"probs": t([None, 10])}),
}


def broken(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new, 1)


def test_a_toml_spec_parses_runs_in_wiring_order_and_round_trips_as_canonical_json() -> None:
    spec = spec_from_toml(GOOD)
    assert [n.name for n in spec.order()] == ["locate", "crop", "classify", "best"]
    assert spec.stage_models() == {"locate": ("digit-locator", 3), "classify": ("digits", 2)}
    again = PipelineSpec.from_json(spec.to_bytes())
    assert again == spec and again.to_bytes() == spec.to_bytes()
    assert spec.steps[0].params.op == "crop_resize"  # `op` beside params in TOML, inside params on the wire


def test_check_wiring_returns_the_output_types_computed_through_stages_and_steps() -> None:
    types = check_wiring(spec_from_toml(GOOD), STAGES)
    assert types["probs"] == t([None, 10])
    assert types["box"] == t([None, 4])
    assert types["digit"].dtype == "int64"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            'pixels = "crop.crops"',
            'pixels = "cropper.crops"',
            "stage 'classify' input 'pixels': 'cropper.crops' names no stage or step 'cropper'",
        ),
        ('x = "classify.probs"', 'x = "classify.probs", y = "best.out"', "step 'best' (argmax) has no input 'y'"),
        ('pixels = "crop.crops"', 'pixels = "crop.tiles"', "step 'crop' (crop_resize) has no output 'tiles'"),
        ('op = "argmax"', 'op = "softmax"', "steps.1.params: unknown op; built-in steps are argmax"),
        ("version = 3", "version = 0", "stages.0.version: Input should be greater than or equal to 1"),
        ('model = "digits"', 'model = "digits"\nthreads = 2', "stages.1.threads: unknown key"),
        ('name = "best"', 'name = "locate"', "node name 'locate' used twice"),
        ('name = "best"', 'name = "inputs"', "node name 'inputs' is reserved"),
        ('model = "digits"', 'model = "digit-locator"', "model 'digit-locator' is used by two stages"),
        ('box = "locate.boxes"', 'box = "nowhere.boxes"', "output 'box': 'nowhere.boxes' names no stage or step"),
        (
            'image = "inputs.image" }\n\n[[steps]]',
            'image = "inputs.picture" }\n\n[[steps]]',
            "'inputs.picture' names no pipeline input",
        ),
        ('digit = "best.out"\n', "", "step 'best': no output of it is used"),
    ],
)
def test_each_spec_mistake_is_one_line_naming_the_node_and_tensor(old: str, new: str, message: str) -> None:
    with pytest.raises(PipelineSpecError) as e:
        spec_from_toml(broken(old, new))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_a_cycle_is_refused_naming_the_nodes_on_it() -> None:
    cyclic = broken('boxes = "locate.boxes"', 'boxes = "classify.probs"')
    with pytest.raises(PipelineSpecError, match="the wiring has a cycle through classify, crop"):
        spec_from_toml(cyclic)


def test_not_toml_is_one_line() -> None:
    with pytest.raises(PipelineSpecError, match="not valid TOML"):
        spec_from_toml("name = ")


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        (
            {**STAGES, "classify": io({"pixels": t([None, 32, 32, 1])}, {"probs": t([None, 10])})},
            "stage 'classify' input 'pixels' from 'crop.crops': shape [1, 28, 28, 1] does not fit [?, 32, 32, 1]",
        ),
        (
            {**STAGES, "classify": io({"pixels": t([None, 28, 28, 1], "int32")}, {"probs": t([None, 10])})},
            "stage 'classify' input 'pixels' from 'crop.crops': dtype float32 does not fit int32",
        ),
        (
            {**STAGES, "classify": io({"pixels": t([None, 784])}, {"probs": t([None, 10])})},
            "does not fit [?, 784] (rank 4 vs 2)",
        ),
        (
            {
                **STAGES,
                "classify": io({"pixels": t([None, 28, 28, 1]), "mask": t([None, 1])}, {"probs": t([None, 10])}),
            },
            "stage 'classify' (digits v2): input 'mask' is not wired",
        ),
        (
            {**STAGES, "classify": io({"image": t([None, 28, 28, 1])}, {"probs": t([None, 10])})},
            "stage 'classify' (digits v2): input 'image' is not wired",
        ),
        (
            {**STAGES, "classify": io({"pixels": t([None, 28, 28, 1])}, {"logits": t([None, 10])})},
            "step 'best': 'classify.probs': stage 'classify' has no output 'probs'",
        ),
        (
            {**STAGES, "locate": io({"image": t([None, 64, 64, 1])}, {"boxes": t([None, 5])})},
            "step 'crop':",
        ),
    ],
)
def test_wiring_that_does_not_fit_the_stage_models_is_one_line_naming_stage_and_tensor(
    stages: dict[str, StageIO], message: str
) -> None:
    with pytest.raises(PipelineSpecError) as e:
        check_wiring(spec_from_toml(GOOD), stages)
    assert message in str(e.value)


def test_a_quantised_input_takes_floats_and_a_batch_one_input_takes_any_count() -> None:
    stages = {
        **STAGES,
        "classify": io({"pixels": t([1, 28, 28, 1], "int8")}, {"probs": t([None, 10])}, frozenset({"pixels"})),
    }
    assert check_wiring(spec_from_toml(GOOD), stages)["probs"] == t([None, 10])


def test_the_manifest_must_name_exactly_the_specs_stage_versions() -> None:
    spec = spec_from_toml(GOOD)
    stages = {
        "locate": PipelineStage(
            model="digit-locator", version=3, manifest_target="models/digit-locator/3/p/manifest.json"
        ),
        "classify": PipelineStage(model="digits", version=2, manifest_target="models/digits/2/p/manifest.json"),
    }
    manifest = PipelineManifest(spec=spec, profile="p", stages=stages)
    assert PipelineManifest.from_json(manifest.to_bytes()) == manifest
    assert pipeline_target("digits", 1, "p") == "pipelines/digits/1/p/pipeline.json"
    wrong = {**stages, "classify": PipelineStage(model="digits", version=1, manifest_target="x")}
    with pytest.raises(ValueError, match="do not match the spec"):
        PipelineManifest(spec=spec, profile="p", stages=wrong)
