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
