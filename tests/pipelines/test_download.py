"""``pipelines.download`` against a real HTTP server on 127.0.0.1 (a thread serving a temp dir)."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import logging
import os
import shutil
import threading
import zipfile

import pytest

from core.net import free_port
from pipelines import download as dl
from pipelines.__main__ import main

MOVIELENS_FILES = ("README.txt", "links.csv", "movies.csv", "ratings.csv", "tags.csv")


@dataclasses.dataclass
class Server:
    root: str  # files served at the URL root
    url: str
    requests: list[str]  # request paths, in order


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self):
        self.requests.append(self.path)
        if self.path.startswith("/truncated/"):  # promises 1000 bytes, sends 10, closes
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"requests": requests})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            lambda *a, **k: handler(*a, directory=str(root), **k))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server(str(root), f"http://127.0.0.1:{httpd.server_address[1]}", requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_zip(path: str, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("ml-latest-small/", b"")
        for name, data in members.items():
            archive.writestr(name, data)


def _fake_movielens(root: str) -> dict[str, str]:
    """Serves a tiny fake ml-latest-small.zip; returns its true checksum table."""
    contents = {f: f"fake {f}\r\n1,2,3\r\n".encode() for f in MOVIELENS_FILES}
    _write_zip(os.path.join(root, "ml-latest-small.zip"), {f"ml-latest-small/{f}": d for f, d in contents.items()})
    return {f: _sha(d) for f, d in contents.items()}


def _files_under(path: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, files in os.walk(path) for f in files)


@pytest.mark.real_data
def test_real_files_download_verify_skip_repair_and_force(data_dir, server, tmp_path):
    movielens = os.path.join(data_dir, "movielens", "ml-latest-small")
    clinc = os.path.join(data_dir, "text", "clinc150", "data_full.json")
    if not all(os.path.isfile(os.path.join(movielens, f)) for f in MOVIELENS_FILES) or not os.path.isfile(clinc):
        pytest.skip(f"MovieLens/CLINC150 files not found under {data_dir}")
    members = {}
    for f in MOVIELENS_FILES:
        with open(os.path.join(movielens, f), "rb") as src:
            members[f"ml-latest-small/{f}"] = src.read()
    _write_zip(os.path.join(server.root, "ml-latest-small.zip"), members)
    shutil.copy(clinc, os.path.join(server.root, "data_full.json"))
    out = str(tmp_path / "data")
    argv = ["download", "--datasets", "movielens,clinc150", "--data_dir", out, "--base_url", server.url,
            "--progress=false"]

    assert main(argv) == 0
    assert server.requests == ["/ml-latest-small.zip", "/data_full.json"]
    assert _files_under(out) == sorted([os.path.join("movielens", "ml-latest-small", f) for f in MOVIELENS_FILES]
                                       + [os.path.join("text", "clinc150", "data_full.json")])
    for f in MOVIELENS_FILES:  # byte-identical to the shared copy, CRLF line endings included
        with open(os.path.join(out, "movielens", "ml-latest-small", f), "rb") as got:
            assert got.read() == members[f"ml-latest-small/{f}"]
    assert dl.sha256_of(os.path.join(out, "text", "clinc150", "data_full.json")) == dl.sha256_of(clinc)

    assert main(argv) == 0  # everything present and verified: no request at all
    assert len(server.requests) == 2

    ratings = os.path.join(out, "movielens", "ml-latest-small", "ratings.csv")
    movies = os.path.join(out, "movielens", "ml-latest-small", "movies.csv")
    movies_inode = os.stat(movies).st_ino
    with open(ratings, "ab") as f:
        f.write(b"corrupted\n")
    assert main(["download", "--datasets", "movielens", "--data_dir", out, "--base_url", server.url,
                 "--progress=false"]) == 0
    assert server.requests[2:] == ["/ml-latest-small.zip"]
    assert dl.sha256_of(ratings) == dl.DATASETS["movielens"].files["ratings.csv"]  # repaired
    assert os.stat(movies).st_ino == movies_inode  # the verified file was left alone

    assert main(["download", "--datasets", "clinc150", "--data_dir", out, "--base_url", server.url, "--force",
                 "--progress=false"]) == 0
    assert server.requests[3:] == ["/data_full.json"]


def test_fake_files_with_injected_checksums_then_skip_and_force(server, tmp_path):
    checksums = _fake_movielens(server.root)
    out = str(tmp_path / "data")
    paths = dl.download("movielens", out, base_url=server.url, checksums=checksums, progress=False)
    assert sorted(os.path.basename(p) for p in paths) == sorted(MOVIELENS_FILES)
    assert all(dl.sha256_of(p) == checksums[os.path.basename(p)] for p in paths)
    expected_files = sorted(os.path.join("ml-latest-small", f) for f in MOVIELENS_FILES)
    assert _files_under(os.path.join(out, "movielens")) == expected_files
    dl.download("movielens", out, base_url=server.url, checksums=checksums, progress=False)
    assert len(server.requests) == 1
    dl.download("movielens", out, base_url=server.url, checksums=checksums, force=True, progress=False)
    assert len(server.requests) == 2


def test_checksum_mismatch_names_file_and_both_digests_and_writes_nothing(server, tmp_path):
    checksums = _fake_movielens(server.root)
    wrong = dict(checksums, **{"tags.csv": "0" * 64})
    out = tmp_path / "data"
    out.mkdir()
    with pytest.raises(dl.ChecksumError) as raised:
        dl.download("movielens", str(out), base_url=server.url, checksums=wrong, progress=False)
    message = str(raised.value)
    assert os.path.join("movielens", "ml-latest-small", "tags.csv") in message
    assert "0" * 64 in message and checksums["tags.csv"] in message
    assert "ratings.csv" not in message  # only the tampered file is named
    assert list(out.iterdir()) == []  # no half files, no temp files, no empty directories


def test_checksum_mismatch_keeps_existing_file(server, tmp_path):
    """A bad download must not replace (or delete) a local file, even a stale one."""
    with open(os.path.join(server.root, "data_full.json"), "wb") as f:
        f.write(b'{"tampered": true}')
    target = tmp_path / "data" / "text" / "clinc150"
    target.mkdir(parents=True)
    (target / "data_full.json").write_bytes(b"old local copy")
    with pytest.raises(dl.ChecksumError, match="data_full.json"):
        dl.download("clinc150", str(tmp_path / "data"), base_url=server.url, progress=False)
    assert (target / "data_full.json").read_bytes() == b"old local copy"
    assert [p.name for p in target.iterdir()] == ["data_full.json"]


def test_cli_reports_checksum_failure_with_exit_code(server, tmp_path, caplog):
    _fake_movielens(server.root)  # fake content against the real built-in checksums
    with caplog.at_level(logging.ERROR, logger="pipelines.download"):
        code = main(["download", "--datasets", "movielens", "--data_dir", str(tmp_path / "data"), "--base_url",
                     server.url, "--progress=false"])
    assert code == 1
    assert "checksum mismatch" in caplog.text and dl.DATASETS["movielens"].files["ratings.csv"] in caplog.text
    assert not (tmp_path / "data").exists()


def test_http_404_is_a_clear_error(server, tmp_path):
    with pytest.raises(dl.DownloadError, match=r"HTTP 404 .*data_full\.json"):
        dl.download("clinc150", str(tmp_path / "data"), base_url=server.url, progress=False)
    assert not (tmp_path / "data").exists()


def test_truncated_body_is_a_clear_error(server, tmp_path):
    with pytest.raises(dl.DownloadError, match="truncated download"):
        dl.download("clinc150", str(tmp_path / "data"), base_url=server.url + "/truncated", progress=False)
    assert not (tmp_path / "data").exists()


def test_unreachable_host_is_a_clear_error(tmp_path):
    port = free_port()  # nobody listening there
    with pytest.raises(dl.DownloadError, match="cannot fetch"):
        dl.download("clinc150", str(tmp_path), base_url=f"http://127.0.0.1:{port}", timeout=5, progress=False)


def test_bad_archives_are_clear_errors(server, tmp_path):
    checksums = _fake_movielens(server.root)
    out = tmp_path / "data"
    out.mkdir()
    buffer = io.BytesIO()
    _write_zip(buffer, {"ml-latest-small/ratings.csv": b"1,2,3\n"})
    with open(os.path.join(server.root, "ml-latest-small.zip"), "wb") as f:
        f.write(buffer.getvalue())
    with pytest.raises(dl.DownloadError, match="lacks 'ml-latest-small/README.txt'"):
        dl.download("movielens", str(out), base_url=server.url, checksums=checksums, progress=False)
    with open(os.path.join(server.root, "ml-latest-small.zip"), "wb") as f:
        f.write(b"<html>not a zip</html>")
    with pytest.raises(dl.DownloadError, match="not a valid zip"):
        dl.download("movielens", str(out), base_url=server.url, checksums=checksums, progress=False)
    assert list(out.iterdir()) == []


def test_argument_errors(tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match="unknown data set 'imagenet'"):
        dl.download("imagenet", str(tmp_path))
    with pytest.raises(ValueError, match="must name exactly"):
        dl.download("clinc150", str(tmp_path), checksums={"other.json": "0" * 64})
    assert main(["download", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "clinc150,movielens" in help_text and "--base_url" in help_text and "--force" in help_text
    assert main(["download", "--datasets", "imagenet", "--data_dir", str(tmp_path)]) == 2
    assert "unknown ['imagenet']" in capsys.readouterr().err
    monkeypatch.delenv("SSL_DATA_DIR", raising=False)
    assert main(["download", "--datasets", "clinc150"]) == 2
    assert "--data_dir is required" in capsys.readouterr().err


def test_official_urls_and_base_url():
    official = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"
    assert dl.source_url(dl.DATASETS["movielens"]) == official
    assert dl.source_url(dl.DATASETS["clinc150"], "http://mirror/x/") == "http://mirror/x/data_full.json"


@pytest.mark.real_data
def test_builtin_checksums_match_shared_sha256sums(data_dir):
    sums_path = os.path.join(data_dir, "SHA256SUMS")
    if not os.path.isfile(sums_path):
        pytest.skip(f"{sums_path} not found")
    with open(sums_path) as f:
        published = {os.path.normpath(path): digest for digest, path in (line.split() for line in f if line.strip())}
    for source in dl.DATASETS.values():
        for name, digest in source.files.items():
            assert published[os.path.join(source.target_dir, name)] == digest, name
