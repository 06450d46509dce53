"""Generated carrier tracking events for the landing table ``shipment_events`` (ARCHITECTURE
§2.6): ``bronze seed`` writes them as JSON Lines below ``$BRONZE_LANDING_ROOT/shipment_events/``,
≈ 2 events per shipment, with the seed's defect rate (NULL or unknown status, orphan shipment ids,
unparseable times), every fourth file with an extra field (``carrier_code``) and some bad lines.
With ``payload`` (the landing benchmark) each event also carries what carriers send beside the
tracking status (≈ 1 KB: tracking number, carrier, scan and dimensions objects, a description and
a signature image reference), which the table adds as new columns."""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from pyarrow import fs

from bronze_assets.contracts import LANDING_CONTRACTS
from bronze_assets.demo.generator import SeedOptions

EVENTS = LANDING_CONTRACTS["shipment_events"]
STATUSES = next(r.values for r in EVENTS.quality.formats if r.column == "status")
EVENTS_PER_FILE = 5000
BAD_LINE = '{"event_id": 0, "status": "IN_TRANSIT", "location": "cut off'  # a line the carrier truncated


@dataclass
class EventFiles:
    """What was written: files, events and the defects by kind."""

    files: list[str] = field(default_factory=list)
    events: int = 0
    defects: dict[str, int] = field(default_factory=dict)


def _events(shipments: int, options: SeedOptions, rng: np.random.Generator) -> tuple[pl.DataFrame, dict]:
    per = rng.integers(1, 4, shipments)  # 1–3 events per shipment: ≈ 2
    shipment_id = np.repeat(np.arange(1, shipments + 1), per)
    n = shipment_id.size
    seconds = rng.integers(0, 30 * 86400, n)
    at = pl.Series((np.datetime64(options.as_of.replace(tzinfo=None), "s")
                    - seconds.astype("timedelta64[s]")).astype("datetime64[ms]"))
    status = pl.Series(np.array(STATUSES)[rng.integers(0, len(STATUSES), n)])
    frame = pl.DataFrame({"event_id": np.arange(1, n + 1), "shipment_id": shipment_id,
                          "event_time": at.dt.strftime("%Y-%m-%dT%H:%M:%S+00:00"), "status": status,
                          "location": pl.Series(rng.integers(1, 400, n))})
    frame = frame.with_columns(pl.concat_str(pl.lit("hub "), pl.col("location").cast(pl.String).str
                                             .pad_start(3, "0")).alias("location"))
    defect = {kind: rng.random(n) < options.defect_rate for kind in
              ("null_status", "unknown_status", "orphan_shipment", "bad_time")}
    frame = frame.with_columns(
        pl.when(pl.Series(defect["null_status"])).then(None).otherwise(pl.col("status")).alias("status"))
    frame = frame.with_columns(
        pl.when(pl.Series(defect["unknown_status"])).then(pl.lit("LOST")).otherwise(pl.col("status"))
        .alias("status"),
        pl.when(pl.Series(defect["orphan_shipment"])).then(pl.col("shipment_id") + shipments + 1_000_000)
        .otherwise(pl.col("shipment_id")).alias("shipment_id"),
        pl.when(pl.Series(defect["bad_time"])).then(pl.lit("unknown")).otherwise(pl.col("event_time"))
        .alias("event_time"))
    return frame, {k: int(v.sum()) for k, v in defect.items()}


_WORDS = ["parcel", "scanned", "at", "sorting", "facility", "arrived", "departed", "hub", "delivery",
          "attempt", "customer", "not", "home", "left", "with", "neighbour", "held", "depot", "awaiting",
          "clearance", "customs", "released", "loaded", "onto", "vehicle", "transferred", "to", "partner",
          "address", "corrected", "weather", "delay", "rerouted", "signature", "obtained", "damaged",
          "returned", "sender", "pickup", "point", "notified", "driver", "en", "route"]
_CARRIERS = (("UPS", "United Parcel Service", "EXPRESS_SAVER"), ("DHL", "DHL Express", "WORLDWIDE"),
             ("FDX", "FedEx", "INTERNATIONAL_PRIORITY"), ("DPD", "DPD", "CLASSIC"),
             ("GLS", "GLS", "BUSINESS"))


def _payload(frame: pl.DataFrame, rng: np.random.Generator) -> pl.DataFrame:
    """What a carrier's event carries beside the status (≈ 1 KB per event)."""
    n = frame.height
    sentences = [" ".join(rng.choice(_WORDS, 40)) for _ in range(2000)]
    carrier = rng.integers(0, len(_CARRIERS), n)
    signature = np.frombuffer(rng.bytes(n * 210), dtype="S210")
    return frame.with_columns(
        pl.format("1Z{}{}", pl.Series(rng.integers(10**7, 10**8, n)), pl.col("event_id"))
        .alias("tracking_number"),
        pl.struct(pl.Series("code", [_CARRIERS[c][0] for c in carrier]),
                  pl.Series("name", [_CARRIERS[c][1] for c in carrier]),
                  pl.Series("service", [_CARRIERS[c][2] for c in carrier])).alias("carrier"),
        pl.struct(pl.col("location").alias("facility"),
                  pl.format("D-{}", pl.Series(rng.integers(10000, 99999, n))).alias("device_id"),
                  pl.format("op {}", pl.Series(rng.integers(1, 5000, n))).alias("operator"),
                  pl.Series("lat", np.round(rng.uniform(35, 60, n), 5)),
                  pl.Series("lon", np.round(rng.uniform(-10, 30, n), 5)),
                  pl.Series("accuracy_m", rng.integers(1, 50, n))).alias("scan"),
        pl.struct(pl.Series("weight_kg", np.round(rng.uniform(0.1, 30, n), 2)),
                  pl.Series("length_cm", rng.integers(10, 120, n)),
                  pl.Series("width_cm", rng.integers(10, 80, n)),
                  pl.Series("height_cm", rng.integers(5, 60, n))).alias("dimensions"),
        pl.Series("description", np.array(sentences)[rng.integers(0, len(sentences), n)]),
        pl.Series("signature", [base64.b64encode(s).decode() for s in signature]),
    )


def write_event_files(root: str, shipments: int, options: SeedOptions, payload: bool = False,
                      with_bad_lines: bool = True) -> EventFiles:
    """Write the events of ``shipments`` shipments below ``<root>/shipment_events/`` (``root``:
    ``$BRONZE_LANDING_ROOT``, a path or URI); a local file's modification time is set a minute
    back, so a landing run right after the seed takes it. ``payload``: see the module docstring;
    ``with_bad_lines`` false: every line is a JSON object (files other readers can read whole)."""
    out = EventFiles()
    if shipments <= 0:
        return out
    rng = np.random.default_rng(options.seed + 24)
    frame, out.defects = _events(shipments, options, rng)
    if payload:
        frame = _payload(frame, rng)
    filesystem, base = fs.FileSystem.from_uri(f"{root.rstrip('/')}/{EVENTS.name}")
    filesystem.create_dir(base, recursive=True)
    day = options.as_of.strftime("%Y%m%d")
    bad_lines = 0
    for i, start in enumerate(range(0, frame.height, EVENTS_PER_FILE)):
        chunk = frame.slice(start, EVENTS_PER_FILE)
        if i % 4 == 3:  # a carrier that started sending a field the contract does not list
            chunk = chunk.with_columns(pl.lit("CC").alias("carrier_code"))
        lines = chunk.write_ndjson().splitlines()
        rate = options.defect_rate if with_bad_lines else 0
        bad = int(rng.binomial(len(lines), rate)) if rate else 0
        for position in sorted(rng.integers(0, len(lines) + 1, bad), reverse=True):
            lines.insert(int(position), BAD_LINE)
        bad_lines += bad
        path = f"{base}/{day}/events-{i:04d}.jsonl"
        filesystem.create_dir(f"{base}/{day}", recursive=True)
        with filesystem.open_output_stream(path) as stream:
            stream.write(("\n".join(lines) + "\n").encode())
        if isinstance(filesystem, fs.LocalFileSystem):
            stamp = time.time() - 60
            os.utime(path, (stamp, stamp))
        out.files.append(path)
    out.events = frame.height
    out.defects["bad_lines"] = bad_lines
    return out
