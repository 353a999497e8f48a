"""Write a Parquet table with pyarrow (not with medfed), as a hospital's
extract would come from a pandas or Spark pipeline: several row groups,
dictionary-encoded columns, zstd compression, nulls, a categorical label,
and a column medfed does not read. SYNTHETIC rows, not patient data.

usage: pyarrow_table.py OUT.parquet ROWS NULL_ROW
Prints one JSON line: rows, row groups, and the codecs and encodings used.
"""

import json
import random
import sys

import pyarrow as pa
import pyarrow.parquet as pq


def main():
    out, rows, null_row = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(7)
    age, dose, ward, label, note = [], [], [], [], []
    for i in range(rows):
        a = rng.randint(20, 90)
        d = round(rng.uniform(0.0, 5.0), 1)  # few distinct values: dictionary pages
        w = rng.randint(1, 6)
        score = 0.05 * (a - 55) + 0.8 * (d - 2.5) + 0.3 * (w - 3.5) + rng.gauss(0, 1)
        age.append(a)
        dose.append(None if i == null_row else d)
        ward.append(w)
        label.append("sick" if score > 0 else "well")
        note.append(f"free text {i % 13}")
    table = pa.table(
        {
            "age": pa.array(age, type=pa.int32()),
            "dose": pa.array(dose, type=pa.float64()),
            "ward": pa.array(ward, type=pa.int16()),
            # A pandas categorical: an Arrow dictionary column.
            "outcome": pa.array(label).dictionary_encode(),
            "note": pa.array(note),
        }
    )
    pq.write_table(
        table,
        out,
        row_group_size=max(1, rows // 5),
        compression="zstd",
        use_dictionary=True,
    )
    meta = pq.ParquetFile(out).metadata
    codecs = set()
    encodings = set()
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            col = meta.row_group(g).column(c)
            codecs.add(col.compression)
            encodings.update(col.encodings)
    print(
        json.dumps(
            {
                "rows": meta.num_rows,
                "row_groups": meta.num_row_groups,
                "codecs": sorted(codecs),
                "encodings": sorted(encodings),
                "positives": label.count("sick"),
            }
        )
    )


if __name__ == "__main__":
    main()
