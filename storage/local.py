"""Local directory backend (``file:///path``): the embedded default for one machine.

Writes go to a temporary file beside the target and are renamed into place, so a reader never
sees half an object. Over HTTP the task API serves the files (``storage.http``) at
``{public_base_url}/files/{key}``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from storage.base import ObjectInfo, PutItem, Storage, StoredObject, write_atomically
from storage.errors import (
    ACCESS_DENIED,
    INVALID_KEY,
    NOT_FOUND,
    OBJECT_CHANGED,
    STORAGE_ERROR,
    UNAVAILABLE,
    StorageError,
)
from storage.keys import check_key, guess_content_type


class LocalStorage(Storage):
    provider = "local"

    def __init__(self, root: str | os.PathLike[str], **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.root = Path(root).expanduser().absolute()
        self.root.mkdir(parents=True, exist_ok=True)
        self._real_root = self.root.resolve()

    def local_path(self, key: str) -> Path:
        """The file holding ``key``. Refuses keys (or symlinks) that lead outside the root."""
        check_key(key)
        path = self.root / key
        real = path.resolve()
        if real != self._real_root and self._real_root not in real.parents:
            raise StorageError(f"{key!r} leads outside the storage root", code=INVALID_KEY, key=key)
        return path

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise StorageError(f"no such object: {exc.filename}", code=NOT_FOUND) from exc
        except PermissionError as exc:
            raise StorageError(str(exc), code=ACCESS_DENIED) from exc
        except OSError as exc:
            # A full disk or a stale NFS handle may clear; other OS errors will not.
            transient = exc.errno in (errno.ENOSPC, errno.EIO, errno.ESTALE, errno.EAGAIN)
            raise StorageError(str(exc), code=UNAVAILABLE if transient else STORAGE_ERROR) from exc

    def _head_sync(self, key: str) -> ObjectInfo:
        st = os.stat(self.local_path(key))
        if not stat.S_ISREG(st.st_mode):
            raise StorageError(f"no such object: {key}", code=NOT_FOUND, key=key)
        return ObjectInfo(st.st_size, guess_content_type(key), _version(st))

    def _open_sync(self, key: str, offset: int, info: ObjectInfo, chunk_size: int) -> Iterator[bytes]:
        fh = open(self.local_path(key), "rb")  # noqa: SIM115 -- closed by the generator below
        if _version(os.fstat(fh.fileno())) != info.version:
            fh.close()
            raise StorageError(f"{key} was replaced while reading", code=OBJECT_CHANGED, key=key)
        fh.seek(offset)
        return _read_chunks(fh, chunk_size)

    def _delete_sync(self, key: str) -> None:
        self.local_path(key).unlink(missing_ok=True)

    def _url_sync(self, key: str) -> str:
        if self.public_base_url:
            return f"{self.public_base_url}/files/{quote(key)}"
        # No HTTP server configured: the file:// URL is still usable by consumers on this host.
        return self.storage_url_for(key)

    def storage_url_for(self, key: str) -> str:
        return (self.root / key).as_uri()

    def key_for_url(self, url: str) -> str | None:
        parts = urlsplit(url)
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost"):
                return None
            path = Path(os.path.normpath(unquote(parts.path)))
            try:
                key = path.relative_to(self.root).as_posix()
            except ValueError:
                return None
        elif self.public_base_url and url.startswith(self.public_base_url + "/files/"):
            key = unquote(urlsplit(url[len(self.public_base_url) + len("/files/") :]).path)
        else:
            return None
        try:
            self.local_path(key)
        except StorageError:
            return None
        return key

    async def _put_parts(
        self, key: str, parts: AsyncIterator[bytes], size: int | None, content_type: str
    ) -> int:
        path = await self._run(self.local_path, key)
        with self._errors():
            return await write_atomically(path, parts, self._io, fsync=True)

    async def put_file(
        self, key: str, path: str | os.PathLike[str], content_type: str | None = None
    ) -> StoredObject:
        return (await self.put_files([(key, path, content_type)]))[0]

    async def put_files(self, items: Sequence[PutItem]) -> list[StoredObject]:
        targets = self._write_targets([key for key, _, _ in items])
        pairs = [(source if isinstance(source, bytes) else Path(source), target) for (_, source, _), target in zip(items, targets)]
        sizes = await self._io(self._put_files_sync, pairs)
        return [
            await self._stored(key, size, content_type or guess_content_type(key))
            for (key, _, content_type), size in zip(items, sizes)
        ]

    def _write_targets(self, keys: list[str]) -> list[Path]:
        """The files to write ``keys`` to. A write renames a temp file over the last name, which
        replaces a symlink there rather than following it, so only the directory above must lie
        inside the root; the outputs of one task share it, and it is resolved once (a resolve
        costs a syscall per path component, on the event loop)."""
        targets: list[Path] = []
        checked: set[Path] = set()
        for key in keys:
            check_key(key)
            target = self.root / key
            if target.parent not in checked:
                real = target.parent.resolve()
                if real != self._real_root and self._real_root not in real.parents:
                    raise StorageError(f"{key!r} leads outside the storage root", code=INVALID_KEY, key=key)
                checked.add(target.parent)
            targets.append(target)
        return targets

    def _put_files_sync(self, pairs: list[tuple[Path | bytes, Path]]) -> list[int]:
        # One trip to the pool for the whole put (each trip costs a few tenths of a ms).
        for source, _ in pairs:
            if not isinstance(source, bytes):
                os.stat(source)  # a missing source is the caller's FileNotFoundError, as on every backend
        return self._translated(_copy_all_atomically, pairs)

    async def url_for(self, key: str) -> str:
        # A string built from the key: no I/O, so no trip to the pool (other backends may sign).
        check_key(key)
        return self._url_sync(key)

    async def download_to(self, key: str, path: str | os.PathLike[str]) -> int:
        return await self._run(_copy_atomically, self.local_path(key), Path(path), False)


def _version(st: os.stat_result) -> str:
    return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"


def _read_chunks(fh, chunk_size: int) -> Iterator[bytes]:  # type: ignore[no-untyped-def]
    with fh:
        while chunk := fh.read(chunk_size):
            yield chunk


def _copy_atomically(src: Path, dst: Path, fsync: bool = True) -> int:
    return _copy_all_atomically([(src, dst)], fsync)[0]


def _copy_all_atomically(pairs: Sequence[tuple[Path | bytes, Path]], fsync: bool = True) -> list[int]:
    """Write each source (a file, copied with the kernel's fast path: shutil.copyfile uses
    sendfile on Linux; or bytes) into a temp file beside its target, then rename them into place.

    The fsyncs come after all the writes: on ext4 (data=ordered) the first one's journal commit
    writes the other files' data too, so the rest cost little (measured: 0.25 ms, then 0.05 ms
    for a second file, against 0.25 ms each when each file is synced before the next is
    written). Each rename is atomic; a failure removes the temp files not yet renamed."""
    temps: list[str] = []
    try:
        for source, dst in pairs:
            dst.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".part")
            temps.append(tmp_name)
            if isinstance(source, bytes):
                with open(fd, "wb") as fh:
                    fh.write(source)
            else:
                os.close(fd)
                shutil.copyfile(source, tmp_name)
        if fsync:
            for tmp_name in temps:
                sync_fd = os.open(tmp_name, os.O_RDONLY)
                try:
                    os.fsync(sync_fd)
                finally:
                    os.close(sync_fd)
        sizes = [os.stat(tmp_name).st_size for tmp_name in temps]
        for tmp_name, (_, dst) in zip(temps, pairs):
            os.replace(tmp_name, dst)
    except BaseException:
        for tmp_name in temps:
            Path(tmp_name).unlink(missing_ok=True)  # gone already where it was renamed
        raise
    return sizes
