"""TF Serving's model config file (`--model_config_file`) and batching file: read, checked, and mapped
onto the book's offline engine, which serves one model per process.

The files are text protobufs (`ModelServerConfig`, `BatchingParameters`; classes from
`helpers.serving_protos`). Chapter 13 parses them with `google.protobuf.text_format` before
these helpers wrap the same calls with checks that name the file, model and field at fault.
"""
import contextlib
import os
from pathlib import Path

from google.protobuf import text_format

from helpers.serving_protos import BatchingParameters, ModelServerConfig


def parse_text(text, message_class, where):
    """`text` parsed as `message_class`; a syntax error or unknown field names `where` and line:column."""
    try:
        return text_format.Parse(text, message_class())
    except text_format.ParseError as error:
        raise ValueError(f"{where}:{error}") from None  # the error reads "3:5 : Message type ..."


def read_model_config(path):
    """The `ModelServerConfig` in the text file `path`, checked with `check_model_config`."""
    config = parse_text(Path(path).read_text(), ModelServerConfig, path)
    check_model_config(config, where=path)
    return config


def served_versions(model, available):
    """The versions TF Serving serves of `model` (a ModelConfig) given the `available` version numbers:
    its `model_version_policy` (default: the newest one)."""
    available = sorted(available)
    policy = model.model_version_policy.WhichOneof("policy_choice")
    if policy == "specific":
        return sorted(v for v in model.model_version_policy.specific.versions if v in available)
    if policy == "all":
        return available
    return available[-(model.model_version_policy.latest.num_versions or 1):]


def check_model_config(config, where="model config"):
    """Refuse what TF Serving refuses at start-up (a duplicate name, a relative base path; server_core.cc)
    and what it may accept but mis-serve: no models, a model without a name or base path, labels
    without a `specific` policy (under `latest` a new version unloads the labelled one), a label on a
    version the policy does not serve (accepted with --allow_version_labels_for_unavailable_models)."""
    models = config.model_config_list.config
    if not models:
        raise ValueError(f"{where}: model_config_list has no config entries")
    seen = set()
    for model in models:
        at = f"{where}: model '{model.name}'"
        if not model.name or not model.base_path:
            raise ValueError(f"{at}: every config needs a name and a base_path")
        if model.name in seen:
            raise ValueError(f"{at}: the name appears twice; TF Serving refuses that at start-up "
                             f"(Illegal to list model {model.name} multiple times in config list)")
        seen.add(model.name)
        if not model.base_path.startswith("/") and "://" not in model.base_path:  # a URI has a scheme
            raise ValueError(f"{at}: base_path '{model.base_path}' is relative; TF Serving refuses it at "
                             f"start-up (Expected model {model.name} to have an absolute path or URI)")
        if model.version_labels and model.model_version_policy.WhichOneof("policy_choice") != "specific":
            raise ValueError(f"{at}: version_labels need a model_version_policy {{ specific {{ ... }} }} "
                             "that lists the labelled versions")
        for label, version in model.version_labels.items():
            if version not in model.model_version_policy.specific.versions:
                raise ValueError(f"{at}: label '{label}' points at version {version}, which "
                                 f"model_version_policy does not serve")


def local_base_path(model, mount, root):
    """Where `model`'s base path is on this machine: the server's `mount` ("/models") replaced by `root`."""
    if not model.base_path.startswith(mount.rstrip("/") + "/"):
        raise ValueError(f"model '{model.name}': base_path '{model.base_path}' is not under {mount}")
    return Path(root) / model.base_path[len(mount.rstrip("/")) + 1:]


def offline_layout(config, mount, root, workdir):
    """For each model, a folder under `workdir` that links only the version TF Serving's policy serves
    last (the newest served one): the offline engine serves the highest version folder it finds.
    Links an earlier layout left there are replaced (a stale one would be served if it were higher);
    a real folder there is not the layout's to delete and is refused.
    Returns {name: (folder, version)}; the versions TF Serving would serve beside it are not served."""
    layout = {}
    for model in config.model_config_list.config:
        base = local_base_path(model, mount, root)
        available = [int(p.name) for p in base.iterdir() if p.name.isdigit() and (p / "saved_model.pb").exists()]
        versions = served_versions(model, available)
        if not versions:
            raise FileNotFoundError(f"model '{model.name}': none of the versions its policy serves is under {base}")
        folder = Path(workdir) / model.name
        folder.mkdir(parents=True, exist_ok=True)
        for entry in folder.iterdir():
            if not entry.is_symlink():
                raise FileExistsError(f"{entry} is not a link offline_layout made: move it out of {folder}")
            entry.unlink()
        os.symlink(os.path.abspath(base / str(versions[-1])), folder / str(versions[-1]))
        layout[model.name] = folder, versions[-1]
    return layout


@contextlib.contextmanager
def serve_layout(layout, **options):
    """Start one offline engine per model of `layout` ({name: (folder, version)}), all at once; stop
    every one on leaving, also when a start or the block fails. Yields {name: ModelServer}."""
    from helpers.model_server import ModelServer
    servers = []
    try:
        for name, (folder, _) in layout.items():
            servers.append(ModelServer(name, folder, engine="kserve", **options).launch())
        for server in servers:
            server.wait_ready()
        yield {server.model_name: server for server in servers}
    finally:
        for server in servers:
            server.stop()


def read_batching_parameters(path):
    """The `BatchingParameters` in `path`, checked against the rules session_bundle_config.proto
    documents: allowed_batch_sizes increasing, the last one equal to max_batch_size (the server
    itself checks only the last, bundle_factory_util.cc); and, the book's own check, no value below 1
    (batch_timeout_micros below 0)."""
    params = parse_text(Path(path).read_text(), BatchingParameters, path)
    sizes = list(params.allowed_batch_sizes)
    if sizes and (sizes != sorted(set(sizes)) or not params.HasField("max_batch_size")
                  or sizes[-1] != params.max_batch_size.value):
        raise ValueError(f"{path}: allowed_batch_sizes {sizes} must increase and end with max_batch_size "
                         f"({params.max_batch_size.value if params.HasField('max_batch_size') else 'unset'})")
    for field in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        if params.HasField(field) and getattr(params, field).value < (0 if field == "batch_timeout_micros" else 1):
            raise ValueError(f"{path}: {field} is {getattr(params, field).value}")
    return params
