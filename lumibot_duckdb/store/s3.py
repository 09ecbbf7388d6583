"""The object-storage backend: one store on S3 (or MinIO, or any S3-compatible service) for a team.

::

    s3://<bucket>/<prefix>/
      bars/<source>/<asset_type>/<symbol>/<quote>/<exchange>/<timeframe>/<adjustment>/<partition>/
          <start>_<end>_<token>.parquet     the folder layout, key for key: coverage is still the names
      .locks/<series digest>.lease         one lease per series while a writer fills or compacts it
      .quarantine/                         damaged objects a writer set aside, with a .reason.txt beside each
      meta/                                notes (small JSON documents)

    <local cache folder>/s3/<bucket>/<prefix>/    what this machine keeps of that store
      mirror/bars/...                      read-through copies of objects (published objects never change)
      bars/ .locks/ meta/                  a reader's own fills (gaps it fetched, never published) and notes
      .quarantine/ .tmp/ masked/           damaged copies set aside; downloads in progress; objects this
                                           machine no longer uses (a reader cannot delete them)
      listings/ footers/ notes/            listings, Parquet footers and notes of the store, cached

Operations (the :class:`~lumibot_duckdb.store.interface.Backend` contract):

* **List a series** with one LIST of its prefix; the names carry the coverage. A listing is reused for
  ``listing_ttl`` seconds (also by the next process on this machine), except under a writer's lease,
  where the first lookup always lists again.
* **Publish** one whole object with ``If-None-Match: *`` (never overwrites; appears whole or not at all).
  The file is encoded exactly as the folder backend encodes it (it is written into the mirror first), and
  its SHA-256 travels in the object's metadata; a download is checked against it.
* **Read**: DuckDB reads local files, so :meth:`S3Backend.local` downloads what the mirror lacks (whole
  objects, in parallel); :meth:`S3Backend.footer` reads only a file's Parquet footer (one ranged GET).
* **Lease**: a writer creates ``.locks/<series>.lease`` with ``If-None-Match: *`` (owner, TTL), renews it
  with ``If-Match`` on its ETag every third of the TTL while it works, and deletes it with ``If-Match``
  when done. A lease not renewed for its TTL (its holder died) is taken over with ``If-Match`` on the ETag
  read; age is judged by the service's own clock (``Date`` minus ``Last-Modified``), never the machines'.
* **Roles.** A reader never writes to S3: gaps it fetches are kept in its local area (``bars/`` above), and
  removing or quarantining a team object only masks it on this machine. A writer probes once that the
  service honours conditional writes and refuses write access where it does not.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import email.utils
import hashlib
import json
import os
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lumibot_duckdb.config import S3_SCHEME, parse_s3_url
from lumibot_duckdb.errors import ConfigError, CorruptFileError, StoreError, StoreLockTimeout
from lumibot_duckdb.log import get_logger
from lumibot_duckdb.store.coverage import Interval, SeriesKey
from lumibot_duckdb.store.local import (
    _KEY_FIELDS,
    BarFile,
    LocalFolder,
    _decode,
    _encode,
    new_token,
    parse_file_name,
    read_footer,
)

log = get_logger(__name__)

SCHEME = S3_SCHEME
LISTING_TTL = 300.0
"""Seconds a series' listing is reused before listing again (outside a writer's lease)."""
LEASE_TTL = 30.0
"""Seconds a lease lives without renewal; its holder renews it every third of that."""
_FOOTER_PROBE = 64 * 1024
_PROBES: dict[tuple[str, str], tuple[bool, str, bool]] = {}
_PROBES_LOCK = threading.Lock()


@dataclass(frozen=True)
class S3BarFile(BarFile):
    """A published object. ``path`` is where its bytes are (or will be) on this machine: its mirror copy."""

    object_key: str = ""
    object_size: int = 0

    @property
    def size(self) -> int:
        return self.object_size


@dataclass
class S3Stats:
    """What this process asked of the service (every request, retries by botocore not counted twice)."""

    requests: Counter[str] = field(default_factory=Counter)
    bytes_down: int = 0
    bytes_up: int = 0
    lease_waits: list[float] = field(default_factory=list)
    takeovers: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"requests": dict(self.requests), "total": sum(self.requests.values()), "bytes_down": self.bytes_down,
                "bytes_up": self.bytes_up, "lease_waits": list(self.lease_waits), "takeovers": self.takeovers}


class _Missing(Exception):
    """The object is not there (404)."""


class _Conflict(Exception):
    """A condition did not hold (412), or a concurrent conditional write won (409)."""


class S3Backend:
    """The S3 backend (:class:`~lumibot_duckdb.store.interface.Backend`) of ``s3://bucket/prefix``.

    ``cache_dir`` is the local cache folder (the mirror and a reader's own fills go under it); ``role`` is
    ``"read"`` (never writes to S3) or ``"write"``. Credentials, region and endpoint come from boto3's
    standard chain (``AWS_*`` variables, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL`` for MinIO and others).
    """

    def __init__(self, url: str, *, cache_dir: Path, role: str = "read", listing_ttl: float = LISTING_TTL,
                 lease_ttl: float = LEASE_TTL) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"{SCHEME}{self.bucket}/{self.prefix}".rstrip("/")
        self.base = f"{self.prefix}/" if self.prefix else ""
        self.writable = role == "write"
        self.listing_ttl = float(listing_ttl)
        self.lease_ttl = float(lease_ttl)
        self.root = Path(cache_dir).joinpath("s3", self.bucket, *[_encode(p) for p in self.prefix.split("/") if p])
        self.overlay = LocalFolder(self.root)  # a reader's own fills, its locks, notes and quarantine
        self.mirror = LocalFolder(self.root / "mirror")
        self.mirror.tmp = self.overlay.tmp
        self.tmp = self.overlay.tmp
        self.quarantine_dir = self.overlay.quarantine_dir
        self.stats = S3Stats()
        self._lock = threading.Lock()
        self._client: Any = None
        self._client_pid: int | None = None
        self._listings: dict[SeriesKey, tuple[float, list[S3BarFile]]] = {}
        self._leases: dict[SeriesKey, _Lease] = {}
        self._footers: dict[str, pq.FileMetaData | None] = {}
        self._notes: dict[tuple[str, ...], tuple[float, object | None]] = {}

    def __repr__(self) -> str:
        return f"S3Backend({self.url!r}, role={'write' if self.writable else 'read'!r})"

    def ensure(self) -> None:
        for folder in (self.overlay.bars, self.tmp, self.overlay.locks, self.overlay.meta, self.mirror.bars):
            folder.mkdir(parents=True, exist_ok=True)

    # -- series and files -------------------------------------------------------------------------
    def series(self) -> list[SeriesKey]:
        """Every series with an object in the store (one paginated LIST of ``bars/``), and a reader's own."""
        found: dict[SeriesKey, list[S3BarFile]] = {}
        root = f"{self.base}bars/"
        for obj in self._list(root):
            parts = obj["Key"][len(root):].split("/")
            if len(parts) != len(_KEY_FIELDS) + 2:
                continue
            key = SeriesKey(**dict(zip(_KEY_FIELDS, (_decode(p) for p in parts[:len(_KEY_FIELDS)]))))
            bar_file = self._bar_file(key, obj)
            found.setdefault(key, [])
            if bar_file is not None:
                found[key].append(bar_file)
        now = time.time()
        for key, files in found.items():
            if key not in self._leases:
                self._remember(key, files, now)
        keys = set(found) | (set(self.overlay.series()) if not self.writable else set())
        return sorted(keys)

    def files(self, key: SeriesKey, within: Interval | None = None) -> list[BarFile]:
        """Published objects of ``key`` (plus a reader's own files), those overlapping ``within``, oldest first."""
        masked = self._masked()
        found: list[BarFile] = [f for f in self._listing(key) if (within is None or f.interval.overlaps(within))
                                and _digest(f.object_key) not in masked]
        if not self.writable:
            found.extend(self.overlay.files(key, within))
        return sorted(found, key=lambda f: f.token)

    def rewritable(self, files: list[BarFile]) -> list[BarFile]:
        """What compaction may rewrite and remove: every object for a writer; a reader's own files for a reader."""
        return [f for f in files if isinstance(f, S3BarFile) == self.writable]

    def local(self, files: list[BarFile]) -> list[BarFile]:
        """Make the bytes of ``files`` readable on this machine: download what the mirror lacks.

        An object gone since it was listed (compacted away) is left absent and its listing dropped: the
        reader finds the file missing and lists again. A download that does not match the SHA-256 it was
        published with (twice) is set aside and raises :class:`CorruptFileError`, so the range is fetched again.
        """
        todo = [f for f in files if isinstance(f, S3BarFile) and not f.path.exists()]
        if len(todo) == 1:
            self._download(todo[0])
        elif todo:
            with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(todo)),
                                                       thread_name_prefix="lumibot-duckdb-s3") as pool:
                for future in [pool.submit(self._download, f) for f in todo]:
                    future.result()
        return files

    def footer(self, bar_file: BarFile) -> pq.FileMetaData | None:
        """The Parquet footer of a file: from the mirror copy, else from the object's tail (one ranged GET,
        cached on this machine)."""
        if not isinstance(bar_file, S3BarFile) or bar_file.path.exists():
            return read_footer(str(bar_file.path))
        if bar_file.object_key in self._footers:
            return self._footers[bar_file.object_key]
        if bar_file.object_size <= _FOOTER_PROBE:  # a small object: reading its tail is reading it all
            self._download(bar_file)
            return read_footer(str(bar_file.path)) if bar_file.path.exists() else None
        cached = self.root / "footers" / f"{_digest(bar_file.object_key)}.footer"
        data: bytes | None
        try:
            data = cached.read_bytes()
        except FileNotFoundError:
            data = self._fetch_footer(bar_file)
            if data is not None:
                self._write_atomic(cached, data)
        try:
            meta = pq.read_metadata(pa.BufferReader(data)) if data is not None else None
        except Exception:  # noqa: BLE001 - a damaged footer is found and set aside by the next read
            meta = None
        self._footers[bar_file.object_key] = meta
        return meta

    def strays(self) -> list[tuple[str, str, str]]:
        """Objects under ``bars/`` that readers ignore (not ``<series>/<partition>/<start>_<end>_<token>.parquet``)."""
        root = f"{self.base}bars/"
        found = []
        for obj in self._list(root):
            parts = obj["Key"][len(root):].split("/")
            where = f"{SCHEME}{self.bucket}/{obj['Key']}"
            if len(parts) != len(_KEY_FIELDS) + 2:
                found.append(("stray-file", where, "not in a partition of a series; readers ignore it — move it away"))
            elif parse_file_name(parts[-1]) is None:
                found.append(("stray-file", where,
                              "name is not <start>_<end>_<token>.parquet; readers ignore it — move it away"))
        return found

    def notes(self) -> list[tuple[str, ...]]:
        """The names of every note in the store (and a reader's own)."""
        root = f"{self.base}meta/"
        names = {tuple(obj["Key"][len(root):].split("/")) for obj in self._list(root)}
        if not self.writable:
            names |= set(self.overlay.notes())
        return sorted(names)

    # -- writing ----------------------------------------------------------------------------------
    def publish(self, key: SeriesKey, partition: str, table: pa.Table, interval: Interval, *,
                published: str | None = None) -> BarFile:
        """Publish ``table`` as one new object (``If-None-Match: *``); a reader keeps it on this machine instead.
        ``published``: as :meth:`LocalFolder.publish` (the file keeps an earlier token's publish time)."""
        if not self.writable:
            return self.overlay.publish(key, partition, table, interval, published=published)
        self._require_write()
        self._check_lease(key)
        # encoded exactly as the folder backend (its checksum in the name, its marks in the footer)
        staged = self.mirror.publish(key, partition, table, interval, published=published)
        object_key = self.base + staged.path.relative_to(self.mirror.root).as_posix()
        try:
            data = staged.path.read_bytes()
            self._call("put_object", Bucket=self.bucket, Key=object_key, Body=data, IfNoneMatch="*",
                       ContentType="application/vnd.apache.parquet",
                       Metadata={"sha256": hashlib.sha256(data).hexdigest()}, sent=len(data))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                staged.path.unlink()
            raise
        done = S3BarFile(staged.path, key, partition, interval, staged.token, object_key, len(data))
        with self._lock:
            listed = self._listings.get(key)
            if listed is not None:
                self._listings[key] = (listed[0], [*listed[1], done])
        self._forget_on_disk(key)
        return done

    def remove(self, files: list[BarFile]) -> None:
        """Delete objects (a writer) or mask them on this machine (a reader); a reader's own files are deleted."""
        own = [f for f in files if not isinstance(f, S3BarFile)]
        objects = [f for f in files if isinstance(f, S3BarFile)]
        self.overlay.remove(own)
        if not objects:
            return
        if not self.writable:
            for bar_file in objects:
                self._mask(bar_file.object_key, "removed on this machine (a reader cannot delete team objects)")
        else:
            self._require_write()
            for bar_file in objects:
                self._check_lease(bar_file.key)
                with contextlib.suppress(_Missing):
                    self._call("delete_object", Bucket=self.bucket, Key=bar_file.object_key)
            self.mirror.remove(list[BarFile](objects))
        gone = {f.object_key for f in objects}
        with self._lock:
            for key in {f.key for f in objects}:
                listed = self._listings.get(key)
                if listed is not None:
                    self._listings[key] = (listed[0], [f for f in listed[1] if f.object_key not in gone])
        for key in {f.key for f in objects}:
            self._forget_on_disk(key)

    def quarantine(self, path: Path, reason: str) -> Path:
        """Set a damaged file aside in this machine's ``.quarantine/``. A mirror copy that differs from its object
        (damaged on this disk) is simply downloaded again; an object that is itself damaged is moved to the
        store's ``.quarantine/`` by a writer (no machine uses it again) or masked on this machine by a reader."""
        path = Path(path)
        if not path.is_relative_to(self.mirror.root):
            return self.overlay.quarantine(path, reason)
        object_key = self.base + path.relative_to(self.mirror.root).as_posix()
        try:
            local_copy = path.read_bytes()
        except FileNotFoundError:
            local_copy = None
        moved = self.overlay.quarantine(path, reason) if local_copy is not None else path
        try:
            answer = self._call("get_object", Bucket=self.bucket, Key=object_key)
            remote = self._read_body(answer)
        except _Missing:
            return moved  # compacted away meanwhile: nothing to set aside on the store
        expected = (answer.get("Metadata") or {}).get("sha256")
        if local_copy is not None and remote != local_copy and expected == hashlib.sha256(remote).hexdigest():
            self._write_atomic(path, remote)  # only this machine's copy was damaged
            return moved
        self._set_aside(object_key, reason)
        return moved

    # -- notes --------------------------------------------------------------------------------------
    def read_json(self, *parts: str) -> object | None:
        if not self.writable:
            own = self.overlay.read_json(*parts)
            if own is not None:
                return own
        now = time.time()
        with self._lock:
            cached = self._notes.get(parts)
        if cached is not None and now - cached[0] < self.listing_ttl:
            return cached[1]
        on_disk = self.root / "notes" / f"{_digest('/'.join(parts))}.json"
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            record = json.loads(on_disk.read_text())
            if now - float(record["at"]) < self.listing_ttl and record.get("endpoint") == self._endpoint():
                with self._lock:
                    self._notes[parts] = (float(record["at"]), record["document"])
                return record["document"]
        try:
            answer = self._call("get_object", Bucket=self.bucket, Key=self.base + "meta/" + "/".join(parts))
            document = json.loads(self._read_body(answer))
        except _Missing:
            document = None
        except ValueError:
            document = None
        self._remember_note(parts, document, now)
        return document

    def write_json(self, document: object, *parts: str) -> None:
        if not self.writable:
            self.overlay.write_json(document, *parts)
            return
        self._require_write()
        body = json.dumps(document, indent=1, sort_keys=True, default=str).encode()
        self._call("put_object", Bucket=self.bucket, Key=self.base + "meta/" + "/".join(parts), Body=body,
                   ContentType="application/json", sent=len(body))
        self._remember_note(parts, json.loads(body), time.time())

    def _remember_note(self, parts: tuple[str, ...], document: object | None, at: float) -> None:
        with self._lock:
            self._notes[parts] = (at, document)
        self._write_atomic(self.root / "notes" / f"{_digest('/'.join(parts))}.json",
                           json.dumps({"at": at, "endpoint": self._endpoint(), "document": document},
                                      default=str).encode())

    # -- the lease ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, key: SeriesKey, timeout: float = 600.0) -> Iterator[None]:
        """A writer holds the series' lease on S3 (renewed while held); a reader takes this machine's lock."""
        if not self.writable:
            with self.overlay.lock(key, timeout=timeout):
                yield
            return
        self._require_write()
        lease = _Lease(self, key)
        lease.acquire(timeout)
        with self._lock:
            self._leases[key] = lease
        try:
            yield
        finally:
            with self._lock:
                self._leases.pop(key, None)
            lease.release()

    def _check_lease(self, key: SeriesKey) -> None:
        lease = self._leases.get(key)
        if lease is not None and lease.lost:
            raise StoreError(f"The lease of {key} on {self.url} was lost (this process did not renew it for "
                             f"{self.lease_ttl:.0f}s; another writer may have taken over). Nothing more is written "
                             "for it now; what was published is kept. Run again.")

    def _require_write(self) -> None:
        """Probe once per process and service that conditional writes are honoured; refuse write access if not."""
        endpoint = str(self.client.meta.endpoint_url)
        ident = (endpoint, self.bucket)  # conditional writes are the service's; permissions fail at their request
        with _PROBES_LOCK:
            known = _PROBES.get(ident)
            if known is None:
                known = self._probe(endpoint)
                _PROBES[ident] = known
        self.conditional_delete = known[2]
        if not known[0]:
            raise ConfigError(known[1])

    def _probe(self, endpoint: str) -> tuple[bool, str, bool]:
        probe = f"{self.base}.probe/{new_token()}"
        refused = (f"Write access to {self.url} refused: the S3 service at {endpoint} ")
        advice = (" Writers could then overwrite each other's files and leases. Open the store as a reader "
                  "(store_role='read', the default: gaps are fetched and kept on this machine), or use a service "
                  "that supports conditional writes (AWS S3, MinIO).")
        try:
            self._call("put_object", Bucket=self.bucket, Key=probe, Body=b"1", IfNoneMatch="*", sent=1)
        except StoreError as exc:
            return False, (f"{refused}did not accept a write ({exc}). A writer needs credentials allowed to put "
                           f"and delete objects under {self.url}; a reader needs only list and get."), False
        except _Conflict:
            return False, f"{refused}refused to create a new object with If-None-Match: *." + advice, False
        try:
            try:
                self._call("put_object", Bucket=self.bucket, Key=probe, Body=b"2", IfNoneMatch="*", sent=1)
                return False, (f"{refused}ignores conditional writes: a second PUT with If-None-Match: * on "
                               f"{probe} overwrote the first instead of answering 412." + advice), False
            except _Conflict:
                pass
            try:
                self._call("put_object", Bucket=self.bucket, Key=probe, Body=b"3", IfMatch='"0"', sent=1)
                return False, (f"{refused}ignores If-Match: a PUT with a wrong ETag on {probe} succeeded "
                               "instead of answering 412." + advice), False
            except _Conflict:
                pass
            try:
                self._call("delete_object", Bucket=self.bucket, Key=probe, IfMatch='"0"')
                conditional_delete = False  # deleted despite the wrong ETag: leases are released plainly
            except _Conflict:
                conditional_delete = True
            except StoreError:
                conditional_delete = False  # not supported (e.g. NotImplemented): plain deletes
            return True, "", conditional_delete
        finally:
            with contextlib.suppress(StoreError, _Missing):
                self._call("delete_object", Bucket=self.bucket, Key=probe)

    conditional_delete = True

    # -- listings, downloads and masks --------------------------------------------------------------------
    def _series_prefix(self, key: SeriesKey) -> str:
        values = key.as_dict()
        return self.base + "bars/" + "/".join(_encode(values[f]) for f in _KEY_FIELDS) + "/"

    def _bar_file(self, key: SeriesKey, obj: dict[str, Any]) -> S3BarFile | None:
        rest = obj["Key"][len(self._series_prefix(key)):].split("/")
        parsed = parse_file_name(rest[-1]) if len(rest) == 2 else None
        if parsed is None:
            return None
        interval, token = parsed
        return S3BarFile(self.mirror.root / obj["Key"][len(self.base):], key, rest[0], interval, token, obj["Key"],
                         int(obj["Size"]))

    def _listing(self, key: SeriesKey) -> list[S3BarFile]:
        lease = self._leases.get(key)
        now = time.time()
        with self._lock:
            cached = self._listings.get(key)
        if lease is not None:
            if lease.listed and cached is not None:
                return cached[1]
        elif cached is not None and now - cached[0] < self.listing_ttl:
            return cached[1]
        elif self.listing_ttl > 0:
            remembered = self._listing_on_disk(key, now)
            if remembered is not None:
                return remembered
        files = [f for f in (self._bar_file(key, obj) for obj in self._list(self._series_prefix(key))) if f]
        if lease is not None:
            lease.listed = True
        self._remember(key, files, now)
        return files

    def _remember(self, key: SeriesKey, files: list[S3BarFile], at: float) -> None:
        with self._lock:
            self._listings[key] = (at, files)
        if self.listing_ttl > 0:
            record = {"at": at, "series": key.as_dict(), "endpoint": self._endpoint(),
                      "objects": [[f.object_key[len(self.base):], f.object_size] for f in files]}
            self._write_atomic(self._listing_path(key), json.dumps(record).encode())

    def _listing_on_disk(self, key: SeriesKey, now: float) -> list[S3BarFile] | None:
        try:
            record = json.loads(self._listing_path(key).read_text())
            at = float(record["at"])
            if now - at >= self.listing_ttl or record["series"] != key.as_dict() or \
                    record.get("endpoint") != self._endpoint():
                return None
            files = [self._bar_file(key, {"Key": self.base + name, "Size": size}) for name, size in record["objects"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        listed = [f for f in files if f is not None]
        with self._lock:
            self._listings[key] = (at, listed)
        return listed

    def _endpoint(self) -> str:
        """The service this store is on: cached listings and notes of another service (same bucket name, another
        endpoint) are never reused."""
        return str(self.client.meta.endpoint_url)

    def _listing_path(self, key: SeriesKey) -> Path:
        return self.root / "listings" / f"{_digest(str(key))}.json"

    def _forget(self, key: SeriesKey) -> None:
        """Drop what is known of ``key``'s objects: the next lookup lists again."""
        with self._lock:
            self._listings.pop(key, None)
        lease = self._leases.get(key)
        if lease is not None:
            lease.listed = False
        self._forget_on_disk(key)

    def _forget_on_disk(self, key: SeriesKey) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._listing_path(key).unlink()

    def _download(self, bar_file: S3BarFile) -> None:
        problem = ""
        data = b""
        for _ in range(2):
            try:
                answer = self._call("get_object", Bucket=self.bucket, Key=bar_file.object_key)
                data = self._read_body(answer)
            except _Missing:
                self._forget(bar_file.key)  # compacted or pruned away since it was listed
                return
            expected = (answer.get("Metadata") or {}).get("sha256")
            if len(data) != int(answer.get("ContentLength", len(data))):
                problem = f"download of {len(data)} bytes instead of {answer.get('ContentLength')}"
            elif expected is not None and hashlib.sha256(data).hexdigest() != expected:
                problem = "its bytes do not match the SHA-256 it was published with"
            else:
                self._write_atomic(bar_file.path, data)
                return
        reason = f"damaged object {bar_file.object_key}: {problem}"
        self._write_atomic(bar_file.path, data)
        moved = self.overlay.quarantine(bar_file.path, reason)
        self._set_aside(bar_file.object_key, reason)
        raise CorruptFileError(
            f"1 damaged file of {bar_file.key} set aside in {self.quarantine_dir} (first: {bar_file.path.name}, "
            f"covering {bar_file.interval}): {problem}. Every other file is intact; the range it covered is no "
            "longer marked as stored and is fetched again on the next request.",
            path=str(bar_file.path), quarantined_to=str(moved))

    def _fetch_footer(self, bar_file: S3BarFile) -> bytes | None:
        size = bar_file.object_size
        if size < 12:
            return None
        try:
            want = min(size, _FOOTER_PROBE)
            tail = self._read_body(self._call("get_object", Bucket=self.bucket, Key=bar_file.object_key,
                                              Range=f"bytes=-{want}"))
            if len(tail) < 8 or tail[-4:] != b"PAR1":
                return None
            length = int.from_bytes(tail[-8:-4], "little")
            if length + 8 > size:
                return None
            if length + 8 > len(tail):
                tail = self._read_body(self._call("get_object", Bucket=self.bucket, Key=bar_file.object_key,
                                                  Range=f"bytes=-{length + 8}"))
        except _Missing:
            self._forget(bar_file.key)
            return None
        return b"PAR1" + tail[-(length + 8):]

    def _masked(self) -> set[str]:
        try:
            return set(os.listdir(self.root / "masked"))
        except FileNotFoundError:
            return set()

    def _mask(self, object_key: str, reason: str) -> None:
        note = json.dumps({"object": object_key, "reason": reason, "at": time.time()}).encode()
        self._write_atomic(self.root / "masked" / _digest(object_key), note)

    def _set_aside(self, object_key: str, reason: str) -> None:
        """Stop using a damaged object: a writer moves it to the store's ``.quarantine/``; a reader masks it here."""
        self._mask(object_key, reason)
        rel = object_key[len(self.base):]
        key = self._key_of(rel)
        if self.writable:
            self._require_write()
            target = f"{self.base}.quarantine/{new_token()}__{rel.replace('/', '__')}"
            try:
                self._call("copy_object", Bucket=self.bucket, Key=target,
                           CopySource={"Bucket": self.bucket, "Key": object_key})
                body = (reason + "\n").encode()
                self._call("put_object", Bucket=self.bucket, Key=target + ".reason.txt", Body=body, sent=len(body))
                self._call("delete_object", Bucket=self.bucket, Key=object_key)
            except _Missing:
                pass  # already set aside (or compacted away) by another process
        if key is not None:
            self._forget(key)

    def _key_of(self, rel: str) -> SeriesKey | None:
        parts = rel.split("/")
        if len(parts) != len(_KEY_FIELDS) + 3 or parts[0] != "bars":
            return None
        return SeriesKey(**dict(zip(_KEY_FIELDS, (_decode(p) for p in parts[1:len(_KEY_FIELDS) + 1]))))

    def _write_atomic(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        part = self.tmp / f"{new_token()}.s3.part"
        try:
            part.write_bytes(data)
            os.replace(part, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()

    # -- the client -------------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """A boto3 S3 client shared by this process's stores (boto3's standard chain: credentials, region,
        endpoint); a new one after a fork or when the ``AWS_*`` settings changed."""
        with self._lock:
            if self._client is None or self._client_pid != os.getpid():
                self._client, self._client_pid = _shared_client(), os.getpid()
            return self._client

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            try:
                page = self._call("list_objects_v2", **kwargs)
            except _Missing as exc:
                raise StoreError(f"The bucket {self.bucket!r} does not exist at {self.client.meta.endpoint_url}; "
                                 f"create it, or fix the store location ({self.url}).") from exc
            yield from page.get("Contents", [])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def _read_body(self, answer: dict[str, Any]) -> bytes:
        try:
            data: bytes = answer["Body"].read()
        except Exception as exc:  # a broken stream is a store error the caller can retry
            raise StoreError(f"A download from {self.url} broke off ({type(exc).__name__}: {exc}); try again.") \
                from exc
        with self._lock:
            self.stats.bytes_down += len(data)
        return data

    def _call(self, operation: str, *, sent: int = 0, **kwargs: Any) -> Any:
        """One request; its failures as :class:`StoreError` saying what to do (404: ``_Missing``, 412/409:
        ``_Conflict``)."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

        client = self.client
        with self._lock:
            self.stats.requests[operation] += 1
            self.stats.bytes_up += sent
        try:
            return getattr(client, operation)(**kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound") or status == 404:
                if code == "NoSuchBucket":
                    raise StoreError(f"The bucket {self.bucket!r} does not exist at {client.meta.endpoint_url}; "
                                     f"create it, or fix the store location ({self.url}).") from exc
                raise _Missing(kwargs.get("Key", "")) from exc
            if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise _Conflict(code) from exc
            if code in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch") \
                    or status == 403:
                raise StoreError(f"S3 refused {operation} on {self.url} ({code or status}): check the credentials "
                                 "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE) and that they may "
                                 f"{'list and get' if operation in ('list_objects_v2', 'get_object') else 'write'} "
                                 "objects under this prefix.") from exc
            raise StoreError(f"S3 {operation} on {self.url} failed: {code or status} "
                             f"{error.get('Message', '')}".rstrip()) from exc
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise StoreError(f"No usable AWS credentials for {self.url}: set AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (boto3's standard chain).") from exc
        except BotoCoreError as exc:
            raise StoreError(f"Could not reach the S3 service at {client.meta.endpoint_url} for {self.url}: {exc}. "
                             "Check AWS_ENDPOINT_URL (MinIO and other services) and the network.") from exc


class _Lease:
    """One writer's hold on one series: a small object created, renewed and deleted conditionally."""

    def __init__(self, backend: S3Backend, key: SeriesKey) -> None:
        self.backend = backend
        self.key = key
        self.object_key = f"{backend.base}.locks/{hashlib.sha1(str(key).encode()).hexdigest()[:20]}.lease"
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.ttl = backend.lease_ttl
        self.etag: str | None = None
        self.lost = False
        self.listed = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "series": str(self.key), "ttl": self.ttl,
                           "written_at": dt.datetime.now(dt.timezone.utc).isoformat()}).encode()

    def _put(self, **condition: str) -> str:
        body = self._body()
        answer = self.backend._call("put_object", Bucket=self.backend.bucket, Key=self.object_key, Body=body,
                                    ContentType="application/json", sent=len(body), **condition)
        return str(answer["ETag"])

    def acquire(self, timeout: float) -> None:
        started = time.monotonic()
        delay = 0.05
        while True:
            try:
                self.etag = self._put(IfNoneMatch="*")
                break
            except _Conflict:
                pass
            try:
                held = self.backend._call("get_object", Bucket=self.backend.bucket, Key=self.object_key)
                holder = json.loads(self.backend._read_body(held))
            except _Missing:
                if time.monotonic() - started > timeout:
                    raise StoreLockTimeout(f"Could not take the lease of {self.key} on {self.backend.url} within "
                                           f"{timeout:.0f}s (it kept changing hands); run again.") from None
                continue  # released meanwhile: try to create it again at once
            except ValueError:
                holder = {}
            age = _server_age(held)
            if age is not None and age > float(holder.get("ttl", self.ttl)):
                try:
                    self.etag = self._put(IfMatch=str(held["ETag"]))
                    self.backend.stats.takeovers += 1
                    log.warning("Took over the expired lease of %s (held by %s, not renewed for %.0fs)", self.key,
                                holder.get("owner", "?"), age)
                    break
                except (_Conflict, _Missing):
                    continue  # renewed, taken over or released by someone else meanwhile
            waited = time.monotonic() - started
            if waited > timeout:
                raise StoreLockTimeout(
                    f"Series {self.key} is held on {self.backend.url} by {holder.get('owner', 'another writer')} "
                    f"for more than {timeout:.0f}s (lease {self.object_key}, renewed {age or 0:.0f}s ago). A lease "
                    f"not renewed for {self.ttl:.0f}s is taken over automatically; wait, or run again later.")
            time.sleep(min(delay * (0.5 + secrets.randbelow(1000) / 1000), max(0.0, timeout - waited) + 0.01))
            delay = min(delay * 1.6, 1.0)
        with self.backend._lock:
            self.backend.stats.lease_waits.append(time.monotonic() - started)
        self._renewer = threading.Thread(target=self._renew, name="lumibot-duckdb-lease", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.ttl / 3):
            try:
                self.etag = self._put(IfMatch=str(self.etag))
                last = time.monotonic()
            except (_Conflict, _Missing):
                self.lost = True
                log.warning("Lost the lease of %s: another writer took it over", self.key)
                return
            except StoreError as exc:
                if time.monotonic() - last > self.ttl:
                    self.lost = True
                    log.warning("Lost the lease of %s: could not renew it for %.0fs (%s)", self.key, self.ttl, exc)
                    return

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self.lost or self.etag is None:
            return
        condition: dict[str, Any] = {"IfMatch": self.etag} if self.backend.conditional_delete else {}
        with contextlib.suppress(_Conflict, _Missing, StoreError):
            self.backend._call("delete_object", Bucket=self.backend.bucket, Key=self.object_key, **condition)


def _server_age(answer: dict[str, Any]) -> float | None:
    """Seconds since the object was last written, by the service's clock (``Date`` - ``Last-Modified``)."""
    try:
        now = email.utils.parsedate_to_datetime(answer["ResponseMetadata"]["HTTPHeaders"]["date"])
        return (now - answer["LastModified"]).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:24]


_CLIENTS: dict[tuple[Any, ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def _shared_client() -> Any:
    ident = (os.getpid(), *sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(ident)
        if client is None:
            client = _CLIENTS[ident] = _new_client()
        return client


def _new_client() -> Any:
    """A boto3 S3 client from the standard chain; path-style addressing on a custom endpoint (MinIO, moto…)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # boto3 comes with Lumibot
        raise StoreError("An S3 store needs boto3 (installed with Lumibot): pip install boto3") from exc
    options: dict[str, Any] = {"connect_timeout": 10, "read_timeout": 60, "max_pool_connections": 16}
    if not (os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE")):  # else the user's choice
        options["retries"] = {"mode": "standard", "max_attempts": 5}
    session = boto3.session.Session()
    client = session.client("s3", config=Config(**options))
    if "amazonaws.com" not in str(client.meta.endpoint_url):
        client = session.client("s3", config=Config(**options, s3={"addressing_style": "path"}))
    return client
