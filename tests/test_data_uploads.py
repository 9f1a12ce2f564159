"""Uploaded archives: the uploads quota, eviction of the least recently used, refused uploads deleted at
once, leases that protect data in use, and the upload's own name as a label."""

import gc
import io
import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from tinytl_core.data import (
    DatasetError,
    UploadQuotaError,
    dataset_display_name,
    kept_uploads,
    load_dataset,
    upload_quota_bytes,
)
from tinytl_core.data import uploads as U
from tinytl_core.ui import checks


def _noise_png(seed: int, size: int = 64) -> bytes:
    """An incompressible image (random pixels): its archive is about as large as its extraction."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _dataset_zip(seed: int, per_class: int = 3, classes=("cats", "dogs")) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for k, c in enumerate(classes):
            for i in range(per_class):
                zf.writestr(f"{c}/{i}.png", _noise_png(seed * 100 + k * 10 + i))
    return buf.getvalue()


def _dirs(home):
    return sorted(p.name for p in (home / "uploads").iterdir() if p.is_dir())


def _files(home, suffix):
    return sorted(p.name for p in (home / "uploads").iterdir() if p.name.endswith(suffix))


def _age(path, seconds):
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_quota_setting(monkeypatch):
    monkeypatch.delenv(U.ENV_QUOTA, raising=False)
    assert upload_quota_bytes() == 2_000_000_000
    monkeypatch.setenv(U.ENV_QUOTA, "1.5")
    assert upload_quota_bytes() == 1_500_000
    for bad in ("lots", "-3", "0", "nan"):
        monkeypatch.setenv(U.ENV_QUOTA, bad)
        with pytest.raises(DatasetError, match="TINYTL_UPLOAD_QUOTA_MB must be a positive number"):
            upload_quota_bytes()


def test_refused_uploads_are_deleted_at_once(tinytl_home):
    one_class = checks.save_upload("one.zip", _dataset_zip(1, classes=("cats",)))
    assert one_class.exists()
    with pytest.raises(DatasetError, match=r"cannot use one\.zip: found 1 class folder"):
        checks.load_upload(one_class)
    assert not one_class.exists() and _dirs(tinytl_home) == [] and _files(tinytl_home, ".json") == []
    # An unsafe archive: nothing extracted, the upload itself gone too.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a/" + "x" * 300 + ".png", b"x")
    bad = checks.save_upload("long names.zip", buf.getvalue())
    with pytest.raises(DatasetError, match="cannot use long names.zip: archive entry .* limit is 255"):
        checks.load_upload(bad)
    assert list((tinytl_home / "uploads").iterdir()) == []


def test_an_archive_expanding_past_the_quota_is_refused_and_not_kept(tinytl_home, monkeypatch):
    monkeypatch.setenv(U.ENV_QUOTA, "0.1")  # 100 KB
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/big.png", b"\0" * 300_000)  # 300 KB from a few hundred bytes
        zf.writestr("b/1.png", _noise_png(0, 8))
    assert len(buf.getvalue()) < 5_000
    # Refused before anything is written: its entries declare what the extraction will take.
    with pytest.raises(UploadQuotaError, match=r"bomb.zip needs 3\d\d KB: the archive \(4 KB\) plus its"):
        checks.save_upload("bomb.zip", buf.getvalue())
    assert list((tinytl_home / "uploads").iterdir()) == []
    # The same archive given on the command line: only its extraction counts.
    own = tinytl_home.parent / "bomb.zip"
    own.write_bytes(buf.getvalue())
    with pytest.raises(UploadQuotaError, match="bomb.zip expands to 3.. KB, more than the whole uploads"):
        U.extract_archive_cached(own)
    assert list((tinytl_home / "uploads").iterdir()) == [] and own.exists()
    monkeypatch.setenv(U.ENV_QUOTA, "0.0001")  # 100 bytes: not even the archive fits
    with pytest.raises(UploadQuotaError, match="more than the whole uploads quota"):
        checks.save_upload("bomb.zip", buf.getvalue())
    assert list((tinytl_home / "uploads").iterdir()) == []


def test_least_recently_used_uploads_are_evicted_beyond_the_quota(tinytl_home, monkeypatch):
    archives = {name: _dataset_zip(seed) for seed, name in enumerate(("a.zip", "b.zip", "c.zip"))}
    paths = {"a.zip": checks.save_upload("a.zip", archives["a.zip"])}
    assert checks.load_upload(paths["a.zip"]).num_classes == 2
    one = kept_uploads().total_bytes  # ~75 KB archive + ~75 KB extraction, in disk blocks
    monkeypatch.setenv(U.ENV_QUOTA, str(2.4 * one / 1e6))  # room for two uploads, not three
    for name in ("b.zip",):
        paths[name] = checks.save_upload(name, archives[name])
        assert checks.load_upload(paths[name]).num_classes == 2
    key = paths["b.zip"].stem.rsplit("-", 1)[1]
    for p in (tinytl_home / "uploads").iterdir():  # b's archive and extraction share its digest prefix
        _age(p, 600 if key in p.name else 300)  # b is the least recently used
    gc.collect()  # the loaded splits above are gone: nothing is in use
    paths["c.zip"] = checks.save_upload("c.zip", archives["c.zip"])
    checks.load_upload(paths["c.zip"])
    kept = kept_uploads()
    assert [item.name for item in kept.items] == ["c.zip", "a.zip"]
    assert not paths["b.zip"].exists() and paths["a.zip"].exists() and len(_dirs(tinytl_home)) == 2
    assert kept.total_bytes <= kept.quota_bytes == upload_quota_bytes()
    message = kept.message()
    assert message.startswith("2 uploads kept on the server (") and "KB of the" in message
    assert "c.zip, a.zip" in message and "least recently used are deleted" in message
    # b's name is kept (a few bytes), so its old runs keep their label
    assert dataset_display_name(str(paths["b.zip"])) == "b.zip"
    # b again: stored again, and now a is the least recently used
    paths["b.zip"] = checks.save_upload("b.zip", archives["b.zip"])
    usage = U.enforce_upload_quota(keep=[paths["b.zip"]])
    assert usage.total_bytes <= usage.quota_bytes


def test_uploads_in_use_are_never_evicted(tinytl_home, monkeypatch):
    a, b = _dataset_zip(1), _dataset_zip(2)
    monkeypatch.setenv(U.ENV_QUOTA, str(2.5 * len(a) / 1e6))  # one upload fits, two do not
    path_a = checks.save_upload("a.zip", a)
    training = checks.load_upload(path_a)  # a run holds these splits: the extraction is leased
    assert kept_uploads().items[0].in_use
    with pytest.raises(
        UploadQuotaError, match=r"b.zip needs 1\d\d KB, but 1\d\d KB of .* is held by uploads in use"
    ):
        checks.save_upload("b.zip", b)
    assert training.train.image(0).size == (64, 64)  # the run still reads its images
    assert len(_files(tinytl_home, ".zip")) == 1 and len(_dirs(tinytl_home)) == 1
    del training
    gc.collect()
    path_b = checks.save_upload("b.zip", b)
    assert checks.load_upload(path_b).num_classes == 2  # a is no longer in use: evicted
    assert [item.name for item in kept_uploads().items] == ["b.zip"] and not path_a.exists()


def test_a_lease_held_by_another_process_protects_the_extraction(tinytl_home, monkeypatch):
    if U.fcntl is None:
        pytest.skip("no flock on this platform")
    data = _dataset_zip(3)
    monkeypatch.setenv(U.ENV_QUOTA, "1000")
    splits = load_dataset(checks.save_upload("a.zip", data))
    folder = next(p for p in (tinytl_home / "uploads").iterdir() if p.is_dir())
    del splits
    gc.collect()
    lock = U._lock_path(folder)
    holder = subprocess.Popen(  # another process (a CLI run) holds the shared lock
        [
            sys.executable,
            "-c",
            "import fcntl,sys;f=open(sys.argv[1],'a+b');fcntl.flock(f,fcntl.LOCK_SH);"
            "print('held',flush=True);sys.stdin.read()",
            str(lock),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv(U.ENV_QUOTA, "0.001")
        usage = U.enforce_upload_quota()
        assert usage.evicted == () and folder.is_dir() and usage.items[0].in_use
    finally:
        holder.communicate("", timeout=30)
    usage = U.enforce_upload_quota()
    assert [item.name for item in usage.evicted] == ["a.zip"] and not folder.exists()


def test_leftovers_of_interrupted_extractions_are_cleaned(tinytl_home):
    root = tinytl_home / "uploads"
    root.mkdir(parents=True)
    (root / "upload-old").mkdir()
    (root / "upload-old" / "x.png").write_bytes(b"x" * 1000)
    (root / "upload-new").mkdir()  # an extraction under way right now: left alone, but counted
    (root / ".a-0123456789abcdef.zip.1.2.tmp").write_bytes(b"x")
    (root / "zip-0123456789abcdef01234567.lock").write_bytes(b"")
    for name in ("upload-old", ".a-0123456789abcdef.zip.1.2.tmp", "zip-0123456789abcdef01234567.lock"):
        _age(root / name, 2 * U.STALE_S)
    U.enforce_upload_quota()
    assert sorted(p.name for p in root.iterdir()) == ["upload-new"]


def test_the_upload_keeps_its_own_name_as_label(tinytl_home):
    data = _dataset_zip(4)
    path = checks.save_upload("../My pets (2024)!.zip", data)
    assert path.name.startswith("My_pets_2024-") and path.parent == tinytl_home / "uploads"
    assert dataset_display_name(str(path)) == "My pets (2024)!.zip"
    assert load_dataset(path).name == "My pets (2024)!"
    # Same bytes under another name with the same safe stem: its own file, its own label.
    other = checks.save_upload("My pets (2024)?.zip", data)
    assert other != path and dataset_display_name(str(other)) == "My pets (2024)?.zip"
    assert checks.save_upload("My pets (2024)!.zip", data) == path
    # Runs stored before names were kept: the stem without the digest.
    assert dataset_display_name("/srv/x/uploads/my_pets-0123456789abcdef.zip") == "my_pets.zip"
    assert dataset_display_name("C:\\data\\uploads\\my_pets-0123456789abcdef.zip") == "my_pets.zip"
    # Everything else as before.
    assert dataset_display_name("digits") == "digits"
    assert dataset_display_name("/home/me/flowers/") == "flowers"
    assert dataset_display_name("/home/me/pets-0123456789abcdef.zip") == "pets-0123456789abcdef.zip"
    assert dataset_display_name(None) == "" and dataset_display_name("") == ""
    # Odd names from a browser: no folders, no control characters, bounded length.
    odd = checks.save_upload("a\x1b[31m" + "b" * 300 + ".zip", data)
    label = dataset_display_name(str(odd))
    assert "\x1b" not in label and len(label) <= U.MAX_NAME_CHARS and label.startswith("a[31mbbb")


def test_only_kept_uploads_are_ever_discarded(tinytl_home, tmp_path):
    mine = tmp_path / "mine-0123456789abcdef.zip"  # a user's own archive that merely looks like an upload
    mine.write_bytes(_dataset_zip(5, classes=("cats",)))
    with pytest.raises(DatasetError, match="cannot use mine-0123456789abcdef.zip: found 1 class"):
        checks.load_upload(mine)
    assert mine.exists() and _dirs(tinytl_home) == []  # the refused extraction went, the user's file stays


def test_the_quota_counts_disk_blocks_not_bytes(tinytl_home, monkeypatch):
    """Thousands of one-byte files take a disk block each: the quota and the size cap count that (a 1.9 MB
    zip of 19,990 one-byte files used to count 2 MB for 82 MB on disk)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for c in ("cats", "dogs"):
            for i in range(2):
                zf.writestr(f"{c}/{i}.png", _noise_png(i, 8))
        for i in range(600):
            zf.writestr(f"cats/f{i}", b"x")
    upload = checks.save_upload("tiny.zip", buf.getvalue())
    checks.load_upload(upload)
    kept = kept_uploads()
    assert kept.total_bytes >= 600 * 4096  # not the ~600 bytes of content
    used = sum(
        max(os.lstat(os.path.join(d, n)).st_size, os.lstat(os.path.join(d, n)).st_blocks * 512)
        for d, dirs, files in os.walk(tinytl_home / "uploads")
        for n in (*dirs, *files)
    )
    assert used - 3 * 4096 <= kept.total_bytes <= used  # what `du` sees (less the name file and a lock)
    monkeypatch.setenv(U.ENV_QUOTA, str(1_000_000 / 1e6))  # 1 MB: the blocks do not fit
    gc.collect()
    with pytest.raises(UploadQuotaError):
        checks.load_upload(checks.save_upload("tiny again.zip", buf.getvalue() + b""))


def test_an_upload_that_can_never_fit_says_so_not_that_uploads_are_in_use(tinytl_home, monkeypatch):
    """The class: an upload needs room for its archive and its extraction. One that needs more than the
    whole quota by itself is refused up front, before anything is written or extracted, saying it can
    never fit (it was refused after extraction, blaming "uploads in use" when none were); one refused
    because uploads in use or pinned by queued jobs hold the room says that instead."""
    data = _dataset_zip(6, per_class=4, classes=("a", "b"))
    need = U._blocks(len(data)) + U._extraction_bytes(data)
    monkeypatch.setenv(U.ENV_QUOTA, str((len(data) + need) / 2 / 1e6))  # the archive fits, not with its files
    check = checks.check_upload("pets.zip", data)
    assert check.path is None and "in use" not in check.error
    assert check.error.startswith(f"pets.zip needs {U._size_text(need)}: the archive (")
    assert "plus its extracted files" in check.error and "so it can never fit" in check.error
    assert "upload a smaller archive" in check.error and U.ENV_QUOTA in check.error
    assert list((tinytl_home / "uploads").iterdir()) == []  # nothing written, nothing extracted
    # Room held by a queued job's upload (pinned, not in use): that is what the refusal names.
    first = _dataset_zip(7, per_class=4, classes=("a", "b"))
    monkeypatch.setenv(U.ENV_QUOTA, str(1.5 * need / 1e6))  # one upload fits, not two
    path = checks.save_upload("first.zip", first)
    checks.load_upload(path)
    gc.collect()
    assert not kept_uploads().items[0].in_use
    monkeypatch.setattr(U, "_PIN_SOURCES", [lambda: [path]])
    with pytest.raises(UploadQuotaError, match=r"pets.zip needs .* is held by uploads in use") as refused:
        checks.save_upload("pets.zip", data)
    held = kept_uploads().total_bytes
    assert f"but {U._size_text(held)} of the uploads quota" in str(refused.value)
    assert "never fit" not in str(refused.value) and path.exists()
    monkeypatch.setattr(U, "_PIN_SOURCES", [])  # the job ended: the first upload may go
    assert checks.load_upload(checks.save_upload("pets.zip", data)).num_classes == 2
    assert not path.exists()


def test_an_upload_whose_extraction_is_kept_needs_room_for_its_archive_only(tinytl_home, monkeypatch):
    data = _dataset_zip(8)
    checks.load_upload(checks.save_upload("a.zip", data))
    gc.collect()
    kept = kept_uploads().total_bytes
    monkeypatch.setenv(U.ENV_QUOTA, str((kept + U._blocks(len(data)) + 8192) / 1e6))
    other = checks.save_upload("same bytes.zip", data)  # another name: its own archive, the same extraction
    assert checks.load_upload(other).num_classes == 2 and len(_dirs(tinytl_home)) == 1
