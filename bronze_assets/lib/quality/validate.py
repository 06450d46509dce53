"""Run a contract's GX suite over a batch (GX's pandas engine, in bounded chunks).

GX objects are built once per process: :func:`suite_runner` keeps one :class:`SuiteRunner`
(context, suite, checkpoint) per contract, load date and docs folder, and the Data Docs views
compile their templates once (:mod:`bronze_assets.lib.quality.docs`).
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from bronze_assets.contracts import Contract
from bronze_assets.lib.enrich.score import score_columns, violations
from bronze_assets.lib.quality.suites import build_suite

CHUNK_ROWS = 250_000  # per GX run: larger chunks cost less CPU per row, smaller ones less memory
SAMPLE_KEYS = 5


@dataclass
class QualityReport:
    """Violation counts per rule from GX and from the vectorised score, plus failing keys."""

    rows: int = 0
    gx_counts: dict[str, int] = field(default_factory=dict)
    vector_counts: dict[str, int] = field(default_factory=dict)
    failing_keys: dict[str, list[Any]] = field(default_factory=dict)
    docs_url: str | None = None  # Data Docs page of the latest validation (when docs are built)

    def add(self, other: QualityReport) -> None:
        self.rows += other.rows
        for name in ("gx_counts", "vector_counts"):
            mine, theirs = getattr(self, name), getattr(other, name)
            for rule, n in theirs.items():
                mine[rule] = mine.get(rule, 0) + n
        for rule, keys in other.failing_keys.items():
            bucket = self.failing_keys.setdefault(rule, [])
            bucket.extend(keys[: SAMPLE_KEYS - len(bucket)])

    @property
    def agree(self) -> bool:
        """GX and the per-record score count the same violations for every score rule."""
        return all(self.gx_counts.get(rule) == n for rule, n in self.vector_counts.items())


DOCS_SITE = "bronze"
BATCHES_SOURCE = "bronze_batches"  # the GX data source the staged chunks are handed to
RUNNERS_KEPT = 64  # runners cached per process (least recently used dropped beyond that)

_runners: OrderedDict[tuple[Contract, date, Path | None], SuiteRunner] = OrderedDict()
_runners_lock = threading.Lock()


def docs_dir(contract: Contract, data_dir: Path) -> Path:
    """Where the GX Data Docs of ``contract`` are built, under the data folder ``data_dir``."""
    return data_dir / "gx_docs" / contract.bronze_table


def suite_runner(contract: Contract, load_date: date, docs_dir: Path | None = None) -> SuiteRunner:
    """The process's :class:`SuiteRunner` for this contract, load date and docs folder.

    Built on first use; later checks of the same table reuse its context, suite and checkpoint.
    """
    key = (contract, load_date, docs_dir)
    with _runners_lock:
        runner = _runners.get(key)
        if runner is not None:
            _runners.move_to_end(key)
            return runner
    runner = SuiteRunner(contract, load_date, docs_dir)
    with _runners_lock:
        runner = _runners.setdefault(key, runner)
        _runners.move_to_end(key)
        while len(_runners) > RUNNERS_KEPT:
            _runners.popitem(last=False)
    return runner


class SuiteRunner:
    """Validates batches of one contract with one ephemeral GX context (built once).

    With ``docs_dir`` each call also renders GX Data Docs there; ``docs_url`` is then the
    page of the latest validation. A runner may be reused (:func:`suite_runner`): each
    :meth:`validate_batches` call starts from an empty validation-results store, so the docs
    index lists (and GX keeps the pages of) that call's validations only, as with a new runner.
    """

    def __init__(self, contract: Contract, load_date: date, docs_dir: Path | None = None) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        from bronze_assets.lib.quality import docs

        for name in ("great_expectations", "great_expectations.data_context.types.base"):
            logging.getLogger(name).setLevel(logging.WARNING)  # GX sets its own levels on import
        _skip_batch_fingerprint()
        _narrow_column_domains()
        _compare_dates_vectorised()
        _fresh_once()

        self.lock = threading.RLock()
        self.contract, self.load_date = contract, load_date
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        source = self.context.data_sources.add_pandas(BATCHES_SOURCE)
        asset = source.add_dataframe_asset(contract.bronze_table)
        self.batch_definition = asset.add_batch_definition_whole_dataframe("staged")
        self.suite = self.context.suites.add(build_suite(contract, load_date))
        self.docs_dir = docs_dir
        self.docs_url: str | None = None
        if docs_dir is not None:
            docs_dir.mkdir(parents=True, exist_ok=True)
            self.context.add_data_docs_site(site_name=DOCS_SITE, site_config={
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                                  "base_directory": str(docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder", "view": docs.INDEX_VIEW},
                "site_section_builders": {section: {"view": docs.VIEW}
                                          for section in ("expectations", "validations", "profiling")},
            })
        definition = self.context.validation_definitions.add(gx.ValidationDefinition(
            name=f"{contract.bronze_table}_staged", data=self.batch_definition, suite=self.suite))
        self.checkpoint = self.context.checkpoints.add(gx.Checkpoint(
            name=f"{contract.bronze_table}_checkpoint", validation_definitions=[definition], actions=[],
            # BASIC: counts and a few unexpected values; SUMMARY would also collect every
            # unexpected row's index and a query for them (≈10 % of a validation), unused here
            result_format={
                "result_format": "BASIC",
                "partial_unexpected_count": SAMPLE_KEYS,
            },
        ))
        _known_fresh(self, [*self.checkpoint.validation_definitions, self.checkpoint])
        used = {*contract.merge_key, *score_columns(contract)}
        self.columns = [c for c in dict.fromkeys([*contract.column_names, *contract.merge_key]) if c in used]
        self.vector_rules = violations(contract, load_date)

    def validate(self, table: pa.Table) -> QualityReport:
        """Counts for one batch; GX reports counts and a few failing keys, not every index."""
        with self.lock:
            validated: list[Any] = []
            report = self._validate(table, validated)
            self._build_docs(validated)
            report.docs_url = self.docs_url
            return report

    def _build_docs(self, validated: list[Any]) -> None:
        """Render the Data Docs of this call's validations at once: each chunk's page, the suite's
        page and the index once (GX's docs action would render the suite and the index again
        after every chunk)."""
        if self.docs_dir is None or not validated:
            return
        from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

        self.context.build_data_docs(site_names=[DOCS_SITE], resource_identifiers=[
            *validated, ExpectationSuiteIdentifier(name=self.suite.name)])
        urls = self.context.get_docs_sites_urls(resource_identifier=validated[-1], site_names=[DOCS_SITE])
        self.docs_url = urls[0]["site_url"] if urls else None

    def _validate(self, table: pa.Table, validated: list[Any],
                  sampled: dict[str, list[Any]] | None = None) -> QualityReport:
        """One chunk's counts; ``sampled``: the failing keys earlier chunks found, by rule."""
        sampled = sampled or {}
        report = QualityReport(rows=table.num_rows)
        if not table.num_rows:
            return report
        columns = self.columns
        # numpy-backed frames: GX converts Arrow-backed columns element by element (8x slower)
        subset = table.select(columns)
        subset = subset.cast(pa.schema([pa.field(f.name, _gx_type(f.type)) for f in subset.schema]))
        frame = subset.to_pandas()
        del subset
        try:
            run = self.checkpoint.run(batch_parameters={"dataframe": frame})
        finally:
            del frame
            self._release_batch()
        ((identifier, result),) = run.run_results.items()
        validated.append(identifier)
        for r in result.results:
            rule = r.expectation_config.meta["rule"]
            if r.exception_info and r.exception_info.get("raised_exception"):
                raise RuntimeError(f"{self.contract.bronze_table}: GX failed on {rule}: "
                                   f"{r.exception_info.get('exception_message')}")
            report.gx_counts[rule] = int(r.result.get("unexpected_count") or 0)
        polars_frame = pl.from_arrow(table.select(columns))
        assert isinstance(polars_frame, pl.DataFrame)
        counts = polars_frame.select([e.sum().alias(rule) for rule, e in self.vector_rules.items()])
        report.vector_counts = {rule: int(counts[rule][0]) for rule in self.vector_rules}
        # failing keys come from the vectorised rules (GX would walk every unexpected row for them):
        # the key column alone filtered, for the rules whose sample earlier chunks have not filled
        pk = self.contract.merge_key[0]
        wanted = {rule: pl.col(pk).filter(expr).head(SAMPLE_KEYS).implode().alias(rule)
                  for rule, expr in self.vector_rules.items()
                  if report.vector_counts[rule] and len(sampled.get(rule, ())) < SAMPLE_KEYS}
        if wanted:
            keys = polars_frame.select(list(wanted.values())).row(0, named=True)
            report.failing_keys = {rule: [_plain(k) for k in keys[rule]] for rule in wanted}
        return report

    def _release_batch(self) -> None:
        """Drop GX's references to the chunk it validated: its pandas engine keeps the last batch
        in its cache (otherwise that frame lives on while the next chunk's is built), and the
        metrics it computed (row masks and column values: ≈ 9 MB for a 250k-row chunk), which
        each table's runner would otherwise keep in the service until its next validation."""
        engine = self.context.data_sources.get(BATCHES_SOURCE).get_execution_engine()
        batches = engine.batch_manager
        batches.batch_data_cache.clear()
        batches.reset_batch_cache()
        metrics = getattr(engine, "_metric_cache", None)  # GX's per-engine cache of resolved metrics
        if isinstance(metrics, dict):
            metrics.clear()

    def validate_batches(self, batches: Iterable[pa.RecordBatch]) -> QualityReport:
        """Validate a stream in bounded chunks and add up the counts."""
        with self.lock:
            self._forget_results()
            total, pending, size, validated = QualityReport(), [], 0, []
            for batch in batches:
                pending.append(batch)
                size += batch.num_rows
                if size >= CHUNK_ROWS:
                    total.add(self._validate(pa.Table.from_batches(pending), validated, total.failing_keys))
                    pending, size = [], 0
            if pending:
                total.add(self._validate(pa.Table.from_batches(pending), validated, total.failing_keys))
            self._build_docs(validated)
            total.docs_url = self.docs_url
            return total

    def _forget_results(self) -> None:
        """Drop earlier validation results (memory stays bounded; the index shows this call's)."""
        store = self.context.validation_results_store
        for key in store.list_keys():
            store.remove_key(key)
        self.docs_url = None


def _gx_type(t: pa.DataType) -> pa.DataType:
    """The Arrow type a column is handed to GX in: decimals as float64 (exact for the sign tests
    of the range rules), not Decimal objects; narrower integers as int64, which GX's range
    expectation compares vectorised (it compares other integer dtypes value by value)."""
    if pa.types.is_decimal(t):
        return pa.float64()
    if pa.types.is_signed_integer(t) or t in (pa.uint8(), pa.uint16(), pa.uint32()):
        return pa.int64()
    return t


def _once_per_process(patch: Callable[[], None]) -> Callable[[], None]:
    """``patch`` (of GX's process-wide registries and classes) applied once per process."""
    done = False

    @functools.wraps(patch)
    def once() -> None:
        nonlocal done
        with _runners_lock:
            if done:
                return
            done = True
        patch()

    return once


def _skip_batch_fingerprint() -> None:
    """GX's pandas engine hashes every row of a batch under 1 GB (``HASH_THRESHOLD``) for a batch
    marker, ``pandas_data_fingerprint``, that no expectation reads (≈20 % of a validation's CPU);
    with the threshold at 0 it skips the hash for every frame, as it does for larger ones."""
    from great_expectations.execution_engine import pandas_execution_engine

    pandas_execution_engine.HASH_THRESHOLD = 0


@_once_per_process
def _narrow_column_domains() -> None:
    """Hand GX's pandas engine one column, not the whole frame, for a column's metrics.

    A column map expectation drops the rows whose value is NULL before testing the others, and
    GX's engine does it on the whole frame (every column of the chunk copied), twice per
    expectation: for its condition and again for its unexpected values (the ``BASIC`` result's
    partial list). Here the column's condition gets a one-column frame (its compute domain) and
    the unexpected values filter the column alone: the same rows, values and order. Once per
    process (the registry of metric providers is GX's, process-wide)."""
    import pandas as pd
    from great_expectations.core.metric_domain_types import MetricDomainTypes
    from great_expectations.execution_engine import PandasExecutionEngine
    from great_expectations.expectations import registry

    try:  # GX 1.24's internals: a GX whose internals differ keeps its own engine, unchanged
        from great_expectations.expectations.metrics.map_metric_provider import (
            column_map_condition_auxilliary_methods as auxiliary,
        )
        from great_expectations.expectations.metrics.util import get_dbms_compatible_metric_domain_kwargs

        gx_values, max_records = auxiliary._pandas_column_map_condition_values, auxiliary.MAX_RESULT_RECORDS
        metrics_registered = registry._registered_metrics
    except (ImportError, AttributeError):
        return

    compute_domain = PandasExecutionEngine.get_compute_domain

    def column_domain(self: Any, domain_kwargs: dict, domain_type: Any, accessor_keys: Any = None) -> Any:
        data, compute, accessor = compute_domain(self, domain_kwargs, domain_type, accessor_keys)
        column = accessor.get("column")
        if MetricDomainTypes(domain_type) is MetricDomainTypes.COLUMN and isinstance(data, pd.DataFrame) \
                and column in data.columns:
            data = data[[column]]
        return data, compute, accessor

    def column_values(cls: Any, execution_engine: Any, metric_domain_kwargs: dict, metric_value_kwargs: dict,
                      metrics: dict[str, Any], **kwargs: Any) -> list[Any]:
        unexpected, compute, accessor = metrics["unexpected_condition"]
        accessor = get_dbms_compatible_metric_domain_kwargs(metric_domain_kwargs=accessor,
                                                            batch_columns_list=metrics["table.columns"])
        if "column" not in accessor:  # GX raises its error
            return gx_values(cls, execution_engine, metric_domain_kwargs, metric_value_kwargs, metrics,
                             **kwargs)
        values = execution_engine.get_domain_records(domain_kwargs=compute)[accessor["column"]]
        if kwargs.get("filter_column_isnull", getattr(cls, "filter_column_isnull", False)):
            values = values[values.notnull()]
        values = values[unexpected == True]  # noqa: E712 (GX's own test: a boolean Series)
        result_format = metric_value_kwargs["result_format"]
        if result_format["result_format"] == "COMPLETE":
            return list(values[:max_records])
        return list(values[:min(result_format["partial_unexpected_count"], max_records)])

    column_values.metric_fn_type = getattr(gx_values, "metric_fn_type", None)  # type: ignore[attr-defined]
    PandasExecutionEngine.get_compute_domain = column_domain  # type: ignore[method-assign]
    for metric in metrics_registered.values():
        providers = metric.get("providers", {})
        provider = providers.get(PandasExecutionEngine.__name__)
        if provider is not None and provider[1] is gx_values:
            providers[PandasExecutionEngine.__name__] = (provider[0], column_values)


@_once_per_process
def _compare_dates_vectorised() -> None:
    """Compare a column of dates with a range rule's date bounds as one array, not value by value.

    Arrow's dates reach pandas as ``datetime.date`` objects, and GX's range condition
    (``column_values.between``) compares such a column value by value in Python (its vectorised
    path takes int, float and ``datetime64[ns]`` columns only): 990,500 calls a load at scale 10.
    Here a column whose present values are all dates (not datetimes), against date bounds, is
    compared with NumPy's comparison loop over the same objects (GX's ``<=`` / ``<`` on each
    value, without a Python call per value): the same rows fail; anything else is GX's own
    condition. Once per process (the registry of metric providers is GX's, process-wide)."""
    import numpy as np
    import pandas as pd
    from great_expectations.core.metric_domain_types import MetricDomainTypes
    from great_expectations.execution_engine import PandasExecutionEngine
    from great_expectations.expectations import registry

    try:  # GX 1.24's internals: a GX whose internals differ keeps its own condition, unchanged
        from great_expectations.expectations.metrics.util import get_dbms_compatible_metric_domain_kwargs

        providers = registry._registered_metrics["column_values.between.condition"]["providers"]
        metric_class, gx_condition = providers[PandasExecutionEngine.__name__]
        drop_nulls = gx_condition.metric_definition_kwargs.get(
            "filter_column_isnull", getattr(metric_class, "filter_column_isnull", True))
    except (ImportError, AttributeError, KeyError, TypeError, ValueError):
        return

    def condition(cls: Any, execution_engine: Any, metric_domain_kwargs: dict, metric_value_kwargs: dict,
                  metrics: dict[str, Any], runtime_configuration: dict) -> Any:
        low, high = metric_value_kwargs.get("min_value"), metric_value_kwargs.get("max_value")
        bounds = [b for b in (low, high) if b is not None]
        if drop_nulls and bounds and all(type(b) is date for b in bounds) and (low is None or high is None
                                                                              or low <= high):
            domain = get_dbms_compatible_metric_domain_kwargs(metric_domain_kwargs=metric_domain_kwargs,
                                                              batch_columns_list=metrics["table.columns"])
            frame, compute, accessor = execution_engine.get_compute_domain(
                domain_kwargs=domain, domain_type=MetricDomainTypes.COLUMN)
            column = frame[accessor["column"]]
            column = column[column.notnull()]
            if column.dtype == object and pd.api.types.infer_dtype(column, skipna=False) == "date":
                values, meets = column.to_numpy(), np.ones(len(column), dtype=bool)
                strict_min, strict_max = (metric_value_kwargs.get(k) for k in ("strict_min", "strict_max"))
                if low is not None:  # GX's comparison of each value, in one loop of NumPy's
                    meets &= np.asarray(values > low if strict_min else values >= low, dtype=bool)
                if high is not None:
                    meets &= np.asarray(values < high if strict_max else values <= high, dtype=bool)
                return ~pd.Series(meets, index=column.index), compute, accessor
        return gx_condition(cls, execution_engine, metric_domain_kwargs, metric_value_kwargs, metrics,
                            runtime_configuration)

    functools.update_wrapper(condition, gx_condition)  # GX's marks: engine, function type, domain
    providers[PandasExecutionEngine.__name__] = (metric_class, condition)


_fresh: dict[int, tuple[Any, Any]] = {}  # id -> (a runner's checkpoint or definition, its diagnostics)
@_once_per_process
def _fresh_once() -> None:
    """GX checks before every run of a checkpoint, and again of its validation definition, that
    each still equals its stored copy (the suite's and the definition's serialized and compared:
    ≈12 ms a chunk, 7 % of a validation). A runner's checkpoint and definition are built, stored
    and never changed (:func:`_known_fresh`): their first diagnostics are answered again."""
    from great_expectations.checkpoint.checkpoint import Checkpoint
    from great_expectations.core.validation_definition import ValidationDefinition

    for kind in (Checkpoint, ValidationDefinition):
        def is_fresh(self: Any, check: Any = kind.is_fresh) -> Any:
            known = _fresh.get(id(self))
            return known[1] if known is not None and known[0] is self else check(self)

        kind.is_fresh = is_fresh  # type: ignore[method-assign]


def _known_fresh(runner: SuiteRunner, built: list[Any]) -> None:
    """Check the freshness of ``runner``'s GX objects once (definitions first: the checkpoint's
    check asks theirs) and keep each successful answer while the runner lives."""
    kept = []
    for gx_object in built:
        diagnostics = gx_object.is_fresh()
        if diagnostics.success:
            _fresh[id(gx_object)] = (gx_object, diagnostics)
            kept.append(id(gx_object))
    weakref.finalize(runner, _forget_fresh, kept)


def _forget_fresh(ids: list[int]) -> None:
    for key in ids:
        _fresh.pop(key, None)


def _plain(value: Any) -> Any:
    """A JSON-friendly key (GX hands back numpy scalars)."""
    return value.item() if hasattr(value, "item") else value
