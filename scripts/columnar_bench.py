#!/usr/bin/env python3
"""Columnar hospitals against their peers, on one Parquet table, in one run
(long suite; CI runs `tests/columnar.rs` instead).

A SYNTHETIC table (not patient data: 30 standard-normal features shifted and
scaled per column, a label from a linear rule plus logistic noise) is
written with pyarrow (snappy, row groups of 524,288 rows, as Spark writes
128 MB blocks), read once to warm the page cache, then each of these
streams it and reports rows per second:

- pyarrow: reading the feature and label columns with its multi-threaded
  reader into one in-memory table (the decoding ceiling);
- numpy: a streaming full-batch logistic-regression gradient pass
  (pyarrow batches -> float64 matrix -> X^T (sigmoid(Xw) - y));
- PySpark (local[N]): the same gradient pass as one DataFrame aggregation,
  and LogisticRegression(maxIter=10) (row-iterations per second);
- medfed (models/benches/columnar_pass.rs): a decode-only pass, the
  gradient pass, 10 full-batch steps and one mini-batch SGD epoch.

usage: scripts/columnar_bench.py [--rows 10000000] [--features 30]
       [--threads 2] [--dir /tmp/medfed-columnar-bench] [--skip-spark]
Needs: a venv with pyspark, pyarrow and numpy (`python3 -m venv V && V/bin/pip
install pyspark==4.3.0 pyarrow==26.0.1 numpy==2.4.6`; Java 17), run with
V/bin/python. Prints a table and, last, one JSON line.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
ROW_GROUP = 524_288


def write_table(path, rows, features, seed=42):
    """The SYNTHETIC table, written in row groups, never whole in memory."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=features) * 2.0 / np.sqrt(features)
    means = rng.uniform(-50, 50, size=features)
    scales = rng.uniform(0.1, 20, size=features)
    bias = rng.uniform(-0.5, 0.5)
    names = [f"x{j}" for j in range(features)]
    schema = pa.schema([(n, pa.float64()) for n in names] + [("label", pa.int64())])
    metadata = {
        b"medfed.synthetic": b"SYNTHETIC table from scripts/columnar_bench.py: not patient data"
    }
    with pq.ParquetWriter(path, schema.with_metadata(metadata), compression="snappy") as writer:
        done = 0
        while done < rows:
            n = min(ROW_GROUP, rows - done)
            z = rng.standard_normal((n, features))
            logit = z @ weights + bias
            u = rng.uniform(np.finfo(float).eps, 1.0, size=n)
            label = (logit + np.log(u / (1 - u)) > 0).astype(np.int64)
            x = means + scales * z
            columns = [pa.array(x[:, j]) for j in range(features)] + [pa.array(label)]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema), row_group_size=ROW_GROUP)
            done += n


def timed(f):
    started = time.perf_counter()
    value = f()
    return value, time.perf_counter() - started


def pyarrow_read(path, columns):
    """The decoding ceiling: pyarrow's multi-threaded reader, whole table."""
    return pq.read_table(path, columns=columns, use_threads=True).num_rows


def numpy_gradient(path, names, mean, std):
    w = np.full(len(names), 0.01)
    grad = np.zeros(len(names) + 1)
    for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536, columns=names + ["label"]):
        x = np.column_stack([batch.column(i).to_numpy() for i in range(len(names))])
        y = batch.column(len(names)).to_numpy()
        z = (x - mean) / std
        r = 1.0 / (1.0 + np.exp(-(z @ w))) - y
        grad[:-1] += z.T @ r
        grad[-1] += r.sum()
    return grad


def moments(path, names):
    n, s, q = 0, np.zeros(len(names)), np.zeros(len(names))
    for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536, columns=names):
        x = np.column_stack([batch.column(i).to_numpy() for i in range(len(names))])
        n += len(x)
        s += x.sum(axis=0)
        q += (x * x).sum(axis=0)
    mean = s / n
    return mean, np.sqrt(np.maximum(q / n - mean * mean, 1e-12))


def spark_measurements(path, names, mean, std, threads, rows):
    from pyspark.sql import SparkSession, functions as F
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import VectorAssembler

    started = time.perf_counter()
    spark = (
        SparkSession.builder.master(f"local[{threads}]")
        .config("spark.driver.memory", "6g")
        .config("spark.sql.shuffle.partitions", str(threads))
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    df = spark.read.parquet(str(path))
    df.count()
    warmup = time.perf_counter() - started
    z = [(F.col(n) - float(m)) / float(s) for n, m, s in zip(names, mean, std)]
    logit = sum(zj * 0.01 for zj in z)
    residual = 1.0 / (1.0 + F.exp(-logit)) - F.col("label")
    aggregations = [F.sum(residual * zj) for zj in z] + [F.sum(residual)]

    def gradient():
        return df.agg(*aggregations).collect()

    gradient()  # the first run compiles the query
    _, seconds = timed(gradient)
    assembled = VectorAssembler(inputCols=names, outputCol="features").transform(df)
    lr = LogisticRegression(maxIter=10, standardization=True, featuresCol="features", labelCol="label")
    model, fit_seconds = timed(lambda: lr.fit(assembled))
    iterations = model.summary.totalIterations
    spark.stop()
    return {
        "spark_warmup_s": warmup,
        "spark_gradient_rows_per_s": rows / seconds,
        "spark_lr_iterations": iterations,
        "spark_lr_row_iterations_per_s": rows * max(iterations, 1) / fit_seconds,
    }


def medfed_measurements(path, threads):
    env = dict(os.environ, MEDFED_BENCH_TABLE=str(path), MEDFED_BENCH_THREADS=str(threads))
    out = subprocess.run(
        ["cargo", "bench", "-q", "-p", "medfed-models", "--bench", "columnar_pass"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--features", type=int, default=30)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--dir", default="/tmp/medfed-columnar-bench")
    ap.add_argument("--skip-spark", action="store_true")
    args = ap.parse_args()
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"synthetic-{args.rows}x{args.features}.parquet"
    if not path.exists():
        print(f"writing {path} (SYNTHETIC) ...", file=sys.stderr)
        write_table(path, args.rows, args.features)
    names = [f"x{j}" for j in range(args.features)]
    size = path.stat().st_size
    pyarrow_read(path, names + ["label"])  # warm the page cache
    rows, read_s = timed(lambda: pyarrow_read(path, names + ["label"]))
    mean, std = moments(path, names)
    _, numpy_s = timed(lambda: numpy_gradient(path, names, mean, std))
    result = {
        "rows": rows,
        "features": args.features,
        "bytes": size,
        "threads": args.threads,
        "pyarrow_read_rows_per_s": rows / read_s,
        "numpy_gradient_rows_per_s": rows / numpy_s,
    }
    result.update({f"medfed_{k}": v for k, v in medfed_measurements(path, args.threads).items() if k.endswith("_s")})
    if not args.skip_spark:
        result.update(spark_measurements(path, names, mean, std, args.threads, rows))
        result["ratio_gradient_medfed_over_spark"] = (
            result["medfed_gradient_rows_per_s"] / result["spark_gradient_rows_per_s"]
        )
        result["ratio_10_steps_medfed_over_spark_lr"] = (
            result["medfed_ten_steps_row_iterations_per_s"] / result["spark_lr_row_iterations_per_s"]
        )
    result["ratio_gradient_medfed_over_numpy"] = (
        result["medfed_gradient_rows_per_s"] / result["numpy_gradient_rows_per_s"]
    )
    result["ratio_gradient_medfed_over_pyarrow_read"] = (
        result["medfed_gradient_rows_per_s"] / result["pyarrow_read_rows_per_s"]
    )
    result["ratio_decode_medfed_over_pyarrow"] = (
        result["medfed_decode_rows_per_s"] / result["pyarrow_read_rows_per_s"]
    )
    print(f"{rows:,} rows x {args.features} features, {size / 1e9:.2f} GB, {args.threads} threads")
    for key, value in result.items():
        if key.endswith("_per_s"):
            print(f"  {key:<45} {value / 1e6:8.2f} M/s")
        elif key.startswith("ratio"):
            print(f"  {key:<45} {value:8.2f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
