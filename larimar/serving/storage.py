"""Blob storage for the edit log and snapshots: a local directory or any pyarrow filesystem URI.

Local writes are durable before they return (write to a temporary file, fsync, atomic
``os.replace``, fsync the directory), which is what lets the memory actor acknowledge an edit
only once it is on disk. Remote stores (``s3://bucket/prefix``) go through ``pyarrow.fs``, where
a single object PUT is atomic.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs


class Storage:
    def __init__(self, uri: str):
        self.uri = uri
        if "://" in uri and not uri.startswith("file://"):
            self.fs, self.root = pafs.FileSystem.from_uri(uri)
            self.local = None
            self.fs.create_dir(self.root, recursive=True)
        else:
            self.local = Path(uri.removeprefix("file://")).expanduser()
            self.local.mkdir(parents=True, exist_ok=True)

    def put(self, name: str, data: bytes) -> None:
        if self.local is None:
            with self.fs.open_output_stream(f"{self.root}/{name}") as out:
                out.write(data)
            return
        path = self.local / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def get(self, name: str) -> bytes | None:
        if self.local is None:
            try:
                with self.fs.open_input_stream(f"{self.root}/{name}") as f:
                    return f.read()
            except FileNotFoundError:
                return None
        path = self.local / name
        return path.read_bytes() if path.exists() else None

    def list(self, prefix: str) -> list[str]:
        """Names (relative to the root) of the files directly under `prefix`, sorted."""
        if self.local is None:
            sel = pafs.FileSelector(f"{self.root}/{prefix}", allow_not_found=True)
            return sorted(info.path[len(self.root) + 1 :] for info in self.fs.get_file_info(sel) if info.is_file)
        folder = self.local / prefix
        if not folder.exists():
            return []
        return sorted(f"{prefix}/{p.name}" for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))

    def delete(self, name: str) -> None:
        if self.local is None:
            self.fs.delete_file(f"{self.root}/{name}")
        else:
            (self.local / name).unlink(missing_ok=True)
