"""The data catalogue, datasets.yaml: where each dataset comes from and how it is checked.

Facts about the world, not parameters: each dataset's mirrors and public sources, the hashes of
its files and the names of its classes, and how patiently to download. Read as DVC reads YAML,
and checked whole before download does anything: a bad URL or hash is one line naming its key.
"""

import urllib.parse
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints, model_validator

from stages import layout, params
from stages.yaml12 import read_yaml

IDX_NAMES = tuple(name for name, _ in layout.IDX_FILES.values())


def load(path=layout.CATALOGUE):
    return params.checked(Catalogue, read_yaml(path), path)


def location_problem(location):
    """Why `location` is no usable mirror (a directory, or a file:// or http(s):// URL), or None.

    Checked before any connection, so that `http://[::1` or `http://a..b/` is a clear error
    rather than a traceback from deep inside urllib."""
    if not isinstance(location, str) or not location.strip():
        return "an empty location"
    if "\n" in location or "\0" in location:
        return "a location with a newline or NUL in it"
    if "://" not in location:
        return None  # a directory path
    try:
        url = urllib.parse.urlsplit(location)
        host, _ = url.hostname, url.port  # .port raises ValueError for a bad port
    except ValueError as e:
        return f"a malformed URL ({e})"
    if url.scheme == "file":
        return None if url.netloc in ("", "localhost") else \
            "a file:// URL with a host; use file:///absolute/path"
    if url.scheme not in ("http", "https"):
        return f"a URL with scheme '{url.scheme}'; expected file, http or https"
    if not host:
        return "an http(s) URL without a host"
    if ":" not in host and not all(0 < len(label) <= 63 for label in host.split(".")):
        return f"a URL whose host name '{host}' has an empty or overlong part"
    try:
        host.encode("idna")
    except UnicodeError as e:
        return f"a URL whose host name '{host}' is not valid ({e})"
    return None


def usable_location(location):
    problem = location_problem(location)
    if problem:
        raise ValueError(f"not a directory or a file://, http:// or https:// URL: {problem}")
    return location


Locations = list[Annotated[str, AfterValidator(usable_location)]]
Hex32 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
ClassName = Annotated[str, StringConstraints(min_length=1, max_length=40)]


class Digests(params.Section):
    """An IDX .gz: sha256 of what it decompresses to, and the published md5 of the .gz itself
    (optional). An npz: the sha256 or md5 of the file."""
    sha256: Hex64 | None = None
    gz_md5: Hex32 | None = None
    md5: Hex32 | None = None


class Dataset(params.Section):
    mirrors: Locations
    npz_sources: Locations
    idx_sources: Locations
    class_names: list[ClassName] = Field(min_length=2, max_length=100)
    checksums: dict[str, Digests]

    @model_validator(mode="after")
    def complete(self):
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError("class_names holds the same name twice")
        npz = [name for name in self.checksums if name.endswith(".npz")]
        if set(self.checksums) - set(npz) != set(IDX_NAMES) or len(npz) > 1:
            raise ValueError(f"checksums must name {', '.join(IDX_NAMES)} and at most one .npz")
        for name, digests in self.checksums.items():
            given = {k for k, v in digests.model_dump().items() if v}
            if given not in (({"sha256"}, {"md5"}) if name in npz else
                             ({"sha256"}, {"sha256", "gz_md5"})):
                raise ValueError(f"checksums of {name}: {sorted(given)} is not sha256 (and "
                                 "gz_md5 for an IDX .gz), or one of sha256 and md5 for an npz")
        return self


class DownloadSettings(params.Section):
    public_sources: bool
    timeout_s: float = Field(gt=0, le=600)
    deadline_s: float = Field(gt=0, le=86_400)
    retries: int = Field(ge=0, le=10)
    backoff_s: float = Field(ge=0, le=60)


class Catalogue(params.Section):
    download: DownloadSettings
    datasets: dict[str, Dataset]

    @model_validator(mode="after")
    def every_dataset(self):
        wanted = set(params.Data.model_fields["dataset"].annotation.__args__)
        if set(self.datasets) != wanted:
            raise ValueError(f"datasets must be exactly {', '.join(sorted(wanted))}")
        return self
