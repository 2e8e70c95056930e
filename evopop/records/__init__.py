"""Records: the run directory, its typed records and Parquet schemas, atomic writes, checkpoints,
loaders. The only layer that lays out or writes the run directory; knows nothing of Ray.

    from evopop.records import RunRecords
    records = RunRecords("runs/tiny-...")      # a local path or a pyarrow.fs URI
    records.population()                       # one row per individual, `selected` and `rank` filled
"""
