import errno

from schemas.errors import DataError
from schemas.storage import human_bytes, is_disk_full, no_space_error


def test_full_disk_is_one_line_naming_folder_and_free_space(tmp_path):
    exc = OSError(errno.ENOSPC, "No space left on device")
    err = no_space_error(exc, tmp_path, "shards", needed=5_000_000, error_type=DataError)
    assert isinstance(err, DataError)
    text = str(err)
    assert "\n" not in text and str(tmp_path) in text and "free there" in text and "5.0 MB needed" in text


def test_other_os_errors_are_not_disk_full(tmp_path):
    assert no_space_error(OSError(errno.EACCES, "Permission denied"), tmp_path, "shards") is None
    assert not is_disk_full(ValueError("x"))


def test_chained_and_textual_disk_full_are_seen():
    try:
        try:
            raise OSError(errno.ENOSPC, "full")
        except OSError as inner:
            raise RuntimeError("write failed") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)
    assert is_disk_full(OSError("IOError: No space left on device. Detail: [errno 28]"))


def test_human_bytes():
    assert human_bytes(999) == "999 B"
    assert human_bytes(1500) == "1.5 KB"
    assert human_bytes(6_000_000) == "6.0 MB"
