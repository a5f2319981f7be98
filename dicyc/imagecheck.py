"""Is an image file complete? Checked from the file's own bytes, never by trusting ITK.

Why: ITK's NIfTI reader fills the missing part of a truncated file with zeros and reports
nothing, and its NIfTI writer reports a short write (a full disk) only as a line on stderr and
then returns normally. A truncated ``.nii.gz`` would therefore be trained on, evaluated and
synthesised from as if it were whole, and a half-written result would be published as a good
one. Every image format we read or write says in its header how many bytes of voxel data
follow, and a compressed stream ends with an end-of-stream marker and a checksum, so the check
is exact: :func:`check_image_file` reads the header, then the data stream to its end (in
chunks: bounded memory whatever the volume's size), and raises :class:`IncompleteImage` with
the reason when the data is shorter than announced, the stream ends early or its checksum
fails.

Formats: NIfTI-1/2 (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr`` with raw, gzip or bzip2
data), MetaImage (``.mha``, ``.mhd`` with raw or zlib data). What a check cannot interpret (an
ASCII payload, a list of data files, a header that is not of the expected kind, DICOM, PNG) is
left to ITK, which refuses those formats' short files itself; ``strict=True`` instead treats a
header it cannot parse as damage, for files we wrote ourselves (the sample cache).
"""

import bz2
import math
import os
import struct
import zlib
from pathlib import Path

_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"


class IncompleteImage(Exception):
    """An image file whose voxel data is missing or damaged; the message is a phrase (the reason)."""


def image_kind(path):
    """'nifti', 'nrrd' or 'meta' for the formats checked here, else None."""
    name = str(path).lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".nrrd", ".nhdr")):
        return "nrrd"
    if name.endswith((".mha", ".mhd")):
        return "meta"
    return None


def check_image_file(path, strict=False):
    """Raise :class:`IncompleteImage` unless ``path`` holds all the voxel data its header announces.

    Returns the number of voxel-data bytes found (``None`` when the format is not checked here).
    """
    kind = image_kind(path)
    if kind is None:
        return None
    path = Path(path)
    try:
        if kind == "nifti":
            return _check_nifti(path, strict)
        if kind == "nrrd":
            return _check_nrrd(path, strict)
        return _check_meta(path, strict)
    except OSError as exc:
        raise IncompleteImage(f"it could not be read to its end ({exc.strerror or exc})") from None


# ===================================================================== streams
def _short(have, need, what="voxel data"):
    return IncompleteImage(f"it holds {have} bytes of {what} where its header announces {need}, so the file was cut "
                           "short (or its header is wrong)")


def _ends_early():
    return IncompleteImage("its compressed data stops before the end-of-stream marker, so the file was cut short")


def _bad_checksum(what="compressed data"):
    return IncompleteImage(f"its {what} fails its checksum or does not decompress, so the file is damaged")


def _gzip_stream_length(fh):
    """Decompressed length of the gzip stream read from ``fh`` (all members, checksums checked)."""
    import gzip

    total = 0
    buffer = bytearray(_CHUNK)
    try:
        with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
            while True:
                n = gz.readinto(buffer)
                if not n:
                    return total
                total += n
    except EOFError:
        raise _ends_early() from None
    except (gzip.BadGzipFile, zlib.error):
        raise _bad_checksum() from None


def _stream_length(fh, inflater, damaged):
    """Decompressed length of one compressed stream read from ``fh`` by ``inflater``; ``damaged``:
    the exception type the decompressor raises on corrupt data."""
    total = 0
    try:
        while not inflater.eof:
            raw = fh.read(_CHUNK)
            if not raw:
                raise _ends_early()
            total += len(inflater.decompress(raw))
        return total
    except damaged:
        raise _bad_checksum() from None


def _zlib_stream_length(fh):
    """Decompressed length of one zlib (or gzip) stream from ``fh``: MetaImage's compressed data."""
    return _stream_length(fh, zlib.decompressobj(zlib.MAX_WBITS | 32), zlib.error)  # header detected


def _bz2_stream_length(fh):
    return _stream_length(fh, bz2.BZ2Decompressor(), OSError)


def _remaining(fh):
    here = fh.tell()
    return os.fstat(fh.fileno()).st_size - here


# ===================================================================== NIfTI
#: NIfTI datatype code -> bytes per voxel (the codes nifti1.h defines)
_NIFTI_ITEMSIZE = {
    2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
    1536: 16, 1792: 16, 2048: 32, 2304: 4,
}


def parse_nifti_header(head):
    """The fields of a NIfTI-1/2 header the checks need, read exactly as stored, or None.

    A dict with ``size`` (348 or 540), ``magic``, ``dim`` (8 ints), ``pixdim`` (8 floats),
    ``datatype``, ``vox_offset`` and ``sform_code``. Parsed with :mod:`struct` rather than
    nibabel so that checking a file needs no optional package (Slicer's Python may lack nibabel),
    and because ``nibabel.load`` "fixes" a header on the way (a zero pixdim becomes 1), which
    hides exactly what a check needs to see.
    """
    if len(head) < 348:
        return None
    for order in ("<", ">"):
        size = struct.unpack(order + "i", head[:4])[0]
        if size in (348, 540):
            break
    else:
        return None
    if len(head) < size:
        return None
    try:
        if size == 348:
            dim = struct.unpack(order + "8h", head[40:56])
            datatype = struct.unpack(order + "h", head[70:72])[0]
            pixdim = struct.unpack(order + "8f", head[76:108])
            vox_offset = struct.unpack(order + "f", head[108:112])[0]
            sform_code = struct.unpack(order + "h", head[254:256])[0]
            magic = bytes(head[344:348]).rstrip(b"\x00")
        else:
            magic = bytes(head[4:12]).split(b"\x00")[0]
            datatype = struct.unpack(order + "h", head[12:14])[0]
            dim = struct.unpack(order + "8q", head[16:80])
            pixdim = struct.unpack(order + "8d", head[104:168])
            vox_offset = struct.unpack(order + "q", head[168:176])[0]
            sform_code = struct.unpack(order + "i", head[348:352])[0]
    except struct.error:
        return None
    return {"size": size, "magic": magic, "dim": dim, "pixdim": pixdim, "datatype": datatype,
            "vox_offset": vox_offset, "sform_code": sform_code}


def _nifti_expected(head):
    """(header bytes, data offset, data bytes) from a NIfTI-1/2 header, or None when it is not one."""
    header = parse_nifti_header(head)
    if header is None or header["magic"] not in (b"n+1", b"n+2"):  # "ni1"/"ni2": data in a separate .img file
        return None
    ndim = header["dim"][0]
    itemsize = _NIFTI_ITEMSIZE.get(header["datatype"])
    offset = header["vox_offset"]
    if not 1 <= ndim <= 7 or itemsize is None or not math.isfinite(offset) or offset < 0:
        return None  # a header ITK will refuse or judge itself
    shape = header["dim"][1 : ndim + 1]
    if any(n < 0 for n in shape):
        return None
    return header["size"], int(offset), int(math.prod(int(n) for n in shape)) * itemsize


def nifti_header(path):
    """The NIfTI-1/2 header fields of ``path`` as stored (:func:`parse_nifti_header`), or None."""
    import gzip

    try:
        with open(path, "rb") as fh:
            opener = gzip.GzipFile(fileobj=fh, mode="rb") if fh.read(2) == _GZIP_MAGIC else None
            fh.seek(0)
            head = (opener.read(540) if opener is not None else fh.read(540))
    except (OSError, EOFError, zlib.error):
        return None
    return parse_nifti_header(head)


def _check_nifti(path, strict):
    with open(path, "rb") as fh:
        start = fh.read(2)
        fh.seek(0)
        if start == _GZIP_MAGIC:
            import gzip

            try:
                with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
                    head = gz.read(540)
            except EOFError:
                raise _ends_early() from None
            except (gzip.BadGzipFile, zlib.error):
                raise _bad_checksum() from None
            expected = _nifti_expected(head)
            if expected is None:
                if strict:
                    raise IncompleteImage("it has no valid NIfTI header")
                return None
            fh.seek(0)
            have = _gzip_stream_length(fh)
        else:
            if strict and str(path).lower().endswith(".gz"):
                raise IncompleteImage("it is not gzip-compressed although its name ends in .gz")
            expected = _nifti_expected(fh.read(540))
            if expected is None:
                if strict:
                    raise IncompleteImage("it has no valid NIfTI header")
                return None
            have = os.fstat(fh.fileno()).st_size
    _, offset, nbytes = expected
    if have < offset + nbytes:
        raise _short(max(have - offset, 0), nbytes)
    return nbytes


# ===================================================================== NRRD
_NRRD_TYPES = {}
for _names, _size in (
    (("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    (("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort", "unsigned short",
      "unsigned short int", "uint16", "uint16_t"), 2),
    (("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"), 4),
    (("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t",
      "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t", "double"), 8),
):
    for _name in _names:
        _NRRD_TYPES[_name] = _size


def _read_header_lines(fh, limit=1 << 20):
    """Text lines up to (not including) the first empty line, and the file offset after it."""
    lines = []
    while fh.tell() < limit:
        raw = fh.readline(limit)
        if not raw:
            return lines, None  # no blank line: the header never ended
        line = raw.rstrip(b"\r\n")
        if not line:
            return lines, fh.tell()
        lines.append(line.decode("latin-1"))
    return lines, None


def _check_nrrd(path, strict):
    detached_header = str(path).lower().endswith(".nhdr")
    with open(path, "rb") as fh:
        magic = fh.readline(64)
        if not magic.startswith(b"NRRD"):
            if strict:
                raise IncompleteImage("it has no NRRD header")
            return None
        lines, data_start = _read_header_lines(fh)
    fields = {}
    for line in lines:
        if line.startswith("#") or ":" not in line or ":=" in line:
            continue
        key, value = line.split(":", 1)
        fields[key.strip().lower()] = value.strip()
    try:
        itemsize = _NRRD_TYPES[fields["type"].lower()]
        nbytes = math.prod(int(s) for s in fields["sizes"].split()) * itemsize
    except (KeyError, ValueError):
        return None
    encoding = fields.get("encoding", "raw").lower()
    if encoding not in ("raw", "gzip", "gz", "bzip2", "bz2"):
        return None  # text encodings: ITK counts the values itself
    data_file = fields.get("data file") or fields.get("datafile")
    line_skip = int(fields.get("line skip", fields.get("lineskip", "0")) or 0)
    byte_skip = int(fields.get("byte skip", fields.get("byteskip", "0")) or 0)
    if data_file:
        if data_file.upper().startswith("LIST") or len(data_file.split()) > 1:
            return None  # one volume spread over several files
        data_path = Path(data_file) if os.path.isabs(data_file) else path.parent / data_file
        if not data_path.is_file():
            raise IncompleteImage(f"its data file {data_path.name} is missing")
        offset = 0
    else:
        if detached_header:
            return None
        if data_start is None:
            raise IncompleteImage("its header never ends, so it holds no voxel data")
        data_path, offset = path, data_start
    if line_skip:
        return None
    with open(data_path, "rb") as fh:
        fh.seek(offset)
        if encoding == "raw":
            have = _remaining(fh) - max(byte_skip, 0)
            if byte_skip == -1:
                have = _remaining(fh)
        else:
            if byte_skip > 0:
                fh.seek(byte_skip, os.SEEK_CUR)
            have = _gzip_stream_length(fh) if encoding in ("gzip", "gz") else _bz2_stream_length(fh)
    if have < nbytes:
        raise _short(max(have, 0), nbytes)
    return nbytes


# ===================================================================== MetaImage
_META_TYPES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4, "MET_LONG": 4,
    "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}


def _check_meta(path, strict):
    fields = {}
    data_start = None
    with open(path, "rb") as fh:
        for _ in range(200):
            raw = fh.readline(1 << 16)
            if not raw:
                break
            line = raw.decode("latin-1").strip()
            if "=" not in line:
                continue
            key, value = (part.strip() for part in line.split("=", 1))
            fields[key.lower()] = value
            if key.lower() == "elementdatafile":
                data_start = fh.tell()
                break
    if "elementdatafile" not in fields or "dimsize" not in fields:
        if strict:
            raise IncompleteImage("it has no complete MetaImage header")
        return None
    if fields.get("binarydata", "True").lower() not in ("true", "1"):
        return None
    try:
        itemsize = _META_TYPES[fields["elementtype"].upper()]
        channels = int(fields.get("elementnumberofchannels", "1"))
        nbytes = math.prod(int(s) for s in fields["dimsize"].split()) * itemsize * channels
        header_size = int(fields.get("headersize", "0"))
    except (KeyError, ValueError):
        return None
    data_file = fields["elementdatafile"]
    if data_file.upper() == "LOCAL":
        data_path, offset = path, data_start
    elif data_file.upper().startswith("LIST") or "%" in data_file or len(data_file.split()) > 1:
        return None
    else:
        data_path = Path(data_file) if os.path.isabs(data_file) else path.parent / data_file
        if not data_path.is_file():
            raise IncompleteImage(f"its data file {data_path.name} is missing")
        offset = max(header_size, 0)
    compressed = fields.get("compresseddata", "False").lower() in ("true", "1")
    with open(data_path, "rb") as fh:
        if compressed:
            fh.seek(offset)
            have = _zlib_stream_length(fh)
        elif header_size == -1:  # the data are the last bytes of the file
            have = os.fstat(fh.fileno()).st_size
        else:
            fh.seek(offset)
            have = _remaining(fh)
    if have < nbytes:
        raise _short(max(have, 0), nbytes)
    return nbytes
