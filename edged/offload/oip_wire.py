"""Open Inference Protocol (KServe v2) messages on the wire, without generated code.

The OIP gRPC service (``inference.GRPCInferenceService``) needs only a handful of messages;
this module encodes and decodes them with a ~150-line protobuf wire codec, so the edge imports
``grpcio`` alone (no ``protobuf`` runtime, no generated stubs: the lightest OIP client; see
docs/scale-out.md). The REST JSON form of the same messages is here too.

Tensors travel as ``raw_input_contents`` (little-endian bytes, one entry per input, in the
order of ``inputs``). Replies are decoded from ``raw_output_contents`` (MLServer, Triton) or
from the typed ``contents`` (KServe answers ``fp32_contents``), whichever the server sent.

Field numbers follow ``grpc_service.proto`` of the KServe v2 protocol (the same file MLServer
ships as ``dataplane.proto`` and Triton as ``grpc_service.proto``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

#: numpy dtype name -> OIP datatype
DATATYPES: Dict[str, str] = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64",
}
#: OIP datatype -> numpy dtype (little-endian on the wire)
NUMPY_DTYPES: Dict[str, np.dtype] = {v: np.dtype(k).newbyteorder("<") for k, v in DATATYPES.items()}
#: OIP datatype -> field number of its typed list in ``InferTensorContents``
_CONTENTS_FIELD: Dict[str, int] = {
    "BOOL": 1, "INT8": 2, "INT16": 2, "INT32": 2, "INT64": 3,
    "UINT8": 4, "UINT16": 4, "UINT32": 4, "UINT64": 5, "FP32": 6, "FP64": 7, "BYTES": 8,
}

ParamValue = Union[bool, int, float, str]


class OipWireError(ValueError):
    """A message that is not a well-formed OIP message (or a tensor OIP cannot carry)."""


def oip_datatype(dtype: Any) -> str:
    """The OIP datatype of a numpy dtype; raises :class:`OipWireError` naming it for one OIP cannot carry."""
    dt = np.dtype(dtype)
    try:
        return DATATYPES[dt.name]
    except KeyError:
        raise OipWireError(f"dtype {dt} has no Open Inference Protocol datatype; expected one of "
                           f"{', '.join(DATATYPES)}") from None


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype of an OIP datatype; raises :class:`OipWireError` for BYTES or an unknown name."""
    try:
        return NUMPY_DTYPES[datatype]
    except KeyError:
        raise OipWireError(f"OIP datatype {datatype!r} is not supported here; expected one of "
                           f"{', '.join(NUMPY_DTYPES)}") from None


# ---- protobuf wire format ------------------------------------------------------------------------
def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int32/int64 negatives are 10-byte two's complement varints
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(num: int, wire_type: int) -> bytes:
    return _varint((num << 3) | wire_type)


def _len_field(num: int, payload: bytes) -> bytes:
    return _key(num, 2) + _varint(len(payload)) + payload


def _str_field(num: int, value: str) -> bytes:
    return _len_field(num, value.encode("utf-8")) if value else b""


def _read_varint(buf: bytes, pos: int) -> Tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise OipWireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise OipWireError("varint longer than 10 bytes")


def parse_fields(buf: bytes) -> Dict[int, List[Any]]:
    """Field number -> values in order: ``int`` for varints, ``bytes`` for length-delimited, fixed32 and
    fixed64 fields (4 and 8 raw bytes). Unknown fields are kept (callers ignore what they do not know)."""
    fields: Dict[int, List[Any]] = {}
    pos = 0
    n = len(buf)
    while pos < n:
        key, pos = _read_varint(buf, pos)
        num, wt = key >> 3, key & 7
        value: Any
        if wt == 0:
            value, pos = _read_varint(buf, pos)
        elif wt == 2:
            size, pos = _read_varint(buf, pos)
            if pos + size > n:
                raise OipWireError(f"field {num}: {size} bytes announced, {n - pos} left")
            value = bytes(buf[pos:pos + size])
            pos += size
        elif wt == 5:
            value, pos = bytes(buf[pos:pos + 4]), pos + 4
        elif wt == 1:
            value, pos = bytes(buf[pos:pos + 8]), pos + 8
        else:
            raise OipWireError(f"field {num}: wire type {wt} is not used by OIP messages")
        if pos > n:
            raise OipWireError(f"field {num}: truncated")
        fields.setdefault(num, []).append(value)
    return fields


def _one_str(fields: Mapping[int, List[Any]], num: int) -> str:
    vals = fields.get(num)
    if not vals:
        return ""
    v = vals[-1]
    if not isinstance(v, bytes):
        raise OipWireError(f"field {num}: expected a string")
    return v.decode("utf-8", "replace")


def _one_bool(fields: Mapping[int, List[Any]], num: int) -> bool:
    vals = fields.get(num)
    return bool(vals[-1]) if vals and isinstance(vals[-1], int) else False


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _varints(values: Sequence[Any]) -> List[int]:
    """Every varint of a repeated scalar field, packed (bytes) or not (ints)."""
    out: List[int] = []
    for v in values:
        if isinstance(v, int):
            out.append(v)
            continue
        pos = 0
        while pos < len(v):
            x, pos = _read_varint(v, pos)
            out.append(x)
    return out


# ---- parameters (map<string, InferParameter>) ----------------------------------------------------
def _encode_param(value: ParamValue) -> bytes:
    if isinstance(value, bool):
        return _key(1, 0) + _varint(int(value))
    if isinstance(value, int):
        return _key(2, 0) + _varint(value)
    if isinstance(value, str):
        return _len_field(3, value.encode("utf-8"))
    if isinstance(value, float):
        return _key(4, 1) + struct.pack("<d", value)
    raise OipWireError(f"parameter value {value!r}: expected bool, int, float or str")


def _encode_params(num: int, params: Optional[Mapping[str, ParamValue]]) -> bytes:
    out = b""
    for k, v in (params or {}).items():
        out += _len_field(num, _str_field(1, k) + _len_field(2, _encode_param(v)))
    return out


def _decode_param(buf: bytes) -> Optional[ParamValue]:
    f = parse_fields(buf)
    if 1 in f:
        return bool(f[1][-1])
    if 2 in f:
        return _signed64(int(f[2][-1]))
    if 3 in f:
        return f[3][-1].decode("utf-8", "replace")
    if 4 in f:
        return float(struct.unpack("<d", f[4][-1])[0])
    if 5 in f:
        return int(f[5][-1])
    return None


def _decode_params(entries: Sequence[bytes]) -> Dict[str, ParamValue]:
    out: Dict[str, ParamValue] = {}
    for e in entries:
        f = parse_fields(e)
        key = _one_str(f, 1)
        value = _decode_param(f[2][-1]) if f.get(2) else None
        if value is not None:
            out[key] = value
    return out


# ---- tensors -------------------------------------------------------------------------------------
@dataclass
class Tensor:
    """One named tensor of a request or reply."""

    name: str
    array: np.ndarray

    @property
    def datatype(self) -> str:
        return oip_datatype(self.array.dtype)


def _shape_field(num: int, shape: Sequence[int]) -> bytes:
    packed = b"".join(_varint(int(d)) for d in shape)
    return _len_field(num, packed) if shape else b""


def _raw_bytes(a: np.ndarray) -> bytes:
    dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    return np.ascontiguousarray(a, dtype=dt).tobytes()


def _typed_contents(a: np.ndarray, datatype: str) -> bytes:
    """``InferTensorContents`` holding ``a`` in the typed list of ``datatype`` (KServe's way of answering)."""
    if datatype == "FP16":
        raise OipWireError("FP16 has no typed contents in OIP; it travels as raw contents only")
    num = _CONTENTS_FIELD[datatype]
    flat = np.ascontiguousarray(a).reshape(-1)
    if datatype == "FP32":
        payload = flat.astype("<f4").tobytes()
    elif datatype == "FP64":
        payload = flat.astype("<f8").tobytes()
    else:
        payload = b"".join(_varint(int(v)) for v in flat.tolist())
    return _len_field(num, payload)


def _decode_typed(contents: bytes, datatype: str, shape: Sequence[int], name: str) -> np.ndarray:
    dt = numpy_dtype(datatype)
    num = _CONTENTS_FIELD.get(datatype)
    f = parse_fields(contents)
    vals = f.get(num, []) if num is not None else []
    if datatype in ("FP32", "FP64"):
        width = 4 if datatype == "FP32" else 8
        chunks = [v for v in vals if isinstance(v, bytes)]
        data = b"".join(chunks)
        if len(data) % width:
            raise OipWireError(f"output {name!r}: {len(data)} bytes of {datatype} contents")
        arr = np.frombuffer(data, dtype=dt)
    else:
        ints = _varints(vals)
        if datatype in ("INT8", "INT16", "INT32", "INT64"):
            ints = [_signed64(v) for v in ints]
        arr = np.asarray(ints, dtype=np.int64 if datatype != "UINT64" else np.uint64).astype(dt)
    return _reshape(arr, shape, name)


def _reshape(arr: np.ndarray, shape: Sequence[int], name: str) -> np.ndarray:
    want = int(np.prod(shape)) if len(shape) else 1
    if arr.size != want:
        raise OipWireError(f"tensor {name!r}: {arr.size} values for shape {list(shape)} ({want} expected)")
    return arr.reshape(tuple(int(d) for d in shape))


def _decode_raw(raw: bytes, datatype: str, shape: Sequence[int], name: str) -> np.ndarray:
    dt = numpy_dtype(datatype)
    if len(raw) % dt.itemsize:
        raise OipWireError(f"tensor {name!r}: {len(raw)} raw bytes are not a whole number of {datatype}")
    arr = np.frombuffer(raw, dtype=dt)
    out = _reshape(arr, shape, name)
    return out.astype(dt.newbyteorder("="), copy=False) if dt.byteorder == "<" else out


def _encode_tensor_meta(t_name: str, datatype: str, shape: Sequence[int],
                        params: Optional[Mapping[str, ParamValue]] = None, contents: bytes = b"") -> bytes:
    body = _str_field(1, t_name) + _str_field(2, datatype) + _shape_field(3, shape) + _encode_params(4, params)
    if contents:
        body += _len_field(5, contents)
    return body


# ---- ModelInfer ----------------------------------------------------------------------------------
def encode_infer_request(model: str, inputs: Mapping[str, np.ndarray], version: str = "", request_id: str = "",
                         outputs: Sequence[str] = (), parameters: Optional[Mapping[str, ParamValue]] = None,
                         padding: int = 0) -> bytes:
    """A serialized ``ModelInferRequest`` with every input as ``raw_input_contents``.

    ``padding`` bytes go in an unknown field (number 15) that servers skip: a bandwidth probe without a
    dummy model."""
    body = _str_field(1, model) + _str_field(2, version) + _str_field(3, request_id) + _encode_params(4, parameters)
    raws: List[bytes] = []
    for name, a in inputs.items():
        arr = np.asarray(a)
        body += _len_field(5, _encode_tensor_meta(name, oip_datatype(arr.dtype), arr.shape))
        raws.append(_raw_bytes(arr))
    for name in outputs:
        body += _len_field(6, _str_field(1, name))
    body += b"".join(_len_field(7, r) for r in raws)
    if padding > 0:
        body += _len_field(15, b"\0" * padding)
    return body


@dataclass
class InferRequest:
    """A decoded ``ModelInferRequest`` (what a test server or a proxy reads)."""

    model: str
    version: str
    request_id: str
    inputs: Dict[str, np.ndarray]
    outputs: List[str] = field(default_factory=list)
    parameters: Dict[str, ParamValue] = field(default_factory=dict)


def decode_infer_request(buf: bytes) -> InferRequest:
    f = parse_fields(buf)
    metas = [parse_fields(b) for b in f.get(5, [])]
    raws = f.get(7, [])
    if raws and len(raws) != len(metas):
        raise OipWireError(f"{len(metas)} inputs but {len(raws)} raw_input_contents")
    inputs: Dict[str, np.ndarray] = {}
    for i, m in enumerate(metas):
        name, datatype = _one_str(m, 1), _one_str(m, 2)
        shape = [_signed64(v) for v in _varints(m.get(3, []))]
        if raws:
            inputs[name] = _decode_raw(raws[i], datatype, shape, name)
        elif m.get(5):
            inputs[name] = _decode_typed(m[5][-1], datatype, shape, name)
        else:
            raise OipWireError(f"input {name!r} carries no data")
    outs = [_one_str(parse_fields(b), 1) for b in f.get(6, [])]
    return InferRequest(model=_one_str(f, 1), version=_one_str(f, 2), request_id=_one_str(f, 3), inputs=inputs,
                        outputs=outs, parameters=_decode_params(f.get(4, [])))


@dataclass
class InferResponse:
    """A decoded ``ModelInferResponse``: outputs by name in the server's order, and how they travelled."""

    model: str
    version: str
    request_id: str
    outputs: Dict[str, np.ndarray]
    parameters: Dict[str, ParamValue] = field(default_factory=dict)
    raw: bool = True  # False when the server answered typed contents (KServe)


def encode_infer_response(model: str, outputs: Mapping[str, np.ndarray], version: str = "", request_id: str = "",
                          parameters: Optional[Mapping[str, ParamValue]] = None, raw: bool = True) -> bytes:
    """A serialized ``ModelInferResponse``: raw contents (MLServer, Triton) or typed ones (KServe)."""
    body = _str_field(1, model) + _str_field(2, version) + _str_field(3, request_id) + _encode_params(4, parameters)
    raws: List[bytes] = []
    for name, a in outputs.items():
        arr = np.asarray(a)
        dtype = oip_datatype(arr.dtype)
        contents = b"" if raw else _typed_contents(arr, dtype)
        body += _len_field(5, _encode_tensor_meta(name, dtype, arr.shape, contents=contents))
        if raw:
            raws.append(_raw_bytes(arr))
    body += b"".join(_len_field(6, r) for r in raws)
    return body


def decode_infer_response(buf: bytes) -> InferResponse:
    """Decode a ``ModelInferResponse``; raw or typed contents, whichever the server sent.

    Raises :class:`OipWireError` naming the output that does not add up."""
    f = parse_fields(buf)
    metas = [parse_fields(b) for b in f.get(5, [])]
    raws = f.get(6, [])
    if raws and len(raws) != len(metas):
        raise OipWireError(f"{len(metas)} outputs but {len(raws)} raw_output_contents")
    outputs: Dict[str, np.ndarray] = {}
    for i, m in enumerate(metas):
        name, datatype = _one_str(m, 1), _one_str(m, 2)
        shape = [_signed64(v) for v in _varints(m.get(3, []))]
        if raws:
            outputs[name] = _decode_raw(raws[i], datatype, shape, name)
        elif m.get(5):
            outputs[name] = _decode_typed(m[5][-1], datatype, shape, name)
        else:
            outputs[name] = _reshape(np.zeros(0, numpy_dtype(datatype)), shape, name)
    return InferResponse(model=_one_str(f, 1), version=_one_str(f, 2), request_id=_one_str(f, 3), outputs=outputs,
                         parameters=_decode_params(f.get(4, [])), raw=bool(raws) or not metas)


# ---- health, metadata, statistics ----------------------------------------------------------------
def encode_server_ready_request(padding: int = 0) -> bytes:
    """``ServerReadyRequest`` (no fields); ``padding`` bytes in an unknown field make it a bandwidth probe."""
    return _len_field(15, b"\0" * padding) if padding > 0 else b""


def encode_model_ready_request(model: str, version: str = "") -> bytes:
    """``ModelReadyRequest`` (also the shape of ``ModelMetadataRequest`` and ``ModelStatisticsRequest``)."""
    return _str_field(1, model) + _str_field(2, version)


def decode_ready_response(buf: bytes) -> bool:
    """``ServerReadyResponse`` / ``ModelReadyResponse``: ``ready`` (field 1)."""
    return _one_bool(parse_fields(buf), 1)


def encode_ready_response(ready: bool) -> bytes:
    return _key(1, 0) + _varint(1) if ready else b""


@dataclass
class ModelMetadata:
    name: str
    versions: List[str]
    platform: str
    inputs: List[Tuple[str, str, List[int]]]
    outputs: List[Tuple[str, str, List[int]]]


def decode_model_metadata(buf: bytes) -> ModelMetadata:
    f = parse_fields(buf)

    def tensors(num: int) -> List[Tuple[str, str, List[int]]]:
        out = []
        for b in f.get(num, []):
            m = parse_fields(b)
            out.append((_one_str(m, 1), _one_str(m, 2), [_signed64(v) for v in _varints(m.get(3, []))]))
        return out

    return ModelMetadata(name=_one_str(f, 1), versions=[v.decode("utf-8", "replace") for v in f.get(2, [])],
                         platform=_one_str(f, 3), inputs=tensors(4), outputs=tensors(5))


def decode_compute_infer_stats(buf: bytes, model: str) -> Optional[Tuple[int, int]]:
    """``(count, ns)`` of ``inference_stats.compute_infer`` for ``model`` in a Triton ``ModelStatisticsResponse``
    (the statistics extension), or None when the reply has none for it."""
    f = parse_fields(buf)
    for b in f.get(1, []):  # repeated ModelStatistics model_stats = 1
        ms = parse_fields(b)
        if _one_str(ms, 1) != model or not ms.get(6):
            continue
        stats = parse_fields(ms[6][-1])  # InferStatistics inference_stats = 6
        if not stats.get(5):
            return None
        dur = parse_fields(stats[5][-1])  # StatisticDuration compute_infer = 5 {count = 1, ns = 2}
        count = int(dur.get(1, [0])[-1])
        ns = int(dur.get(2, [0])[-1])
        return count, ns
    return None


def encode_compute_infer_stats(model: str, count: int, ns: int, version: str = "") -> bytes:
    """A minimal Triton ``ModelStatisticsResponse`` (for tests and fakes)."""
    dur = _key(1, 0) + _varint(count) + _key(2, 0) + _varint(ns)
    stats = _len_field(5, dur)
    ms = _str_field(1, model) + _str_field(2, version) + _len_field(6, stats)
    return _len_field(1, ms)


# ---- REST JSON -----------------------------------------------------------------------------------
def encode_rest_request(inputs: Mapping[str, np.ndarray], request_id: str = "",
                        parameters: Optional[Mapping[str, ParamValue]] = None) -> bytes:
    """The JSON body of ``POST /v2/models/{name}[/versions/{v}]/infer`` (flat ``data`` lists: small tensors)."""
    import orjson

    body: Dict[str, Any] = {"inputs": []}
    if request_id:
        body["id"] = request_id
    if parameters:
        body["parameters"] = dict(parameters)
    for name, a in inputs.items():
        arr = np.asarray(a)
        body["inputs"].append({"name": name, "shape": list(arr.shape), "datatype": oip_datatype(arr.dtype),
                               "data": arr.reshape(-1).tolist()})
    return orjson.dumps(body)


def decode_rest_response(buf: bytes) -> InferResponse:
    """Decode a REST inference reply; raises :class:`OipWireError` naming what is wrong."""
    import orjson

    try:
        doc = orjson.loads(buf)
    except orjson.JSONDecodeError as exc:
        raise OipWireError(f"reply is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("outputs"), list):
        raise OipWireError("reply has no 'outputs' list")
    outputs: Dict[str, np.ndarray] = {}
    for o in doc["outputs"]:
        if not isinstance(o, dict):
            raise OipWireError("an output is not an object")
        name = str(o.get("name"))
        dt = numpy_dtype(str(o.get("datatype")))
        shape = o.get("shape") or []
        try:
            arr = np.asarray(o.get("data", []), dtype=dt).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise OipWireError(f"output {name!r}: data is not {o.get('datatype')}: {exc}") from None
        outputs[name] = _reshape(arr, shape, name).astype(dt.newbyteorder("="), copy=False)
    params: Dict[str, Any] = doc["parameters"] if isinstance(doc.get("parameters"), dict) else {}
    return InferResponse(model=str(doc.get("model_name") or ""), version=str(doc.get("model_version") or ""),
                         request_id=str(doc.get("id") or ""), outputs=outputs,
                         parameters={k: v for k, v in params.items() if isinstance(v, (bool, int, float, str))},
                         raw=False)
