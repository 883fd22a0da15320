#!/usr/bin/python3
"""client_python_checks: the Python client against a real broker, for
tests/clients/client_python.sh (ctest client_python).

    client_python_checks.py ready --endpoint E [SERVICE...]
        exit 0 when the broker at E answers broker.services List and lists
        an instance of every SERVICE, else 1 (the runner polls it)

    client_python_checks.py negative --endpoint E [--deadline-ms MS]
        requests that are wrong in every documented way, each answered with
        the status broker/README.md gives for it; frames that are not the
        protocol at all, ignored (no answer) and counted; and afterwards the
        broker and the user service still answer. Prints "ok - ..." or
        "not ok - ..." per check; exit 1 when any check failed.

Needs the protoc-generated modules and clients/python on PYTHONPATH.
"""

import argparse
import sys

import zmq

import broker_pb2
import order_pb2
import user_pb2
from paygate_client import SIGNATURE, Client, Code, curve_keys_from_env, status_text

PROBE_CORRELATION = 4242  # of the valid request after the garbage


class Checks:
    def __init__(self):
        self.failed = 0
        self.passed = 0

    def check(self, name, condition, detail=""):
        if condition:
            self.passed += 1
            print(f"ok - {name}")
        else:
            self.failed += 1
            print(f"not ok - {name}" + (f": {detail}" if detail else ""))
        sys.stdout.flush()

    def status_is(self, name, status, code, reason, message_part=""):
        """Checks that 'status' has 'code' and 'reason' ("" = none) and
        that its message contains 'message_part'."""
        good = (status.code == code and status.reason == reason and
                message_part in status.message)
        want = Code.Name(code) + (f" {reason}" if reason else "")
        if message_part:
            want += f" (message with {message_part!r})"
        self.check(f"{name}: {want}", good, "got " + status_text(status))


def ready(args):
    with Client(args.endpoint, principal="client-python-test") as client:
        status, reply = client.list_services(deadline_ms=1000)
        if status.code != Code.OK:
            return 1
        live = {s.name for s in reply.services if len(s.instances) > 0}
        return 0 if set(args.services) <= live else 1


def broker_stats(client, checks, when, deadline_ms):
    """The broker's counters (None when it does not answer: a failed check)."""
    status, reply = client.list_services(deadline_ms=deadline_ms)
    checks.check(f"broker.services List answers {when}", status.code == Code.OK,
                 status_text(status))
    return reply.stats if reply is not None else None


def negative(args):
    checks = Checks()
    deadline = args.deadline_ms
    with Client(args.endpoint, principal="client-python-test") as client:
        before = broker_stats(client, checks, "before", deadline)

        # Bytes that are not a RegisterRequest: the worker cannot decode them.
        status, body = client.call_raw("user", "Register", b"\x0a\x10abc", deadline)
        checks.status_is("bad protobuf bytes to user.Register", status, Code.INVALID_ARGUMENT, "",
                         "paygate.v1.RegisterRequest")

        # A well-formed name nobody serves: the broker waits its grace
        # period for a worker, then answers itself.
        status, _ = client.call_raw("nosuch", "Do", b"", deadline)
        checks.status_is("unknown service nosuch", status, Code.UNAVAILABLE, "no_worker")

        # A service name the protocol does not allow.
        status, _ = client.call_raw("No Such Service!", "Do", b"", deadline)
        checks.status_is("malformed service name", status, Code.INVALID_ARGUMENT,
                         "malformed_request")

        # A deadline beyond the broker's maximum (60000 ms by default).
        status, _ = client.call("user", "GetWallet", user_pb2.GetWalletRequest(),
                                user_pb2.Wallet, deadline_ms=60001, user_id="usr_x")
        checks.status_is("deadline over the maximum", status, Code.INVALID_ARGUMENT,
                         "deadline_too_long")

        # A method the service does not have.
        status, _ = client.call_raw("user", "Teleport", b"", deadline)
        checks.status_is("unknown method user.Teleport", status, Code.UNIMPLEMENTED, "",
                         "Teleport")

        # No acting user in the call metadata.
        status, _ = client.call("order", "Create", order_pb2.CreateOrderRequest(amount=100),
                                order_pb2.Order, deadline, user_id="")
        checks.status_is("order.Create without caller.user_id", status, Code.UNAUTHENTICATED,
                         "unauthenticated")

        # Messages that are not the protocol at all are ignored (no answer)
        # and counted. The broker reads one connection in order, so when the
        # answer to a valid request sent after them arrives, they have all
        # been handled, and any answer to them would have come first.
        garbage = [
            [b"GET / HTTP/1.1\r\n\r\n"],                    # one frame
            [b"PGW2", b"\x08\x03"],                         # another version
            [SIGNATURE, b"\xff\xff\xff\xff"],               # header not protobuf
            [SIGNATURE, b"", b"", b"", b"too many frames"],  # five frames
        ]
        unknown_command = [SIGNATURE, broker_pb2.Header(command=99, correlation_id=7)
                           .SerializeToString()]
        probe = broker_pb2.Header(command=broker_pb2.REQUEST, correlation_id=PROBE_CORRELATION,
                                  service="broker.services", method="List",
                                  meta=broker_pb2.CallMeta(deadline_ms=deadline))
        context = zmq.Context()
        raw = context.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        keys = curve_keys_from_env()  # the same key as the client's (CURVE)
        if keys is not None:
            raw.curve_publickey, raw.curve_secretkey, raw.curve_serverkey = keys
        raw.connect(args.endpoint)
        for frames in garbage + [unknown_command]:
            raw.send_multipart(frames)
        raw.send_multipart([SIGNATURE, probe.SerializeToString(),
                            broker_pb2.ListServicesRequest().SerializeToString()])
        first = raw.recv_multipart() if raw.poll(deadline + 1000, zmq.POLLIN) else None
        raw.close()
        context.term()
        header, after = broker_pb2.Header(), broker_pb2.ListServicesReply()
        if first is not None and len(first) == 3 and first[0] == SIGNATURE:
            header.ParseFromString(first[1])
            after.ParseFromString(first[2])
        checks.check(f"{len(garbage) + 1} non-protocol messages get no answer: the first "
                     "answer on their socket is to the valid request after them",
                     header.command == broker_pb2.REPLY and
                     header.correlation_id == PROBE_CORRELATION,
                     f"got {first!r}")
        if before is not None and first is not None:
            malformed = after.stats.frames_malformed - before.frames_malformed
            unknown = after.stats.commands_unknown - before.commands_unknown
            # + 1: the malformed service name above
            checks.check(f"the broker counted them ({malformed} malformed, {unknown} unknown "
                         "command)", malformed >= len(garbage) + 1 and unknown >= 1)

        # The system still works: a real call, a real answer.
        status, _ = client.call("user", "Login",
                                user_pb2.LoginRequest(email="nobody@example.com",
                                                      password="wrong password"),
                                user_pb2.LoginReply, deadline)
        checks.status_is("user.Login still answers (a wrong password)", status,
                         Code.UNAUTHENTICATED, "invalid_credentials")
        status, reply = client.list_services("user", deadline)
        checks.check("the user service is still registered",
                     status.code == Code.OK and len(reply.services) == 1 and
                     len(reply.services[0].instances) > 0, status_text(status))

    print(f"{checks.passed} passed, {checks.failed} failed")
    return 1 if checks.failed else 0


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("ready")
    p.add_argument("--endpoint", required=True)
    p.add_argument("services", nargs="*")
    p = commands.add_parser("negative")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--deadline-ms", type=int, default=10000)
    args = parser.parse_args(argv)
    if args.command == "ready":
        return ready(args)
    return negative(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
