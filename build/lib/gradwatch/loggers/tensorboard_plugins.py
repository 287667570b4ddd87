"""TensorBoard's own plugins, written as plain summaries (no TensorFlow needed).

- ``custom_scalars``: the layout of the CUSTOM SCALARS page, one multi-line chart per
  question (every layer's gradient norm in one chart, ...). Charts match tags by regular
  expression (Python's ``re.match``), so the layout needs no list of layers and works for
  any network and for tags with an optimizer prefix.
- ``hparams``: one session per run (its hyperparameters, and the metrics to show next to
  them), so the HPARAMS tab compares the jobs of a sweep.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from gradwatch.loggers.tensorboard import LOG10

#: The one-value keys among ``grad_norm/...``; every other ``grad_norm/<name>`` is a layer.
AGGREGATES = ("total", "first_last_ratio", "clipped_total", "amp_skipped")
CUSTOM_SCALARS_TAG = "custom_scalars__config__"
_ANY_PREFIX = r"(?:.*/)?"  # an optimizer's prefix, if any: re.match anchors at the start


def per_layer(kind: str) -> str:
    """A regex for every layer's ``<kind>/<layer>`` tag, the aggregates excluded."""
    aggregates = "|".join(AGGREGATES)
    return rf"{_ANY_PREFIX}{kind}/(?!(?:{aggregates})(?:$|[/_@:.-]))"


def aggregate(kind: str, *names: str) -> str:
    """A regex for the aggregate tags ``<kind>/<name>`` (with an optimizer suffix, if any)."""
    return rf"{_ANY_PREFIX}{kind}/(?:{'|'.join(names)})(?:$|[/_@:.-])"


def layout(log10: Iterable[str] = ()) -> layout_pb2.Layout:
    """The CUSTOM SCALARS page. Kinds in ``log10`` (``grad_norm``, ``update_ratio``) are
    charted through their log10 companions: TensorBoard's layout cannot ask for a log axis
    (each card's own log-scale button can, by hand), and these values span many decades."""
    log10 = set(log10)

    def name(kind: str) -> tuple[str, str]:
        return (LOG10 + kind, " (log10)") if kind in log10 else (kind, "")

    grad, grad_note = name("grad_norm")
    update, update_note = name("update_ratio")
    main = [
        ("gradient norm per layer" + grad_note, [per_layer(grad)]),
        (
            "first/last gradient-norm ratio" + grad_note + ": below 1e-2 vanishing, above "
            "1e2 exploding (the callback's default band)",
            [aggregate(grad, "first_last_ratio")],
        ),
        (
            "total gradient norm, before and after clipping" + grad_note,
            [aggregate(grad, "total", "clipped_total")],
        ),
        ("update ratio per layer: |step's change| / |weights|" + update_note, [per_layer(update)]),
        ("weight norm per layer", [per_layer("weight_norm")]),
        (
            "activation saturation and dead fraction per layer",
            [rf"{_ANY_PREFIX}activation/.*/(?:saturation|dead)$"],
        ),
    ]
    training = [
        ("loss", [r"(?:train|val|test)/loss$"]),
        ("accuracy", [r"(?:train|val|test)/acc$"]),
    ]
    categories = [
        _category("gradwatch: do the gradients vanish or explode?", main),
        _category("training", training),
    ]
    if log10 & {"grad_norm", "update_ratio"}:
        raw = [
            ("gradient norm per layer", [per_layer("grad_norm")]),
            ("first/last gradient-norm ratio", [aggregate("grad_norm", "first_last_ratio")]),
            ("update ratio per layer", [per_layer("update_ratio")]),
        ]
        categories.append(
            _category("raw values (linear axis; each card's log-scale button)", raw, closed=True)
        )
    return layout_pb2.Layout(category=categories)


def _category(title: str, charts: list[tuple[str, list[str]]], closed: bool = False):
    return layout_pb2.Category(
        title=title,
        closed=closed,
        chart=[
            layout_pb2.Chart(title=t, multiline=layout_pb2.MultilineChartContent(tag=tags))
            for t, tags in charts
        ],
    )


def layout_summary(log10: Iterable[str] = ()) -> Summary:
    """The layout as the ``custom_scalars`` plugin reads it (what ``add_custom_scalars`` writes)."""
    tensor = TensorProto(
        dtype="DT_STRING",
        string_val=[layout(log10).SerializeToString()],
        tensor_shape=TensorShapeProto(),
    )
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="custom_scalars"))
    return Summary(value=[Summary.Value(tag=CUSTOM_SCALARS_TAG, tensor=tensor, metadata=metadata)])


def _hparams_summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    metadata = hparams_metadata.create_summary_metadata(data)
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata)])


def hparam_value(value) -> bool | float | str:
    """A value the hparams plugin shows: bool, number or string (``None`` -> ``"none"``)."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return "none" if value is None else str(value)


def experiment_summary(hparams: Mapping, metrics: Iterable[tuple[str, str]]) -> Summary:
    """The HPARAMS tab's columns: these hyperparameters, and the metrics ``(tag, display
    name)``, each the last value of that scalar tag in the session's run."""
    types = {bool: "DATA_TYPE_BOOL", str: "DATA_TYPE_STRING"}
    hparam_infos = [
        api_pb2.HParamInfo(
            name=name, type=api_pb2.DataType.Value(types.get(type(v), "DATA_TYPE_FLOAT64"))
        )
        for name, v in hparams.items()
    ]
    metric_infos = [
        api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=display)
        for tag, display in metrics
    ]
    experiment = api_pb2.Experiment(hparam_infos=hparam_infos, metric_infos=metric_infos)
    data = plugin_data_pb2.HParamsPluginData(experiment=experiment, version=0)
    return _hparams_summary(hparams_metadata.EXPERIMENT_TAG, data)


def session_start_summary(hparams: Mapping) -> Summary:
    """This run as a session: its hyperparameter values."""
    info = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for name, value in hparams.items():
        if isinstance(value, bool):
            info.hparams[name].bool_value = value
        elif isinstance(value, (int, float)):
            info.hparams[name].number_value = value
        else:
            info.hparams[name].string_value = str(value)
    data = plugin_data_pb2.HParamsPluginData(session_start_info=info, version=0)
    return _hparams_summary(hparams_metadata.SESSION_START_INFO_TAG, data)


def session_end_summary(success: bool) -> Summary:
    status = api_pb2.Status.Value("STATUS_SUCCESS" if success else "STATUS_FAILURE")
    info = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
    data = plugin_data_pb2.HParamsPluginData(session_end_info=info, version=0)
    return _hparams_summary(hparams_metadata.SESSION_END_INFO_TAG, data)
