"""Inputs GDAL reads through its virtual file systems: URLs, object stores and `/vsi...` paths.

    https://host/scene.tif   -> /vsicurl/https://host/scene.tif   (HTTP range reads of a COG)
    s3://bucket/key.tif      -> /vsis3/bucket/key.tif               (AWS_* settings, ~/.aws)
    gs://bucket/key.tif      -> /vsigs/bucket/key.tif               (GS_* / GOOGLE_APPLICATION_CREDENTIALS)
    az://container/key.tif   -> /vsiaz/container/key.tif            (AZURE_STORAGE_*)
    /vsi.../...              -> as given

Reading a remote file never downloads it: GDAL fetches the header and then only the blocks
(or overview blocks) a window needs. `configure_gdal` sets what such a reader needs, each only
where the user has not set it. A server that does not answer range requests is refused with one
line (GDAL cannot read a COG from it without downloading the whole file; geoseg does not do that
behind the user's back): download it and give the local file.

Provenance of a remote input is its URL without credentials or signed query strings, its size
and the ETag / Last-Modified the server gives (`remote_record`); its bytes are hashed only when
asked (`--hash-inputs`), since that reads the whole file once more.

GDAL's own file API (VSIFOpenL, VSIGetFileMetadata) is called through ctypes from the libgdal
rasterio loads, so sizes, headers and hashes go through the same credentials, proxies, timeouts
and retries as the raster reads.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from geoseg.errors import GeosegError, InputError

log = logging.getLogger("geoseg")

SCHEMES = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/"}

# What a COG reader needs, each set only where the user (environment or GDAL config) has not.
# These only change how GDAL reads over HTTP and object stores, so they go in the environment.
GDAL_DEFAULTS = {
    # only these extensions exist remotely: no probes for .aux.xml, .ovr, .msk sidecars
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.vrt,.jp2,.img,.png,.jpg,.jpeg,.json",
    "GDAL_CACHEMAX": "256",  # MB of block cache: tiles are read once (docs/performance.md)
    "GDAL_HTTP_CONNECTTIMEOUT": "15",  # seconds to connect
    "GDAL_HTTP_TIMEOUT": "120",  # seconds for one request
    "GDAL_HTTP_MAX_RETRY": "3",  # retries of 429/5xx answers and lost connections ...
    "GDAL_HTTP_RETRY_DELAY": "1",  # ... starting 1 s apart, doubling
}
# Set for remote paths only (GDAL path-specific options): on a local file, GDAL must still list
# its directory to find .aux.xml, .msk and .ovr sidecars.
REMOTE_ONLY = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
REMOTE_PREFIXES = ("/vsicurl/", "/vsis3/", "/vsigs/", "/vsiaz/", "/vsiadls/", "/vsioss/", "/vsiswift/")

HASH_CHUNK = 1 << 22
_configured = threading.Lock()
_extensions_added: set[str] = set()

# Query parameters that carry credentials or signatures (S3/GCS/Azure SAS/CloudFront/tokens).
SECRET_PARAMS = re.compile(
    r"^(x-amz-.*|x-goog-.*|sig|signature|se|st|sp|sv|sr|spr|srt|ss|skoid|sktid|skt|ske|sks|skv|"
    r"token|access_token|auth|authorization|key|api_key|apikey|password|pass|secret|expires|policy|"
    r"key-pair-id|credential|code)$",
    re.IGNORECASE,
)


# ---------------------------------------------------------------- names


def is_remote(source: str | Path) -> bool:
    """A URL GDAL reads through a virtual file system, or a /vsi path (not a local file)."""
    text = str(source)
    if text.startswith("/vsi"):
        return True
    scheme = urlsplit(text).scheme.lower()
    return scheme in SCHEMES and "://" in text


def gdal_path(source: str | Path) -> str:
    """What GDAL opens for `source`: a /vsi path for a URL, the path itself otherwise."""
    text = str(source)
    if text.startswith("/vsi") or not is_remote(text):
        return text
    scheme, _, rest = text.partition("://")
    prefix = SCHEMES[scheme.lower()]
    return prefix + text if prefix == "/vsicurl/" else prefix + rest


def redact(source: str | Path) -> str:
    """`source` without credentials: no user:password@, no signature or token query parameters."""
    text = str(source)
    prefix = ""
    match = re.match(r"^(/vsi[a-z0-9_]+(?:\?[^/]*)?/)(.*)$", text)
    if match:
        prefix, text = match.group(1), match.group(2)
        if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
            return prefix + text
    try:
        parts = urlsplit(text)
    except ValueError:
        return prefix + text
    if not parts.scheme:
        return prefix + text
    netloc = parts.netloc.rpartition("@")[2]
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if not SECRET_PARAMS.match(k)])
    return prefix + urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def display_name(source: str | Path) -> str:
    """The file name part of a path or URL (progress bars, output templates)."""
    text = str(source)
    if is_remote(text):
        path = urlsplit(text).path if "://" in text else text
        return PurePosixPath(path).name or text
    return Path(text).name


def suffix(source: str | Path) -> str:
    """The extension of a path or URL, lower case, without its query string."""
    text = str(source)
    path = urlsplit(text).path if "://" in text else text
    return PurePosixPath(path).suffix.lower()


# ---------------------------------------------------------------- GDAL settings


def configure_gdal(source: str | Path | None = None) -> None:
    """Set GDAL's remote-read options (GDAL_DEFAULTS, REMOTE_ONLY) where the user has not, and
    allow `source`'s extension when geoseg's own extension list would refuse it. GDAL reads them
    when it opens and reads a file, so they apply to every thread from here on; a user's
    environment variable or GDAL config option (rasterio.Env) always wins."""
    with _configured:
        global _remote_only_set
        for key, value in GDAL_DEFAULTS.items():
            if key not in os.environ:
                os.environ[key] = value
                _extensions_added.add(key)  # geoseg's own value: may be extended below
        if not _remote_only_set:
            _remote_only_set = True
            try:
                lib = _lib()
                for key, value in REMOTE_ONLY.items():
                    if key in os.environ or lib.CPLGetConfigOption(key.encode(), None):
                        continue  # the user's own setting
                    for prefix in REMOTE_PREFIXES:
                        lib.VSISetPathSpecificOption(prefix.encode(), key.encode(), value.encode())
            except (OSError, AttributeError) as e:  # GDAL < 3.6: no path-specific options
                log.debug("GDAL path-specific options unavailable (%s)", e)
        ext = suffix(source) if source is not None else ""
        key = "CPL_VSIL_CURL_ALLOWED_EXTENSIONS"
        if key in _extensions_added:
            allowed = os.environ[key].split(",")
            if not ext:
                if "{noext}" not in allowed:
                    os.environ[key] = ",".join([*allowed, "{noext}"])
            elif ext not in allowed:
                os.environ[key] = ",".join([*allowed, ext])


_remote_only_set = False


# ---------------------------------------------------------------- GDAL's file API


class _Gdal:
    """The few VSI functions geoseg needs, from the libgdal rasterio has loaded."""

    def __init__(self) -> None:
        import rasterio._base

        lib = ctypes.CDLL(rasterio._base.__file__)  # dlsym searches its dependencies: libgdal
        lib.VSIFOpenL.restype = ctypes.c_void_p
        lib.VSIFOpenL.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        lib.VSIFReadL.restype = ctypes.c_size_t
        lib.VSIFReadL.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p]
        lib.VSIFSeekL.restype = ctypes.c_int
        lib.VSIFSeekL.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int]
        lib.VSIFTellL.restype = ctypes.c_uint64
        lib.VSIFTellL.argtypes = [ctypes.c_void_p]
        lib.VSIFCloseL.restype = ctypes.c_int
        lib.VSIFCloseL.argtypes = [ctypes.c_void_p]
        lib.VSIGetFileMetadata.restype = ctypes.POINTER(ctypes.c_char_p)
        lib.VSIGetFileMetadata.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
        lib.CSLDestroy.restype = None
        lib.CSLDestroy.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.CPLGetLastErrorMsg.restype = ctypes.c_char_p
        lib.CPLGetLastErrorMsg.argtypes = []
        lib.CPLErrorReset.restype = None
        lib.CPLErrorReset.argtypes = []
        lib.CPLGetConfigOption.restype = ctypes.c_char_p
        lib.CPLGetConfigOption.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        if hasattr(lib, "VSISetPathSpecificOption"):
            lib.VSISetPathSpecificOption.restype = None
            lib.VSISetPathSpecificOption.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p]
        self.lib = lib


_gdal: _Gdal | None = None


def _lib() -> Any:
    global _gdal
    if _gdal is None:
        _gdal = _Gdal()
    return _gdal.lib


def _open(path: str, what: str) -> Any:
    lib = _lib()
    lib.CPLErrorReset()
    handle = lib.VSIFOpenL(path.encode(), b"rb")
    if not handle:
        message = (lib.CPLGetLastErrorMsg() or b"").decode(errors="replace") or "cannot be opened"
        raise_for(what, message, opening=True)
    return handle


def read_chunks(path: str, what: str | None = None) -> Iterator[bytes]:
    """The bytes of a GDAL path, 4 MiB at a time (bounded memory)."""
    lib = _lib()
    handle = _open(path, what or redact(path))
    try:
        buffer = ctypes.create_string_buffer(HASH_CHUNK)
        while True:
            got = lib.VSIFReadL(buffer, 1, HASH_CHUNK, handle)
            if got:
                yield buffer.raw[:got]
            if got < HASH_CHUNK:
                message = (lib.CPLGetLastErrorMsg() or b"").decode(errors="replace")
                if message and "HTTP" in message:  # a read cut short by the server
                    raise_for(what or redact(path), message, opening=False)
                return
    finally:
        lib.VSIFCloseL(handle)


def read_text(path: str, what: str | None = None, limit: int = 16 << 20) -> str:
    """A small text file (a STAC Item) through GDAL; refuses one larger than `limit` bytes."""
    data = bytearray()
    for chunk in read_chunks(path, what):
        data += chunk
        if len(data) > limit:
            raise InputError(f"{what or redact(path)}: larger than {limit >> 20} MB; not a STAC Item")
    return data.decode("utf-8-sig")


def sha256(path: str, what: str | None = None) -> str:
    """Streaming sha256 of a remote file read through GDAL."""
    digest = hashlib.sha256()
    for chunk in read_chunks(path, what):
        digest.update(chunk)
    return digest.hexdigest()


def file_size(path: str) -> int | None:
    lib = _lib()
    lib.CPLErrorReset()
    handle = lib.VSIFOpenL(path.encode(), b"rb")
    if not handle:
        return None
    try:
        if lib.VSIFSeekL(handle, 0, 2) != 0:  # SEEK_END
            return None
        return int(lib.VSIFTellL(handle))
    finally:
        lib.VSIFCloseL(handle)


def headers(path: str) -> dict[str, str]:
    """The HTTP headers GDAL got for a /vsicurl/, /vsis3/, /vsigs/ or /vsiaz/ file ({} otherwise)."""
    lib = _lib()
    found = lib.VSIGetFileMetadata(path.encode(), b"HEADERS", None)
    if not found:
        return {}
    out = {}
    try:
        i = 0
        while found[i]:
            key, sep, value = found[i].decode(errors="replace").partition("=")
            if sep:
                out[key.strip().lower()] = value.strip()
            i += 1
    finally:
        lib.CSLDestroy(found)
    return out


def remote_record(source: str, href: str, *, hash_bytes: bool = False) -> dict[str, Any]:
    """Provenance of a remote input: URL without credentials, size, ETag, Last-Modified (where
    the server gives them) and, when asked, the sha256 of its bytes."""
    got = headers(href)
    size = file_size(href)
    if size is None and got.get("content-length", "").isdigit():
        size = int(got["content-length"])
    record: dict[str, Any] = {"url": redact(source), "bytes": size}
    for key, name in (("etag", "etag"), ("last-modified", "last_modified")):
        if got.get(key):
            record[name] = got[key]
    if hash_bytes:
        record["sha256"] = sha256(href, redact(source))
    return record


def fingerprint(source: str, href: str) -> dict[str, Any]:
    """What identifies a remote input's version without reading it (batch job keys)."""
    got = headers(href)
    return {"url": redact(source), "bytes": file_size(href), "etag": got.get("etag"),
            "last_modified": got.get("last-modified")}


# ---------------------------------------------------------------- errors


def raise_for(what: str, message: str, *, opening: bool) -> NoReturn:
    """Raise one line for a GDAL failure on a remote input: bad input (exit 2) when it opens, a
    runtime error (exit 1) when a read fails later (the connection was lost mid-run)."""
    text = message.strip().splitlines()[0] if message.strip() else "failed"
    # GDAL names the /vsi path, query string included: never show a signature or token
    text = re.sub(r"'?(/vsi[a-z0-9_]+/)?[a-zA-Z][a-zA-Z0-9+.-]*://[^\s']+'?", "the file", text)
    low = text.lower()
    code = re.search(r"http (?:response )?(?:code|error)[: ]*(\d{3})", low)
    status = int(code.group(1)) if code else None
    if "range downloading not supported" in low:
        raise InputError(
            f"{what}: the server does not answer HTTP range requests, which reading a remote raster "
            "needs; download the file (curl -O) and give the local path, or serve it with range "
            "support (any object store, nginx, Apache)") from None
    if status in (401, 403) or "access denied" in low or "accessdenied" in low or "forbidden" in low:
        raise InputError(
            f"{what}: access denied (HTTP {status or 403}); give credentials (AWS_*/GS_*/AZURE_* "
            "settings, GDAL_HTTP_HEADERS or GDAL_HTTP_AUTH) or check that a signed URL has not expired") from None
    if ("no_sign_request" in low or "credentials" in low) and ("gs://" in what or what.startswith("/vsigs")):
        raise InputError(
            f"{what}: no credentials for Google Cloud Storage ({text}); set GOOGLE_APPLICATION_CREDENTIALS "
            "(or GS_ACCESS_KEY_ID/GS_SECRET_ACCESS_KEY), or GS_NO_SIGN_REQUEST=YES for a public bucket") from None
    if ("no_sign_request" in low or "credentials" in low) and ("az://" in what or what.startswith("/vsiaz")):
        raise InputError(
            f"{what}: no credentials for Azure Blob Storage ({text}); set AZURE_STORAGE_CONNECTION_STRING "
            "(or AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_ACCESS_KEY or AZURE_STORAGE_SAS_TOKEN), or "
            "AZURE_NO_SIGN_REQUEST=YES for a public container") from None
    if "aws_secret_access_key" in low or "no_sign_request" in low or "credentials" in low:
        raise InputError(
            f"{what}: no credentials for the object store ({text}); set AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or AWS_NO_SIGN_REQUEST=YES for a public bucket") from None
    if status == 404 or "does not exist in the file system" in low or "no such file" in low \
            or "nosuchkey" in low or "nosuchbucket" in low:
        raise InputError(f"{what}: not found on the server (HTTP {status or 404}); check the URL") from None
    if "not recognized as" in low or "not a supported" in low:
        raise InputError(f"{what}: not a raster GDAL can read; give the URL of a GeoTIFF/COG (or a STAC Item .json)") from None
    if opening:
        if status is not None:
            raise InputError(f"{what}: the server answered HTTP {status}; check the URL") from None
        raise InputError(f"{what}: cannot be read ({text}); check the URL and the network") from None
    raise GeosegError(
        f"{what}: reading from the server failed mid-run ({text}); check the network and run again "
        "(geoseg batch --resume continues where it stopped)") from None
