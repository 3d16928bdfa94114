"""Helpers for the book "Checkpoints vs SavedModel": each module is named after a noun of the book.

Checkpoints (chapters 1-3):
- `helpers.toy`: the toy model, data, training step and checkpointing loop.
- `helpers.checkpoints`: a checkpoint's files, keys and object graph; clear errors for bad paths
  and damaged files; interrupted saves; restoring the newest checkpoint that loads (chapter 10).
- `helpers.resumable`: a training run that is SIGKILLed at chosen moments and resumes; the process
  launcher and the kill loop of chapter 10.
- `helpers.graph`: the object graph drawn in the official guide's colours.

SavedModels (chapters 4-7):
- `helpers.savedmodel`: signature summaries, `saved_model_cli`, clear errors for bad paths.
- `helpers.disk`: directory trees and sizes.  `helpers.imagenet`: MobileNet's ImageNet weights from
  the network or Keras's cache, else a labelled stand-in; a corrupt cached file is named.
- `helpers.litert`: running LiteRT models and catching weightless conversions.
- `helpers.measure`: medians of repeated timings, with an untimed setup.
- `helpers.model_server`: a model server as a child process (start, wait until ready, stop by PID);
  `helpers.kserve_engine`: TF Serving's REST API on KServe, where the real server is absent, built
  from `helpers.servable` (a SavedModel as a KServe model), `helpers.tf_serving_json` (TF Serving's
  JSON rules), `helpers.request_guard` and `helpers.request_pool` (the limits every request passes)
  and `helpers.connection_guard` (the limits every connection passes).

Serving in production (chapter 13):
- `helpers.serving_protos`: TF Serving's config and request messages, where `tensorflow-serving-api`
  is not installed; `helpers.serving_config`: the model config and batching files, checked, and
  the offline engine per model (`serve_layout`); `helpers.warmup`: the recorded warm-up requests;
  `helpers.inference_service`: KServe manifests checked against KServe's own classes;
  `helpers.contract`: golden requests from a signature, replayed against a new export.

Measured (chapter 9):
- `helpers.benchmark`: every format's save and load against the disk's limit (fsync, cold cache,
  a fresh process per load).

Trust (chapter 11):
- `helpers.sandbox`: loading a model you did not write in a child process with a time limit, a
  memory limit, a fresh HOME and no network.

Beyond one machine (chapter 12):
- `helpers.distributed`: a 2-worker MultiWorkerMirroredStrategy cluster on 127.0.0.1 (TF_CONFIG,
  free ports), its checkpointing workers, and the cleanup that leaves no process behind.

Around the book: `helpers.environment` (version checks), `helpers.legacy` (running Keras 2 code),
`helpers.table` and `helpers.display` (printing tables, showing helper source). `helpers._child`
(private) is how `saved_model_cli`, the LiteRT converter and legacy Keras run as child processes.
"""
