"""A gRPC client nobody here wrote: grpcio (Debian's python3-grpcio, gRPC's C core with its
own HTTP/2 stack), unmodified, dialing a server pod's address with no proxy setting, so only
the pod's capture rules can carry it through the sidecars. No generated stubs: the calls go
out as raw protobuf bytes (EchoRequest {message: 1, count: 2}), which is all grpcio needs.
Prints one JSON object with what each call got; the Rust test judges it.

Usage: grpcio_client.py TARGET
"""

import json
import sys

import grpc


def echo_request(message: str, count: int = 0) -> bytes:
    """EchoRequest encoded by hand: field 1 (string), field 2 (varint < 128)."""
    body = message.encode()
    assert len(body) < 128 and count < 128
    out = b"\x0a" + bytes([len(body)]) + body
    if count:
        out += b"\x10" + bytes([count])
    return out


def text(reply: bytes) -> str:
    """The reply's bytes as text, so the test can look for the strings it carries."""
    return reply.decode("latin-1")


def main() -> None:
    target = sys.argv[1]
    # No HTTP proxy even if the environment names one: the pod's rules are the only way.
    channel = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
    grpc.channel_ready_future(channel).result(timeout=10)
    result = {}

    unary = channel.unary_unary("/weft.sample.v1.Echo/Unary")
    reply, call = unary.with_call(echo_request("unary-hi"), timeout=10)
    result["unary"] = {"reply": text(reply), "code": call.code().name}

    stream = channel.unary_stream("/weft.sample.v1.Echo/ServerStream")
    result["server_stream"] = [text(r) for r in stream(echo_request("tick", 3), timeout=10)]

    bidi = channel.stream_stream("/weft.sample.v1.Echo/Bidi")
    requests = iter([echo_request(f"bidi-{i}") for i in range(4)])
    result["bidi"] = [text(r) for r in bidi(requests, timeout=10)]

    fail = channel.unary_unary("/weft.sample.v1.Echo/Fail")
    try:
        fail(echo_request("no such thing", 5), timeout=10)
        result["fail"] = {"code": "OK"}
    except grpc.RpcError as e:
        result["fail"] = {"code": e.code().name, "details": e.details()}

    channel.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
