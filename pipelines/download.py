"""Fetches the project's real data sets from their official sources, verified by SHA-256.

``python -m pipelines download --datasets movielens,clinc150 [--data_dir DIR] [--base_url URL] [--force]``

- ``movielens``: https://files.grouplens.org/datasets/movielens/ml-latest-small.zip, extracted to
  ``DIR/movielens/ml-latest-small/`` (ratings.csv, movies.csv, tags.csv, links.csv, README.txt).
  GroupLens terms: research use, no commercial use; cite Harper & Konstan 2015 (see README.txt).
- ``clinc150``: https://raw.githubusercontent.com/clinc/oos-eval/master/data/data_full.json, saved as
  ``DIR/text/clinc150/data_full.json`` (CC BY 3.0).

Every resulting file is checked against the SHA-256 the project was built with (the digests of
the shared data set's ``SHA256SUMS``). Downloads go to hidden temporary files beside their
destination and are renamed into place only after every file of the data set verified, so a
failed or interrupted run leaves no half-written or unverified file behind. Files already present
and verified are left alone (nothing is fetched when all are) unless ``--force``.
``--base_url`` replaces the directory part of the official URLs (mirrors, tests).
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping

from tqdm import tqdm

from core import cli
from core.env import DATA_DIR_ENV, data_root

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 20
_USER_AGENT = "ssl-retrieval-ood-download/0.1 (+python urllib)"


class DownloadError(RuntimeError):
    """A data set could not be fetched (network or HTTP error, truncated body, bad archive)."""


class ChecksumError(DownloadError):
    """A fetched file's SHA-256 differs from the expected digest; nothing was moved into place."""


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """Where one data set comes from and what it must contain.

    Attributes:
      url: official URL of the single file to fetch (a zip archive or the data file itself).
      target_dir: destination, relative to the data root.
      files: ``{file name in target_dir: expected SHA-256 hex digest}``.
      archive_root: for zip archives, the member prefix of ``files`` inside the archive;
        ``None`` when ``url`` is the data file itself (then ``files`` has exactly one entry).
      notice: licence note logged after a download.
    """

    url: str
    target_dir: str
    files: Mapping[str, str]
    archive_root: str | None = None
    notice: str = ""


DATASETS: dict[str, DatasetSource] = {
    "movielens": DatasetSource(
        url="https://files.grouplens.org/datasets/movielens/ml-latest-small.zip",
        target_dir=os.path.join("movielens", "ml-latest-small"),
        archive_root="ml-latest-small/",
        files={
            "README.txt": "63d22ac138e80fae37021797ed8e1b9424b5239dc576a137422adf783ae3f404",
            "links.csv": "97ad18e4e56a09363c65676b6cb3482ce3e2cea2372a24620c1599c843325f31",
            "movies.csv": "5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07",
            "ratings.csv": "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
            "tags.csv": "92a9f8bb7916dceef6151209845788c3643f794dfa79d1feaec7121b5960399d",
        },
        notice="MovieLens ml-latest-small: research use only, no commercial use; cite Harper & "
               "Konstan 2015 (terms in README.txt).",
    ),
    "clinc150": DatasetSource(
        url="https://raw.githubusercontent.com/clinc/oos-eval/master/data/data_full.json",
        target_dir=os.path.join("text", "clinc150"),
        files={"data_full.json": "36923c3705a59e08fe9c3883d8bc2dd966ef93e22cb78ac41171782a698d56e0"},
        notice="CLINC150 (Larson et al. 2019): CC BY 3.0.",
    ),
}


def sha256_of(path: str) -> str:
    """Returns the SHA-256 hex digest of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_url(source: DatasetSource, base_url: str | None = None) -> str:
    """The URL to fetch: the official one, or its file name under ``base_url``."""
    if not base_url:
        return source.url
    return base_url.rstrip("/") + "/" + source.url.rsplit("/", 1)[-1]


def _fetch(url: str, destination: str, *, timeout: float, progress: bool) -> None:
    """Streams ``url`` into the (already created) file ``destination``."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    expected, received = None, 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(destination, "wb") as out:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            with tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                      desc=url.rsplit("/", 1)[-1], disable=not progress) as bar:
                for chunk in iter(lambda: response.read(_CHUNK_BYTES), b""):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        raise DownloadError(f"HTTP {error.code} {error.reason} fetching {url}") from None
    except http.client.IncompleteRead as error:
        raise DownloadError(f"truncated download of {url}: the connection closed after "
                            f"{received + len(error.partial)} of {expected} bytes") from None
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"cannot fetch {url}: {reason}") from None
    if expected is not None and received != expected:
        raise DownloadError(f"truncated download of {url}: expected {expected} bytes, received {received}")


def _topmost_missing_dir(path: str) -> str | None:
    """The outermost ancestor of ``path`` (or ``path``) that does not exist yet, or None."""
    missing = None
    while not os.path.isdir(path):
        missing, parent = path, os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _extract_member(archive: zipfile.ZipFile, member: str, destination: str) -> None:
    with archive.open(member) as src, open(destination, "wb") as out:
        shutil.copyfileobj(src, out, _CHUNK_BYTES)


def download(
    name: str,
    data_dir: str,
    *,
    base_url: str | None = None,
    force: bool = False,
    checksums: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> list[str]:
    """Downloads data set ``name`` into ``data_dir`` and verifies every file's SHA-256.

    Args:
      name: a key of :data:`DATASETS`.
      data_dir: the data root; files land in ``data_dir/<target_dir>/``.
      base_url: fetch ``<base_url>/<official file name>`` instead of the official URL.
      force: download and replace even when every file is present and verified.
      checksums: ``{file name: SHA-256}`` replacing the built-in table (tests, newer releases);
        must name exactly the data set's files.
      timeout: socket timeout in seconds.
      progress: show a tqdm progress bar while downloading.

    Returns:
      Absolute paths of the data set's files, all verified.

    Raises:
      ValueError: unknown ``name``, or ``checksums`` naming other files than the data set's.
      DownloadError: the fetch failed (HTTP error, unreachable host, truncated body), or the
        archive is not a zip or lacks a file.
      ChecksumError: a fetched file's digest differs; the message names the file and both digests.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid: {sorted(DATASETS)}")
    source = DATASETS[name]
    expected = dict(source.files if checksums is None else checksums)
    if set(expected) != set(source.files):
        raise ValueError(f"checksums for {name!r} must name exactly {sorted(source.files)}, "
                         f"received {sorted(expected)}")
    target = os.path.abspath(os.path.join(data_dir, source.target_dir))
    finals = {file: os.path.join(target, file) for file in expected}
    stale = sorted(f for f, path in finals.items()
                   if force or not (os.path.isfile(path) and sha256_of(path) == expected[f]))
    if not stale:
        logger.info("%s: all %d files present and verified in %s", name, len(finals), target)
        return list(finals.values())
    created = _topmost_missing_dir(target)
    os.makedirs(target, exist_ok=True)
    url = source_url(source, base_url)
    logger.info("%s: fetching %s for %s", name, url, ", ".join(stale))
    staging = tempfile.mkdtemp(prefix=".tmp-download-", dir=target)
    try:
        fetched = os.path.join(staging, url.rsplit("/", 1)[-1])
        _fetch(url, fetched, timeout=timeout, progress=progress)
        if source.archive_root is None:
            candidates = {next(iter(expected)): fetched}
        else:
            candidates = {file: os.path.join(staging, "extracted-" + file) for file in expected}
            try:
                with zipfile.ZipFile(fetched) as archive:
                    members = set(archive.namelist())
                    for file, path in candidates.items():
                        member = source.archive_root + file
                        if member not in members:
                            raise DownloadError(f"{url} lacks {member!r}; it holds {sorted(members)[:20]}")
                        _extract_member(archive, member, path)
            except zipfile.BadZipFile as error:
                raise DownloadError(f"{url} is not a valid zip archive: {error}") from None
        mismatches = []
        for file, path in candidates.items():
            actual = sha256_of(path)
            if actual != expected[file]:
                mismatches.append(f"{os.path.join(source.target_dir, file)}: "
                                  f"expected sha256 {expected[file]}, received {actual}")
        if mismatches:
            raise ChecksumError(f"checksum mismatch for {len(mismatches)} file(s) of {name} from {url} "
                                "(nothing was written): " + "; ".join(mismatches))
        for file in stale:
            os.replace(candidates[file], finals[file])
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(files for _, _, files in os.walk(created)):
            shutil.rmtree(created, ignore_errors=True)  # leave the data root as it was
        raise
    shutil.rmtree(staging, ignore_errors=True)
    logger.info("%s: verified and wrote %s to %s. %s", name, ", ".join(stale), target, source.notice)
    return list(finals.values())


@dataclasses.dataclass(frozen=True)
class DownloadOptions:
    """``python -m pipelines download``: what to fetch and where."""

    datasets: tuple[str, ...] = cli.flag(f"comma-separated data sets to fetch: {','.join(sorted(DATASETS))}",
                                         metavar="NAMES")
    data_dir: str | None = cli.flag(f"the data root to write into (default: ${DATA_DIR_ENV}; created if missing)",
                                    default=None, metavar="DIR")
    base_url: str | None = cli.flag("fetch <base_url>/<official file name> instead of the official URL (mirror)",
                                    default=None)
    force: bool = cli.flag("download and replace even when the files are present and verified", default=False)
    timeout: float = cli.flag("socket timeout in seconds", default=60.0)
    progress: bool = cli.flag("show a progress bar", default=True)

    def __post_init__(self):
        unknown = [d for d in self.datasets if d not in DATASETS]
        if unknown or not self.datasets:
            raise ValueError(f"--datasets: unknown {unknown or 'none given'}; valid: {sorted(DATASETS)}")
        if self.timeout <= 0:
            raise ValueError(f"--timeout must be > 0, received {self.timeout}")


def command(options: DownloadOptions) -> int:
    """Fetches every data set; exit 1 when any failed (the others are still fetched)."""
    root = data_root(options.data_dir)
    if not root:
        raise cli.UsageError(f"--data_dir is required when ${DATA_DIR_ENV} is not set")
    failed = []
    for name in dict.fromkeys(options.datasets):
        try:
            download(name, root, base_url=options.base_url, force=options.force,
                     timeout=options.timeout, progress=options.progress)
        except (DownloadError, OSError) as error:
            logger.error("%s: %s", name, error)
            failed.append(name)
    return 1 if failed else 0


COMMAND = cli.Command(
    "download", DownloadOptions, command,
    help="fetch MovieLens / CLINC150 from their official sources, verified by SHA-256",
    description=__doc__, renamed={"--no_progress": "--progress=false"})
