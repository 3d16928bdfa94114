"""helpers.inference_service: the book's InferenceService manifests validate against KServe's own models,
and a misspelt field or a wrong type fails (KServe's lenient deserialiser accepts both)."""
import json
import re
from pathlib import Path

import kserve
import nbformat
import pytest
import yaml

from helpers.inference_service import ManifestError, check_manifest

ROOT = Path(__file__).resolve().parent.parent


def yaml_blocks(notebook):
    """The ```yaml blocks of a chapter's markdown, and the manifests its code cells write."""
    cells = nbformat.read(ROOT / "notebooks" / notebook, as_version=4).cells
    text = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    blocks = [re.sub(r"^# ?", "", b, flags=re.M) if b.lstrip().startswith("#") else b
              for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S)]
    for cell in cells:
        if cell.cell_type == "code" and "kind: InferenceService" in cell.source:
            blocks += re.findall(r'"""\n(apiVersion:.*?)"""', cell.source, flags=re.S)
    return [b for b in blocks if "kind: InferenceService" in b]


@pytest.mark.parametrize("notebook", ["07_serving.ipynb", "13_serving_in_production.ipynb"])
def test_the_chapters_manifests_validate(notebook):
    manifests = yaml_blocks(notebook)
    assert manifests, f"{notebook} shows no InferenceService"
    for manifest in manifests:
        service = check_manifest(manifest)
        assert isinstance(service, kserve.V1beta1InferenceService)
        assert service.spec.predictor.model.model_format.name == "tensorflow"


@pytest.fixture
def good():
    return yaml_blocks("07_serving.ipynb")[0]


@pytest.mark.parametrize("change, message", [
    (("minReplicas", "minReplica"), r"spec\.predictor: unknown field 'minReplica' .*did you mean 'minReplicas'"),
    (("storageUri", "storageURI"), r"spec\.predictor\.model: unknown field 'storageURI'.*'storageUri'"),
    (("maxReplicas: 4", "maxReplicas: four"), r"spec\.predictor\.maxReplicas: expected int, got a string 'four'"),
    (("name: tensorflow", "name: [tensorflow]"), r"modelFormat\.name: expected str, got a list"),
    (("kind: InferenceService", "kind: InferenceServices"), "expected serving.kserve.io/v1beta1/InferenceService"),
    (("  predictor:", "  predictors:"), r"spec\.predictor: missing"),
])
def test_broken_manifests_are_refused(good, change, message):
    broken = good.replace(*change)
    assert broken != good
    with pytest.raises(ManifestError, match=message):
        check_manifest(broken)


def test_kserves_own_classes_would_not_catch_it(good):
    """Why the walk: KServe's deserialiser cannot read a manifest at all (it looks for Kubernetes'
    V1ObjectMeta among its own models), and its generated classes take a value of any type."""
    response = type("Response", (), {"data": json.dumps(yaml.safe_load(good))})
    with pytest.raises(AttributeError, match="has no attribute 'V1ObjectMeta'"):
        kserve.ApiClient().deserialize(response(), "V1beta1InferenceService")
    assert kserve.V1beta1PredictorSpec(min_replicas="four").min_replicas == "four"


def test_a_number_is_a_valid_cpu_quantity(good):
    service = check_manifest(good.replace('cpu: "1"', "cpu: 1"))
    assert service.spec.predictor.model.resources.requests["cpu"] == "1"


@pytest.mark.parametrize("where, field, value, check", [
    # only in kserve.models, not exported at the top of the package
    ("model", "storage", {"key": "localMinIO", "path": "models/mobilenet"},
     lambda s: s.spec.predictor.model.storage.path == "models/mobilenet"),
    ("predictor", "workerSpec", {"pipelineParallelSize": 2},
     lambda s: s.spec.predictor.worker_spec.pipeline_parallel_size == 2),
    # Kubernetes' types, named by Go package in KServe's schema
    ("predictor", "deploymentStrategy", {"type": "Recreate"},
     lambda s: s.spec.predictor.deployment_strategy.type == "Recreate"),
    ("predictor", "autoScaling", {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}},
     lambda s: s.spec.predictor.auto_scaling.behavior.scale_down.stabilization_window_seconds == 60),
    # an autoscaling metric's target value is a quantity
    ("predictor", "autoScaling", {"metrics": [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageValue": 80}}}]},
     lambda s: s.spec.predictor.auto_scaling.metrics[0].resource.target.average_value == "80"),
])
def test_fields_whose_classes_live_elsewhere_are_checked_too(good, where, field, value, check):
    """The schema names some types that the top of the `kserve` package does not export."""
    manifest = yaml.safe_load(good)
    parent = manifest["spec"]["predictor"]
    parent = parent["model"] if where == "model" else parent
    parent[field] = value
    assert check(check_manifest(manifest))
    inner = value if field != "autoScaling" else next(iter(value.values()))
    inner = inner[0] if isinstance(inner, list) else inner
    inner["typo"] = 1  # and still checked inside
    with pytest.raises(ManifestError, match="unknown field 'typo'"):
        check_manifest(manifest)


def test_a_type_nothing_defines_is_named_with_its_field(monkeypatch):
    import helpers.inference_service as inference_service
    monkeypatch.setitem(kserve.V1beta1PredictorSpec.openapi_types, "min_replicas", "V9NoSuchType")
    with pytest.raises(ManifestError, match=r"spec\.predictor\.minReplicas: .*type V9NoSuchType, which neither"):
        inference_service.check_manifest(yaml_blocks("07_serving.ipynb")[0])
