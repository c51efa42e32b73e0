"""The GroupLens MovieLens formats: ``ml-20m.zip``, ``ml-1m.zip`` and ``ml-100k.zip``, or their ratings
file already extracted."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pandas as pd

from ...errors import EvcfError
from .common import _archive_errors, _corrupt_fix, _Text
from .delimited import _Layout, _read_delimited


# folder in the zip, file name, layout
_GROUPLENS: dict[str, tuple[str, str, _Layout]] = {
    "movielens-20m": ("ml-20m", "ratings.csv", _Layout(",", ("userId", "movieId", "rating", "timestamp"),
                                                       True, "userId", "movieId", "rating")),
    "movielens-1m": ("ml-1m", "ratings.dat", _Layout("::", ("UserID", "MovieID", "Rating", "Timestamp"),
                                                     False, "UserID", "MovieID", "Rating")),
    "movielens-100k": ("ml-100k", "u.data", _Layout("\t", ("user id", "item id", "rating", "timestamp"),
                                                    False, "user id", "item id", "rating")),
}


def _grouplens_text(raw: Path, folder: str, filename: str) -> _Text:
    """Find the ratings file: inside ``<folder>.zip``, already extracted, or in an extracted folder."""
    get_it = f"download {folder}.zip from GroupLens (the download step does this), or correct the path"
    if not raw.exists():
        raise EvcfError("file not found", path=raw, fix=get_it)
    if raw.is_dir():
        for candidate in (raw / filename, raw / folder / filename):
            if candidate.is_file():
                return _Text(candidate)
        raise EvcfError(f"directory holds neither {filename} nor {folder}/{filename}", path=raw, fix=get_it)
    if raw.suffix.lower() != ".zip" and not zipfile.is_zipfile(raw):
        return _Text(raw)  # an extracted ratings file
    with _archive_errors(raw, _corrupt_fix(raw)):
        with zipfile.ZipFile(raw) as archive:
            names = [info.filename for info in archive.infolist() if not info.is_dir()]
    wanted = f"{folder}/{filename}"
    if wanted in names:
        return _Text(raw, wanted)
    others = [name for name in names if name == filename or name.endswith("/" + filename)]
    if others:
        return _Text(raw, others[0])
    listing = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") if names else "nothing"
    raise EvcfError(f"archive has no member {wanted} (it holds {listing})", path=raw,
                    fix=f"this is not the GroupLens {folder}.zip: delete it and run again to re-download it")


def read_movielens(raw: Path, fmt: str) -> pd.DataFrame:
    """The ratings of a MovieLens archive (or extracted file, or folder) of format ``fmt``."""
    folder, filename, layout = _GROUPLENS[fmt]
    text = _grouplens_text(raw, folder, filename)
    if text.member is not None:
        fix = f"this is not the original GroupLens {folder}.zip: delete it and run again to re-download it"
    else:
        fix = f"restore the original {filename} from {folder}.zip, or delete it and download {folder}.zip again"
    return _read_delimited(text, layout, fix=fix)
