"""paygate_client: call paygate's services through the broker, from Python.

A small client of the broker protocol (broker/README.md), written from that
document alone: one ZeroMQ DEALER socket, one multipart message per request

    frame 0  b"PGW1"                    signature, protocol version 1
    frame 1  paygate.v1.Header          command REQUEST, correlation id,
                                        service, method, CallMeta
    frame 2  the request, protobuf      opaque to the broker

and exactly one REPLY with the same correlation id (frame 1: a Header whose
`status` is absent when OK; frame 2: the reply, protobuf). Needs Debian's
python3-zmq and python3-protobuf, and the modules protoc generates from
proto/*.proto (broker_pb2, status_pb2, ...) on sys.path: see README.md.

What it must never do: wait without a bound (every call has a deadline, and
the client gives up CLIENT_MARGIN_MS after it in case the broker is gone),
or hand a caller a reply that belongs to another call (replies are matched
by correlation id; late ones are dropped).

Identity: the broker admits only CURVE keys it knows (broker/README.md,
"Authentication"). The client takes its key from PAYGATE_CURVE_CERT (a
secret certificate made by paygate-certs) and the broker's public key from
PAYGATE_BROKER_CERT or PAYGATE_BROKER_PUBLIC_KEY, as every paygate process
does; PAYGATE_INSECURE_PLAINTEXT=1 talks to a plaintext (test) broker. The
key's certificate decides which principals it may claim and whether it may
name a user (CallMeta.caller.user_id). README.md says more.
"""

import os
import secrets
import time

import zmq

import broker_pb2
import status_pb2

SIGNATURE = b"PGW1"
DEADLINE_MS_DEFAULT = 5000  # as lib/rpc's rpc_deadline_default_ms
DEADLINE_MS_MAX = 0xFFFFFFFF  # CallMeta.deadline_ms is a uint32; the broker
# refuses more than its PAYGATE_BROKER_DEADLINE_MAX_MS (deadline_too_long)
CLIENT_MARGIN_MS = 1000  # wait this long past the deadline for the broker
REPLY_BYTES_MAX = 16 * 1024 * 1024  # larger replies are dropped as bogus
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 1000
PRINCIPAL_DEFAULT = "python-client"

Code = status_pb2.Code  # Code.Name(n) gives "INVALID_ARGUMENT" etc.


def status_text(status):
    """Returns 'status' (a paygate.v1.Status) as one line for people:
    "CODE reason: message" (the reason only when there is one)."""
    text = Code.Name(status.code)
    if status.reason:
        text += " " + status.reason
    if status.message:
        text += ": " + status.message
    if status.details:
        text += " " + ", ".join(f"{k}={v}" for k, v in sorted(status.details.items()))
    return text


def read_certificate(path):
    """Returns (public_key, secret_key) of the CZMQ certificate file 'path'
    as Z85 bytes (secret_key None in a public certificate). Raises
    ValueError when the file has no public key."""
    keys = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            name, sep, value = line.strip().partition("=")
            if sep and name.strip() in ("public-key", "secret-key"):
                keys[name.strip()] = value.strip().strip('"').encode("ascii")
    if len(keys.get("public-key", b"")) != 40:
        raise ValueError(f"{path}: not a CURVE certificate (no public-key)")
    secret = keys.get("secret-key")
    if secret is not None and (len(secret) != 40 or secret == b"0" * 40):
        secret = None
    return keys["public-key"], secret


def curve_keys_from_env(environ=None):
    """The client's CURVE keys from the environment, as lib/curve reads
    them: (public, secret, broker_public) Z85 bytes, or None with
    PAYGATE_INSECURE_PLAINTEXT=1 and no certificate. Raises ValueError,
    naming the variables, when there is neither."""
    env = os.environ if environ is None else environ
    cert = env.get("PAYGATE_CURVE_CERT", "")
    if not cert:
        if env.get("PAYGATE_INSECURE_PLAINTEXT", "") == "1":
            return None
        raise ValueError("no broker credentials: set PAYGATE_CURVE_CERT (a secret certificate "
                         "made by paygate-certs) and PAYGATE_BROKER_CERT or "
                         "PAYGATE_BROKER_PUBLIC_KEY; or, for a test broker only, "
                         "PAYGATE_INSECURE_PLAINTEXT=1")
    public, secret = read_certificate(cert)
    if secret is None:
        raise ValueError(f"{cert} has no secret key: give the secret certificate (*.cert_secret)")
    broker = env.get("PAYGATE_BROKER_PUBLIC_KEY", "").encode("ascii")
    if not broker and env.get("PAYGATE_BROKER_CERT", ""):
        broker, _ = read_certificate(env["PAYGATE_BROKER_CERT"])
    if len(broker) != 40:
        raise ValueError("the broker's public key is missing: set PAYGATE_BROKER_CERT or "
                         "PAYGATE_BROKER_PUBLIC_KEY")
    return public, secret, broker


def _local_status(code, message):
    """A Status made by this client (not received), e.g. for a broker that
    cannot be reached; 'reason' stays empty as in lib/rpc's client."""
    return status_pb2.Status(code=code, message=message)


class Client:
    """One connection to the broker at 'endpoint' (e.g.
    "tcp://127.0.0.1:55555"). Not thread-safe: use one per thread. The
    connection is made in the background; a call made before it is up
    waits for it within its deadline.

    'principal' names the calling program in every call's metadata
    (CallMeta.caller.principal); "gateway" is the HTTP gateway's, and the
    internal methods (user Debit/Credit, order MarkPaid) refuse it.
    'user_id' is the acting user for calls that do not name one.

    'curve' is (public, secret, broker_public) Z85 keys, None for a
    plaintext test broker, or "env" (the default): curve_keys_from_env(),
    which raises ValueError when the environment has no credentials."""

    def __init__(self, endpoint, principal=PRINCIPAL_DEFAULT, user_id="", context=None,
                 curve="env"):
        if curve == "env":
            curve = curve_keys_from_env()
        self.endpoint = endpoint
        self.principal = principal
        self.user_id = user_id
        self._owns_context = context is None
        self._context = context if context is not None else zmq.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        # Unwritable while the broker is unreachable, so a send waits for
        # the connection (within the deadline) instead of queueing forever.
        self._socket.setsockopt(zmq.IMMEDIATE, 1)
        self._socket.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        self._socket.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        if curve is not None:
            public, secret, broker = curve
            self._socket.curve_publickey = public
            self._socket.curve_secretkey = secret
            self._socket.curve_serverkey = broker
        self._socket.connect(endpoint)
        # Random start, far from wrapping a uint64: ids of a new client
        # never match replies still on their way to an old one.
        self._next_correlation = secrets.randbits(62)

    def close(self):
        """Closes the socket (and the context when the client made it)."""
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        if self._owns_context and self._context is not None:
            self._context.term()
            self._context = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def call(self, service, method, request, response_cls, deadline_ms=DEADLINE_MS_DEFAULT,
             user_id=None, request_id=None):
        """Calls 'service'.'method' with 'request' (a protobuf message) and
        waits for the answer. Returns (status, response): 'status' is the
        paygate.v1.Status of the REPLY (code OK when the header had none);
        'response' is the reply body decoded as 'response_cls' when the
        status is OK, else None. A reply body that is not a valid
        'response_cls' gives INTERNAL. 'user_id' (default: the client's)
        is the acting user; 'request_id' the tracing id (default: a new
        one). Never raises for a failed call: switch on status.code and
        status.reason. Raises ValueError for a 'deadline_ms' that is not
        an integer from 1 to DEADLINE_MS_MAX (a bug in the caller)."""
        status, body = self.call_raw(service, method, request.SerializeToString(), deadline_ms,
                                     user_id=user_id, request_id=request_id)
        if status.code != Code.OK:
            return status, None
        response = response_cls()
        try:
            response.ParseFromString(body)
        except Exception as error:  # google.protobuf's DecodeError and kin
            return _local_status(Code.INTERNAL,
                                 f"reply from {service}.{method} is not a valid "
                                 f"{response_cls.DESCRIPTOR.full_name}: {error}"), None
        return status, response

    def call_raw(self, service, method, body, deadline_ms=DEADLINE_MS_DEFAULT, user_id=None,
                 request_id=None):
        """Like call() with the request body as bytes, sent as is (so also
        bytes that are not a valid request). Returns (status, reply body
        bytes; b"" unless OK)."""
        if not isinstance(deadline_ms, int) or not 1 <= deadline_ms <= DEADLINE_MS_MAX:
            raise ValueError(f"deadline_ms must be an integer from 1 to {DEADLINE_MS_MAX}")
        give_up_at = time.monotonic() + (deadline_ms + CLIENT_MARGIN_MS) / 1000.0
        header = broker_pb2.Header(
            command=broker_pb2.REQUEST,
            correlation_id=self._next_correlation,
            service=service,
            method=method,
            meta=broker_pb2.CallMeta(
                request_id=request_id or "req_py_" + secrets.token_hex(8),
                deadline_ms=deadline_ms,
                caller=broker_pb2.Caller(
                    user_id=self.user_id if user_id is None else user_id,
                    principal=self.principal)))
        self._next_correlation = (self._next_correlation + 1) % (1 << 64)

        if not self._socket.poll(deadline_ms, zmq.POLLOUT):
            return _local_status(Code.UNAVAILABLE,
                                 f"broker not reachable at {self.endpoint}"), b""
        try:
            self._socket.send_multipart([SIGNATURE, header.SerializeToString(), body],
                                        flags=zmq.NOBLOCK)
        except zmq.ZMQError as error:
            return _local_status(Code.UNAVAILABLE, f"cannot send to broker: {error}"), b""
        return self._wait_reply(header.correlation_id, give_up_at, deadline_ms)

    def _wait_reply(self, correlation_id, give_up_at, deadline_ms):
        """Receives until the REPLY to 'correlation_id' comes or 'give_up_at'
        (time.monotonic()) passes. Drops replies to earlier calls and
        messages that are not well-formed REPLYs."""
        while True:
            left_ms = int((give_up_at - time.monotonic()) * 1000)
            if left_ms <= 0 or not self._socket.poll(left_ms, zmq.POLLIN):
                return _local_status(
                    Code.DEADLINE_EXCEEDED,
                    f"no reply from broker {self.endpoint} within "
                    f"{deadline_ms + CLIENT_MARGIN_MS} ms"), b""
            try:
                frames = self._socket.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                continue
            header = self._decode_reply(frames)
            if header is None or header.correlation_id != correlation_id:
                continue
            if header.HasField("status") and header.status.code != Code.OK:
                return header.status, b""
            status = header.status if header.HasField("status") else status_pb2.Status()
            return status, frames[2] if len(frames) == 3 else b""

    @staticmethod
    def _decode_reply(frames):
        """The Header of 'frames' when they are a well-formed REPLY, else
        None (a broker never sends anything else to a client)."""
        if len(frames) not in (2, 3) or frames[0] != SIGNATURE:
            return None
        if sum(len(f) for f in frames) > REPLY_BYTES_MAX:
            return None
        header = broker_pb2.Header()
        try:
            header.ParseFromString(frames[1])
        except Exception:
            return None
        return header if header.command == broker_pb2.REPLY else None

    def list_services(self, service="", deadline_ms=DEADLINE_MS_DEFAULT):
        """Discovery: broker.services List. Returns (status,
        paygate.v1.ListServicesReply or None): the live services and their
        instances (only 'service' when not empty), the broker's counters and
        the event bus's topics."""
        return self.call("broker.services", "List",
                         broker_pb2.ListServicesRequest(service=service),
                         broker_pb2.ListServicesReply, deadline_ms)
