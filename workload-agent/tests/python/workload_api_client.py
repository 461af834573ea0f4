"""Python clients of lanyard-agent's SPIFFE Workload API, driven by workload-agent/tests/python_clients.rs.

Each subcommand talks to the socket with an off-the-shelf client (py-spiffe or raw grpcio with
default channel options, i.e. grpc C-core's own `:authority`), checks what it got against the
DER files the Rust test wrote into EXPECTED_DIR, prints one line per observation for the Rust test
to read, and exits non-zero (with the reason on stderr) on any mismatch. `raw` and
`raw-no-header` print the gRPC status they got instead of judging it.

    workload_api_client.py SOCKET_URL EXPECTED_DIR fetch-svid|fetch-bundles|stream|raw|raw-no-header

EXPECTED_DIR holds chain.der (the DER certificates, leaf first, concatenated), key.der (PKCS#8)
and roots.der (the bundle's DER certificates, concatenated), as the agent published them.
"""

import hashlib
import os
import sys
import threading

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import load_der_x509_certificate
from spiffe import TrustDomain, WorkloadApiClient

TRUST_DOMAIN = "example.org"
SPIFFE_ID = "spiffe://example.org/svc"
TIMEOUT = 15.0
FETCH_X509_SVID = "/SpiffeWorkloadAPI/FetchX509SVID"


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def read(expected_dir, name):
    with open(os.path.join(expected_dir, name), "rb") as f:
        return f.read()


def split_der(data):
    """Splits concatenated DER certificates (SEQUENCE, definite length) into a list."""
    certs = []
    at = 0
    while at < len(data):
        check(data[at] == 0x30, f"not a DER SEQUENCE at offset {at}")
        first = data[at + 1]
        if first < 0x80:
            header, length = 2, first
        else:
            n = first & 0x7F
            header, length = 2 + n, int.from_bytes(data[at + 2 : at + 2 + n], "big")
        certs.append(data[at : at + header + length])
        at += header + length
    return certs


def der(cert):
    return cert.public_bytes(serialization.Encoding.DER)


def fingerprint(cert_der):
    return hashlib.sha256(cert_der).hexdigest()


def check_svid(svid, expected_dir):
    chain = split_der(read(expected_dir, "chain.der"))
    check(str(svid.spiffe_id) == SPIFFE_ID, f"SPIFFE ID {svid.spiffe_id} != {SPIFFE_ID}")
    got = [der(cert) for cert in svid.cert_chain]
    check(got == chain, f"chain differs: got {len(got)} certificates, expected {len(chain)}")
    key = svid.private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    check(key == read(expected_dir, "key.der"), "private key differs from the published one")


def check_bundles(bundle_set, expected_dir):
    bundle = bundle_set.get_bundle_for_trust_domain(TrustDomain(TRUST_DOMAIN))
    check(bundle is not None, f"no bundle for {TRUST_DOMAIN}")
    got = sorted(der(cert) for cert in bundle.x509_authorities)
    expected = sorted(split_der(read(expected_dir, "roots.der")))
    check(got == expected, f"bundle differs: got {len(got)} authorities, expected {len(expected)}")


def fetch_svid(socket, expected_dir):
    with WorkloadApiClient(socket_path=socket) as client:
        svid = client.fetch_x509_svid(timeout=TIMEOUT)
        check_svid(svid, expected_dir)
        print(f"svid {svid.spiffe_id} {fingerprint(der(svid.leaf))}", flush=True)


def fetch_bundles(socket, expected_dir):
    with WorkloadApiClient(socket_path=socket) as client:
        bundles = client.fetch_x509_bundles(timeout=TIMEOUT)
        check_bundles(bundles, expected_dir)
        print(f"bundles {TRUST_DOMAIN}", flush=True)


def stream(socket, expected_dir, rotations=3):
    """Prints the leaf fingerprint of each context; exits after the first one plus `rotations` new ones.

    The Rust test publishes the next SVID only after it has read the line for the current one, so
    every rotation must show up as its own update.
    """
    seen = []
    done = threading.Event()
    errors = []

    def on_success(context):
        leaf = fingerprint(der(context.default_svid.leaf))
        if str(context.default_svid.spiffe_id) != SPIFFE_ID:
            errors.append(f"stream: SPIFFE ID {context.default_svid.spiffe_id}")
            done.set()
            return
        if context.x509_bundle_set.get_bundle_for_trust_domain(TrustDomain(TRUST_DOMAIN)) is None:
            errors.append("stream: context without a bundle for the trust domain")
            done.set()
            return
        if seen and seen[-1] == leaf:
            return
        seen.append(leaf)
        print(f"context {leaf}", flush=True)
        if len(seen) == rotations + 1:
            done.set()

    def on_error(err):
        errors.append(f"stream error: {err}")
        done.set()

    with WorkloadApiClient(socket_path=socket) as client:
        handler = client.stream_x509_contexts(on_success, on_error, retry_connect=False)
        finished = done.wait(TIMEOUT * (rotations + 1))
        handler.cancel()
    check(not errors, "; ".join(errors))
    check(finished, f"saw {len(seen)} contexts, expected {rotations + 1}")
    check(len(set(seen)) == rotations + 1, "rotations repeated a certificate")


def protobuf_fields(message):
    """Decodes the length-delimited and varint fields of a protobuf message: {number: [value, ...]}."""
    fields = {}
    at = 0

    def varint():
        nonlocal at
        value, shift = 0, 0
        while True:
            b = message[at]
            at += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value

    while at < len(message):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            fields.setdefault(number, []).append(varint())
        elif wire == 2:
            length = varint()
            fields.setdefault(number, []).append(message[at : at + length])
            at += length
        else:
            fail(f"unexpected protobuf wire type {wire}")
    return fields


def raw(socket, expected_dir, header):
    """FetchX509SVID through grpcio with default options: raw bytes in, raw bytes out.

    Prints `status CODE details` when the call fails, for the Rust test to judge, or `ok ...`
    after checking the first response against what was published.
    """
    with grpc.insecure_channel(socket) as channel:
        call = channel.unary_stream(FETCH_X509_SVID)  # no (de)serializers: bytes as they are
        metadata = (("workload.spiffe.io", "true"),) if header else None
        responses = call(b"", metadata=metadata, timeout=TIMEOUT)
        try:
            first = next(responses)
        except grpc.RpcError as err:
            print(f"status {err.code().name} {err.details()}", flush=True)
            return
        finally:
            responses.cancel()
        svids = protobuf_fields(first).get(1, [])
        check(len(svids) == 1, f"expected one X509SVID, got {len(svids)}")
        svid = protobuf_fields(svids[0])
        check(svid.get(1) == [SPIFFE_ID.encode()], f"spiffe_id {svid.get(1)}")
        check(svid.get(2) == [read(expected_dir, "chain.der")], "x509_svid differs from the published chain")
        check(svid.get(3) == [read(expected_dir, "key.der")], "x509_svid_key differs from the published key")
        check(svid.get(4) == [read(expected_dir, "roots.der")], "bundle differs from the published roots")
        leaf = split_der(svid[2][0])[0]
        load_der_x509_certificate(leaf)
        print(f"ok {fingerprint(leaf)}", flush=True)


def main():
    if len(sys.argv) != 4:
        fail(__doc__)
    socket, expected_dir, command = sys.argv[1:]
    commands = {
        "fetch-svid": lambda: fetch_svid(socket, expected_dir),
        "fetch-bundles": lambda: fetch_bundles(socket, expected_dir),
        "stream": lambda: stream(socket, expected_dir),
        "raw": lambda: raw(socket, expected_dir, header=True),
        "raw-no-header": lambda: raw(socket, expected_dir, header=False),
    }
    if command not in commands:
        fail(f"unknown command {command}")
    commands[command]()


if __name__ == "__main__":
    main()
