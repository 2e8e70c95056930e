"""Copy data sets from object storage to a node's local disk, once per node.

    python cluster/fetch_data.py SOURCE DEST NAME [NAME ...]

copies SOURCE/NAME to DEST/NAME for every NAME, e.g. ``s3://BUCKET/datasets /data MSRA-B HKU-IS``. SOURCE is
anything ``pyarrow.fs`` opens: ``s3://`` (an S3-compatible store through ``?endpoint_override=host:port&scheme=http``),
``gs://``, or a local folder. A copy finished earlier (DEST/NAME/.fetched) is not repeated, so the cluster
launcher can run this in every ``ray up``; an interrupted one is redone. Credentials come from the environment as
pyarrow reads them (instance profile or service account, or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
Only pyarrow, an evopop dependency, is needed.
"""

from __future__ import annotations

import argparse
import os
import sys
from urllib.parse import urlsplit, urlunsplit

MARKER = ".fetched"


def child(source: str, name: str) -> str:
    """``source``/``name``, keeping a URI's query (its options) at the end."""
    if "://" not in source:
        return os.path.join(source, name)
    parts = urlsplit(source)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + name))


def fetch(source: str, dest: str, names: list[str]) -> list[str]:
    """Copy each ``source/name`` to ``dest/name`` unless already there; returns the names copied now."""
    import pyarrow.fs as pafs

    copied = []
    for name in names:
        target = os.path.abspath(os.path.join(dest, name))
        marker = os.path.join(target, MARKER)
        if os.path.exists(marker):
            print(f"{target}: present", flush=True)
            continue
        origin = child(source, name)
        filesystem, path = pafs.FileSystem.from_uri(origin) if "://" in origin else (pafs.LocalFileSystem(), origin)
        if filesystem.get_file_info(path).type != pafs.FileType.Directory:
            raise SystemExit(f"fetch_data: {origin} is not a folder")
        print(f"{origin} -> {target}", flush=True)
        pafs.copy_files(path, target, source_filesystem=filesystem, destination_filesystem=pafs.LocalFileSystem())
        with open(marker, "w") as f:
            f.write(origin + "\n")
        copied.append(name)
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="folder holding the data sets: s3://BUCKET/datasets, gs://..., or a path")
    parser.add_argument("dest", help="local folder, e.g. /data")
    parser.add_argument("names", nargs="+", help="data set folders, e.g. MSRA-B HKU-IS")
    args = parser.parse_args(argv)
    fetch(args.source, args.dest, args.names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
