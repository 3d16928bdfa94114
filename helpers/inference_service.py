"""A KServe `InferenceService` manifest checked against the `kserve` package's model classes
(`kserve.V1beta1InferenceService` and the classes it refers to, with Kubernetes' own from
`kubernetes.client`), which openapi-generator makes from KServe's OpenAPI description.

KServe 0.21's own `ApiClient().deserialize` cannot read a manifest (it looks for Kubernetes'
`V1ObjectMeta` among KServe's models), and its generated classes accept a value of any type
(`V1beta1PredictorSpec(min_replicas="four")`). This walk follows the classes' field tables instead
and refuses an unknown (misspelt) field or a value of the wrong type, naming it by its path.
"""
import datetime
import difflib
import re

import kserve
import kserve.models
import kubernetes.client
import yaml

API_VERSION, KIND = "serving.kserve.io/v1beta1", "InferenceService"
_PRIMITIVES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "object": (object,),
               "datetime": (str, datetime.datetime), "date": (str, datetime.date), "bytes": (str, bytes),
               "ResourceQuantity": (str, int, float),  # a Kubernetes quantity: "500m", "2Gi" or a number
               "V1beta1MetricQuantity": (str, int, float),  # an autoscaling metric's target, a quantity too
               "V1Time": (str, datetime.datetime)}  # Kubernetes' metav1.Time, a timestamp


class ManifestError(ValueError):
    """A manifest that KServe's schema does not accept; the message names the field's path."""


def _class(name, path):
    """The class of a type the schema names: KServe's own (some only in `kserve.models`), or
    Kubernetes', which KServe names by Go package (`K8sIoApiAppsV1DeploymentStrategy` is
    `kubernetes.client.V1DeploymentStrategy`)."""
    kubernetes_name = re.sub(r"^K8sIoApi[A-Z][a-z]*(?=V\d)", "", name)
    for module, attribute in ((kserve, name), (kserve.models, name), (kubernetes.client, kubernetes_name)):
        if hasattr(module, attribute):
            return getattr(module, attribute)
    raise ManifestError(f"{path}: KServe's schema gives this field the type {name}, which neither the "
                        "kserve nor the kubernetes package defines, so it cannot be checked")


def _type_name(value):
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def build(value, type_name, path):
    """`value` (parsed YAML) as the KServe/Kubernetes type `type_name`; raises ManifestError at `path`."""
    if (match := re.fullmatch(r"(?:list|List)\[(.+)\]", type_name)):
        if not isinstance(value, list):
            raise ManifestError(f"{path}: expected a list, got {_type_name(value)}")
        return [build(item, match.group(1), f"{path}[{i}]") for i, item in enumerate(value)]
    if (match := re.fullmatch(r"(?:dict\(str, (.+)\)|Dict\[str, (.+)\])", type_name)):
        if not isinstance(value, dict):
            raise ManifestError(f"{path}: expected a mapping, got {_type_name(value)}")
        inner = match.group(1) or match.group(2)
        return {str(k): build(v, inner, f"{path}.{k}") for k, v in value.items()}
    if type_name in _PRIMITIVES:
        allowed = _PRIMITIVES[type_name]
        if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
            raise ManifestError(f"{path}: expected {type_name}, got {_type_name(value)} {value!r}")
        return str(value) if type_name.endswith("Quantity") else value
    cls = _class(type_name, path)
    if not isinstance(value, dict):
        raise ManifestError(f"{path}: expected a mapping ({type_name}), got {_type_name(value)}")
    by_json = {json_name: py_name for py_name, json_name in cls.attribute_map.items()}
    kwargs = {}
    for key, item in value.items():
        if key not in by_json:
            lower = {name.lower(): name for name in by_json}
            near = [lower[n] for n in difflib.get_close_matches(key.lower(), lower, n=1)]
            raise ManifestError(f"{path}: unknown field '{key}' in {type_name}"
                                + (f" (did you mean '{near[0]}'?)" if near else ""))
        kind = cls.openapi_types[by_json[key]]
        if type_name == "V1ResourceRequirements" and key in ("limits", "requests"):
            kind = "Dict[str, ResourceQuantity]"  # the client says str; the API server takes `cpu: 1` too
        kwargs[by_json[key]] = build(item, kind, f"{path}.{key}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as error:  # required fields, enums, pydantic's own checks
        raise ManifestError(f"{path}: {type_name}: {str(error).splitlines()[0]}") from None


def check_manifest(manifest):
    """The manifest (YAML text or a parsed dict) as a `kserve.V1beta1InferenceService`, or ManifestError."""
    data = yaml.safe_load(manifest) if isinstance(manifest, str) else manifest
    if not isinstance(data, dict):
        raise ManifestError(f"the manifest is {_type_name(data)}, not a mapping")
    if (data.get("apiVersion"), data.get("kind")) != (API_VERSION, KIND):
        raise ManifestError(f"apiVersion/kind are {data.get('apiVersion')}/{data.get('kind')}, "
                            f"expected {API_VERSION}/{KIND}")
    for field in ("metadata", "spec"):
        if field not in data:
            raise ManifestError(f"{field}: missing")
    if not (data["metadata"] or {}).get("name"):
        raise ManifestError("metadata.name: missing")
    if "predictor" not in (data["spec"] or {}):
        raise ManifestError("spec.predictor: missing (every InferenceService needs one)")
    return build(data, "V1beta1InferenceService", "InferenceService")
