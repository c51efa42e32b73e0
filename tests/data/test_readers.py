"""read_ratings: every raw format round-trips a fixture exactly, and bad input gives one clear EvcfError."""

from __future__ import annotations

import io
import re
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from grouplens_fixtures import (
    expected_netflix_order,
    make_ml1m_zip,
    make_ml20m_zip,
    make_ml100k_zip,
    make_netflix_kaggle,
    make_netflix_training_set,
    make_nf_prize_targz,
    random_ratings,
)

from evcf.data.readers import RAW_FORMATS, read_ratings
from evcf.errors import EvcfError


def assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == ["user", "item", "rating"]
    assert got.dtypes.tolist() == [np.int64, np.int64, np.float32]
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True), check_exact=True)


@pytest.fixture(scope="module")
def halves() -> pd.DataFrame:
    return random_ratings(1)


@pytest.fixture(scope="module")
def stars() -> pd.DataFrame:
    return random_ratings(2, n_users=50, n_items=30, n_rows=900, half_stars=False)


# -- round trips -------------------------------------------------------------------------------------


def test_fixture_frame_shape(halves):
    assert halves.dtypes.tolist() == [np.int64, np.int64, np.float32]
    assert not halves.duplicated(["user", "item"]).any()
    assert set(np.unique(halves["rating"])) <= {k / 2 for k in range(1, 11)}
    assert not halves["user"].is_monotonic_increasing  # shuffled


def test_ml20m_zip_round_trip(tmp_path, halves):
    assert_same(read_ratings(make_ml20m_zip(tmp_path / "ml-20m.zip", halves), "movielens-20m"), halves)


def test_ml20m_extracted_csv_and_folder(tmp_path, halves):
    archive = make_ml20m_zip(tmp_path / "ml-20m.zip", halves)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp_path / "x")
    assert_same(read_ratings(tmp_path / "x" / "ml-20m" / "ratings.csv", "movielens-20m"), halves)
    assert_same(read_ratings(tmp_path / "x", "movielens-20m"), halves)


def test_ml1m_round_trip(tmp_path, stars):
    assert_same(read_ratings(make_ml1m_zip(tmp_path / "ml-1m.zip", stars), "movielens-1m"), stars)


def test_ml100k_round_trip(tmp_path, stars):
    assert_same(read_ratings(make_ml100k_zip(tmp_path / "ml-100k.zip", stars), "movielens-100k"), stars)


def test_csv_round_trip(tmp_path, halves):
    path = tmp_path / "ratings.csv"
    halves.to_csv(path, index=False, float_format="%g")  # as evcf.data.synthetic.write_ratings does
    assert_same(read_ratings(path, "csv"), halves)


def test_csv_of_a_local_dataset_is_ratings_csv_in_its_folder(tmp_path, halves):
    folder = tmp_path / "mine"  # data/raw/<name>, the raw path of a `local: true` dataset
    folder.mkdir()
    halves.to_csv(folder / "ratings.csv", index=False, float_format="%g")
    assert_same(read_ratings(folder, "csv"), halves)
    (folder / "ratings.csv").rename(folder / "other.csv")
    with pytest.raises(EvcfError, match="file not found") as err:
        read_ratings(folder, "csv")
    assert "data/raw/<name>/ratings.csv" in err.value.fix


def test_csv_columns_in_any_order_and_extra_columns(tmp_path, halves):
    path = tmp_path / "ratings.csv"
    halves.assign(ts=7)[["rating", "ts", "item", "user"]].to_csv(path, index=False)
    assert_same(read_ratings(path, "csv"), halves)


@pytest.mark.parametrize("zipped", [False, True])
def test_netflix_kaggle_round_trip(tmp_path, stars, zipped):
    raw = make_netflix_kaggle(tmp_path / "netflix", stars, zipped=zipped)
    names = sorted(p.name for p in raw.iterdir())
    assert names == (["netflix-prize-data.zip"] if zipped else [f"combined_data_{k}.txt" for k in range(1, 5)])
    assert_same(read_ratings(raw, "netflix"), expected_netflix_order(stars))


def test_netflix_zip_with_any_name_in_subfolder(tmp_path, stars):
    make_netflix_kaggle(tmp_path / "k", stars)
    raw = tmp_path / "netflix"
    raw.mkdir()
    with zipfile.ZipFile(raw / "archive.zip", "w") as zf:
        for k in range(1, 5):
            zf.write(tmp_path / "k" / f"combined_data_{k}.txt", f"data/combined_data_{k}.txt")
    assert_same(read_ratings(raw, "netflix"), expected_netflix_order(stars))


@pytest.mark.parametrize("as_tar,reverse", [(False, False), (True, False), (True, True)])
def test_netflix_training_set_round_trip(tmp_path, stars, as_tar, reverse):
    raw = make_netflix_training_set(tmp_path / "netflix", stars, as_tar=as_tar, reverse_members=reverse)
    assert_same(read_ratings(raw, "netflix"), expected_netflix_order(stars))


def test_netflix_nf_prize_targz_round_trip(tmp_path, stars):
    raw = make_nf_prize_targz(tmp_path / "netflix", stars)
    assert_same(read_ratings(raw, "netflix"), expected_netflix_order(stars))


def test_netflix_layouts_agree(tmp_path, stars):
    frames = [
        read_ratings(make_netflix_kaggle(tmp_path / "a", stars), "netflix"),
        read_ratings(make_netflix_kaggle(tmp_path / "b", stars, zipped=True), "netflix"),
        read_ratings(make_netflix_training_set(tmp_path / "c", stars), "netflix"),
        read_ratings(make_netflix_training_set(tmp_path / "d", stars, as_tar=True), "netflix"),
    ]
    for frame in frames[1:]:
        assert_same(frame, frames[0])


def test_netflix_many_movies_across_parser_chunks(tmp_path, monkeypatch):
    """Movie ids must carry across the parser's chunks and the per-movie batches."""
    import evcf.data.readers.netflix as readers

    monkeypatch.setattr(readers, "_NETFLIX_CHUNK_ROWS", 7)
    monkeypatch.setattr(readers, "_NETFLIX_BATCH_BYTES", 300)
    df = random_ratings(5, n_users=40, n_items=25, n_rows=400, half_stars=False)
    want = expected_netflix_order(df)
    assert_same(read_ratings(make_netflix_kaggle(tmp_path / "a", df), "netflix"), want)
    assert_same(read_ratings(make_netflix_training_set(tmp_path / "b", df, as_tar=True, reverse_members=True),
                             "netflix"), want)


FILLER = "9:\n99,4,2005-01-01\n"  # one valid rating: the other files of a complete Kaggle set


def complete_kaggle(raw: Path) -> None:
    """Add the combined_data_*.txt files a test does not write itself (a partial set is an error)."""
    for k in range(1, 5):
        if not (raw / f"combined_data_{k}.txt").exists():
            (raw / f"combined_data_{k}.txt").write_text(FILLER)


def test_netflix_crlf_and_blank_lines(tmp_path):
    raw = tmp_path / "netflix"
    raw.mkdir()
    (raw / "combined_data_1.txt").write_bytes(b"3:\r\n10,4,2005-01-01\r\n\r\n11,5,2005-01-02\r\n1:\r\n12,1,2004-01-01\r\n")
    complete_kaggle(raw)
    got = read_ratings(raw, "netflix")
    want = pd.DataFrame({"user": [10, 11, 12, 99, 99, 99], "item": [3, 3, 1, 9, 9, 9],
                         "rating": np.array([4, 5, 1, 4, 4, 4], np.float32)})
    assert_same(got, want)


# -- missing and malformed input ----------------------------------------------------------------------


def test_unknown_format(tmp_path):
    with pytest.raises(EvcfError) as info:
        read_ratings(tmp_path / "x.csv", "movielens-25m")
    message = str(info.value)
    assert "movielens-25m" in message
    for fmt in RAW_FORMATS:
        assert fmt in message


def test_missing_grouplens_file(tmp_path):
    with pytest.raises(EvcfError, match=r"ml-20m\.zip: file not found"):
        read_ratings(tmp_path / "ml-20m.zip", "movielens-20m")


@pytest.mark.parametrize("make", [None, "empty-dir", "other-files"])
def test_missing_netflix_says_where_to_put_it(tmp_path, make):
    raw = tmp_path / "data" / "raw" / "netflix"
    if make:
        raw.mkdir(parents=True)
    if make == "other-files":
        (raw / "README").write_text("x")
        with zipfile.ZipFile(raw / "unrelated.zip", "w") as zf:
            zf.writestr("a.txt", "hello")
    with pytest.raises(EvcfError) as info:
        read_ratings(raw, "netflix")
    message = str(info.value)
    assert "cannot be downloaded automatically" in message
    assert "netflix-inc/netflix-prize-data" in message and "nf_prize_dataset.tar.gz" in message
    assert f"{raw}/" in message and "combined_data_1.txt" in message and "training_set" in message
    assert message.count("\n") == 0


def _write_ml20m_lines(tmp_path: Path, lines: list[str]) -> Path:
    body = "userId,movieId,rating,timestamp\n" + "".join(line + "\n" for line in lines)
    path = tmp_path / "ml-20m.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml-20m/ratings.csv", body)
    return path


GOOD = ["1,10,4.0,100", "1,11,3.5,101", "2,10,5.0,102"]


@pytest.mark.parametrize("bad,reason", [
    ("1,abc,4.0,123", "movieId is not an integer"),
    ("1,12", "expected 4 fields"),
    ("1,12,4.0", "expected 4 fields"),
    ("1,12,4.0,5,6", "expected 4 fields"),
    ("1,12,,5", "rating is not a number"),
    ("1,12,four,5", "rating is not a number"),
    ("1,12,nan,5", "rating is not a number"),
    ("x1,12,4.0,5", "userId is not an integer"),
])
def test_ml20m_malformed_row_names_file_member_and_line(tmp_path, bad, reason):
    path = _write_ml20m_lines(tmp_path, GOOD + [bad] + GOOD)
    with pytest.raises(EvcfError) as info:
        read_ratings(path, "movielens-20m")
    message = str(info.value)
    assert message.startswith(f"{path}: member ml-20m/ratings.csv, line 5: malformed line")
    assert reason in message and repr(bad) in message
    assert "fix: " in message and "re-download" in message


def test_malformed_line_in_plain_csv(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("user,item,rating\n1,2,3\n1,3\n")
    with pytest.raises(EvcfError, match=r"ratings\.csv: line 3: malformed line \(expected 3 fields"):
        read_ratings(path, "csv")


def test_wrong_csv_header(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating\n1,2,3\n")
    with pytest.raises(EvcfError, match=r"line 1: header is 'userId,movieId,rating', expected user,item,rating"):
        read_ratings(path, "csv")


def test_wrong_ml20m_header(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("user,item,rating,timestamp\n1,2,3,4\n")
    with pytest.raises(EvcfError, match="line 1: header is"):
        read_ratings(path, "movielens-20m")


@pytest.mark.parametrize("fmt,content", [("csv", ""), ("csv", "user,item,rating\n"), ("movielens-100k", "")])
def test_empty_files(tmp_path, fmt, content):
    path = tmp_path / "ratings.txt"
    path.write_text(content)
    with pytest.raises(EvcfError, match=r"ratings\.txt: .*(empty|no ratings)"):
        read_ratings(path, fmt)


def test_ml1m_single_colon_is_malformed(tmp_path, stars):
    path = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ml-1m/ratings.dat", "1::2::3::4\n1:2:3::4::5\n")
    with pytest.raises(EvcfError, match=r"member ml-1m/ratings\.dat, line 2: malformed line \(expected 4 fields"):
        read_ratings(path, "movielens-1m")


def test_ml100k_bad_row(tmp_path):
    path = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t2\t3\t4\n1 2 3 4\n")
    with pytest.raises(EvcfError, match=r"u\.data, line 2: malformed line \(expected 4 fields separated by '\\t'"):
        read_ratings(path, "movielens-100k")


def test_zip_without_the_member(tmp_path):
    path = tmp_path / "ml-20m.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ml-20m/movies.csv", "movieId,title\n")
    with pytest.raises(EvcfError, match=r"ml-20m\.zip: archive has no member ml-20m/ratings\.csv .*movies\.csv"):
        read_ratings(path, "movielens-20m")


def test_truncated_zip(tmp_path, halves):
    path = make_ml20m_zip(tmp_path / "ml-20m.zip", halves)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(EvcfError) as info:
        read_ratings(path, "movielens-20m")
    message = str(info.value)
    assert message.startswith(f"{path}: archive is corrupt or truncated (")
    assert "delete" in message and "re-download" in message


def test_garbage_zip(tmp_path):
    path = tmp_path / "ml-1m.zip"
    path.write_bytes(b"<html>not found</html>\n" * 10)
    with pytest.raises(EvcfError, match=r"ml-1m\.zip: archive is corrupt or truncated"):
        read_ratings(path, "movielens-1m")


def test_damaged_zip_data(tmp_path):
    """A flipped byte inside the compressed member (central directory intact): CRC or inflate error."""
    rng = np.random.default_rng(0)
    df = random_ratings(3, n_users=200, n_items=100, n_rows=5000)
    path = make_ml20m_zip(tmp_path / "ml-20m.zip", df)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("ml-20m/ratings.csv")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for k in rng.integers(start + 100, start + info.compress_size - 100, size=20):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(EvcfError, match="archive is corrupt or truncated"):
        read_ratings(path, "movielens-20m")


def test_truncated_netflix_zip_and_tar(tmp_path, stars):
    raw = make_netflix_kaggle(tmp_path / "a", stars, zipped=True)
    archive = raw / "netflix-prize-data.zip"
    archive.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(EvcfError, match=r"netflix-prize-data\.zip: archive is corrupt or truncated.*re-obtain"):
        read_ratings(raw, "netflix")
    raw = make_nf_prize_targz(tmp_path / "b", stars)
    archive = raw / "nf_prize_dataset.tar.gz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(EvcfError, match=r"nf_prize_dataset\.tar\.gz: archive is corrupt or truncated"):
        read_ratings(raw, "netflix")


@pytest.mark.parametrize("bad,line,reason", [
    ("12,abc,2005-01-01", 4, "Rating is not a number"),
    ("12,3", 4, "expected 3 fields"),
    ("12", 4, "expected 'MovieID:'|expected 3 fields"),
    ("x:", 4, "expected 'MovieID:'"),
    ("12,3,2005:01", 4, "expected 'MovieID:'"),
    ("ab,3,2005-01-01", 4, "CustomerID is not an integer"),
])
def test_netflix_malformed_kaggle_line(tmp_path, bad, line, reason):
    raw = tmp_path / "netflix"
    raw.mkdir()
    (raw / "combined_data_1.txt").write_text("1:\n10,4,2005-01-01\n11,3,2005-01-01\n" + bad + "\n2:\n13,1,2005\n")
    complete_kaggle(raw)
    with pytest.raises(EvcfError) as info:
        read_ratings(raw, "netflix")
    message = str(info.value)
    assert message.startswith(f"{raw / 'combined_data_1.txt'}: line {line}: malformed line")
    assert re.search(reason, message)


def test_netflix_rating_before_first_movie(tmp_path):
    raw = tmp_path / "netflix"
    raw.mkdir()
    (raw / "combined_data_1.txt").write_text("10,4,2005-01-01\n1:\n11,3,2005-01-01\n")
    complete_kaggle(raw)
    with pytest.raises(EvcfError, match=r"line 1: malformed line \(rating line before the first 'MovieID:' line"):
        read_ratings(raw, "netflix")


def test_netflix_malformed_line_in_zip_and_tar_members(tmp_path):
    raw = tmp_path / "a"
    raw.mkdir()
    with zipfile.ZipFile(raw / "archive.zip", "w") as zf:
        zf.writestr("combined_data_1.txt", "1:\n10,4,2005\n")
        zf.writestr("combined_data_2.txt", "2:\n10,4,2005\n10;4;2005\n")
        zf.writestr("combined_data_3.txt", FILLER)
        zf.writestr("combined_data_4.txt", FILLER)
    with pytest.raises(EvcfError, match=r"archive\.zip: member combined_data_2\.txt, line 3: malformed line"):
        read_ratings(raw, "netflix")
    raw = tmp_path / "b"
    raw.mkdir()
    with tarfile.open(raw / "training_set.tar", "w") as tf:
        for name, text in [("training_set/mv_0000001.txt", b"1:\n10,4,2005\n"),
                           ("training_set/mv_0000002.txt", b"2:\n10,4,2005\n11,x,2005\n")]:
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tf.addfile(info, io.BytesIO(text))
    with pytest.raises(EvcfError, match=r"training_set\.tar: member training_set/mv_0000002\.txt, line 3: malformed"):
        read_ratings(raw, "netflix")


def test_netflix_loose_movie_file_with_two_movies(tmp_path):
    folder = tmp_path / "netflix" / "training_set"
    folder.mkdir(parents=True)
    (folder / "mv_0000001.txt").write_text("1:\n10,4,2005\n")
    (folder / "mv_0000002.txt").write_text("2:\n10,4,2005\n3:\n11,2,2005\n")
    with pytest.raises(EvcfError, match=r"mv_0000002\.txt: line 3: malformed line \(a second 'MovieID:'"):
        read_ratings(tmp_path / "netflix", "netflix")


def test_partial_kaggle_set_is_an_error_naming_the_missing_files(tmp_path):
    raw = tmp_path / "netflix"
    raw.mkdir()
    for k in (1, 2, 3):
        (raw / f"combined_data_{k}.txt").write_text(FILLER)
    with pytest.raises(EvcfError) as info:
        read_ratings(raw, "netflix")
    message = str(info.value)
    assert message.startswith(f"{raw}: incomplete Netflix Prize data: combined_data_4.txt missing")
    assert "combined_data_1.txt" not in message.split("missing")[0]


@pytest.mark.parametrize("content", ["", "\n\n", "1:\n"])
def test_netflix_file_without_ratings(tmp_path, content):
    raw = tmp_path / "netflix"
    raw.mkdir()
    (raw / "combined_data_1.txt").write_text("1:\n10,4,2005\n")
    (raw / "combined_data_2.txt").write_text(content)
    complete_kaggle(raw)
    with pytest.raises(EvcfError, match=r"combined_data_2\.txt: .*(no ratings|cannot parse)"):
        read_ratings(raw, "netflix")
