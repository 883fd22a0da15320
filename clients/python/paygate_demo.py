#!/usr/bin/python3
"""paygate_demo: the sample flow through the broker, from Python.

    register -> log in -> top up ₹2,000 -> create an order of ₹1,000 ->
    pay it -> the order is COMPLETED -> the wallet holds ₹1,000 -> the
    transaction history lists the top-up and the payment

Each step prints one line and checks the answer; the first failure prints
what went wrong and exits 1 (2: usage). Every run registers a new user, so
it can run again on the same system. The history is recorded from the event
bus a moment after the money moves, so the last step polls, for at most
--wait-ms.

    PYTHONPATH=<protoc --python_out dir>:clients/python \\
        /usr/bin/python3 clients/python/paygate_demo.py --endpoint tcp://127.0.0.1:55555
"""

import argparse
import base64
import json
import os
import secrets
import sys
import time

try:
    import order_pb2
    import payment_pb2
    import transaction_pb2
    import user_pb2
    from paygate_client import Client, Code, status_text
except ImportError as missing:
    sys.exit(f"paygate_demo: {missing}: generate the protobuf modules with protoc and put them "
             "and clients/python on PYTHONPATH (clients/python/README.md), and run Debian's "
             "/usr/bin/python3 with python3-zmq and python3-protobuf installed")

TOPUP_PAISE = 200000  # ₹2,000
ORDER_PAISE = 100000  # ₹1,000
STEPS = 8
WAIT_MS_DEFAULT = 20000  # for the history to record both movements
WAIT_MS_MAX = 600000
POLL_MS = 200
HISTORY_LIMIT = 10


class StepFailed(Exception):
    """A step's call failed or its answer is wrong; the text says how."""


def rupees(paise):
    """'paise' as rupees the Indian way: 123456789 -> "₹12,34,567.89",
    100000 -> "₹1,000" (no paise when they are 0)."""
    sign = "-" if paise < 0 else ""
    whole, part = divmod(abs(paise), 100)
    digits = str(whole)
    head, tail = digits[:-3], digits[-3:]
    groups = []
    while head:
        groups.insert(0, head[-2:])
        head = head[:-2]
    text = ",".join(groups + [tail])
    return f"{sign}₹{text}" + (f".{part:02d}" if part else "")


def token_subject(token):
    """The "sub" claim of JWT 'token', read without checking the signature
    (only the user service and the gateway hold the key). None when
    'token' is not a JWT with a string "sub"."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        subject = claims.get("sub")
        return subject if isinstance(subject, str) else None
    except (IndexError, ValueError, AttributeError):
        return None


class Demo:
    def __init__(self, client, deadline_ms):
        self.client = client
        self.deadline_ms = deadline_ms
        self.step = 0

    def call(self, service, method, request, response_cls):
        """Calls as the client's user; the response, or StepFailed with the
        status."""
        status, response = self.client.call(service, method, request, response_cls,
                                            deadline_ms=self.deadline_ms)
        if status.code != Code.OK:
            raise StepFailed(f"{service}.{method}: {status_text(status)}")
        return response

    def expect(self, condition, text):
        if not condition:
            raise StepFailed(text)

    def report(self, title, rpc, summary):
        print(f"[{self.step}/{STEPS}] {title:<13} {rpc:<19} -> {summary}", flush=True)

    def run(self, wait_ms):
        run_id = f"{int(time.time())}-{os.getpid()}-{secrets.token_hex(3)}"
        email = f"py-{run_id}@example.com"
        password = "py-" + secrets.token_hex(12)

        self.step = 1
        user = self.call("user", "Register",
                         user_pb2.RegisterRequest(email=email, password=password,
                                                  name="Python Demo"), user_pb2.User)
        self.expect(user.id.startswith("usr_"), f"the new user's id is {user.id!r}, not usr_...")
        self.expect(user.email == email, f"registered {user.email!r}, sent {email!r}")
        self.report("register", "user.Register", f"{user.id} ({user.email})")

        self.step = 2
        login = self.call("user", "Login", user_pb2.LoginRequest(email=email, password=password),
                          user_pb2.LoginReply)
        self.expect(login.token_type == "Bearer" and login.access_token,
                    f"no Bearer token (token_type {login.token_type!r})")
        self.expect(login.expires_in > 0, f"expires_in is {login.expires_in}")
        subject = token_subject(login.access_token)
        self.expect(subject == user.id, f"the token's subject is {subject!r}, not {user.id}")
        # From here on, every call acts for the token's subject, as the
        # gateway does after verifying the token.
        self.client.user_id = subject
        self.report("log in", "user.Login",
                    f"{login.token_type} token for {subject}, expires in {login.expires_in} s")

        self.step = 3
        topup = self.call("user", "TopUp",
                          user_pb2.TopUpRequest(amount=TOPUP_PAISE,
                                                idempotency_key=f"py-topup-{run_id}"),
                          user_pb2.TopUp)
        self.expect(topup.amount == TOPUP_PAISE, f"topped up {topup.amount}, sent {TOPUP_PAISE}")
        self.expect(topup.balance == TOPUP_PAISE,
                    f"balance {topup.balance} after the first top-up, expected {TOPUP_PAISE}")
        self.report("top up", "user.TopUp",
                    f"{topup.id}, {rupees(topup.amount)} added, balance {rupees(topup.balance)}")

        self.step = 4
        order = self.call("order", "Create",
                          order_pb2.CreateOrderRequest(amount=ORDER_PAISE, receipt="py-1",
                                                       description="Python client demo"),
                          order_pb2.Order)
        self.expect(order.id.startswith("ord_"), f"the order's id is {order.id!r}")
        self.expect(order.amount == ORDER_PAISE, f"order of {order.amount}, sent {ORDER_PAISE}")
        self.expect(order.status == order_pb2.PENDING,
                    f"new order is {order_pb2.OrderStatus.Name(order.status)}, not PENDING")
        self.expect(order.user_id == subject, f"the order belongs to {order.user_id!r}")
        self.report("create order", "order.Create",
                    f"{order.id}, {rupees(order.amount)}, "
                    f"{order_pb2.OrderStatus.Name(order.status)}")

        self.step = 5
        payment = self.call("payment", "Create",
                            payment_pb2.CreatePaymentRequest(order_id=order.id,
                                                             idempotency_key=f"py-pay-{run_id}"),
                            payment_pb2.Payment)
        state = payment_pb2.PaymentStatus.Name(payment.status)
        self.expect(payment.status == payment_pb2.SUCCEEDED,
                    f"payment {payment.id} is {state} "
                    f"({payment.failure_code}: {payment.failure_message})")
        self.expect(payment.order_id == order.id and payment.amount == ORDER_PAISE,
                    f"payment of {payment.amount} for {payment.order_id!r}")
        self.report("pay", "payment.Create", f"{payment.id}, {rupees(payment.amount)}, {state}")

        self.step = 6
        paid = self.call("order", "Get", order_pb2.GetOrderRequest(id=order.id), order_pb2.Order)
        self.expect(paid.status == order_pb2.COMPLETED and paid.payment_id == payment.id,
                    f"order is {order_pb2.OrderStatus.Name(paid.status)} with payment "
                    f"{paid.payment_id!r}, expected COMPLETED with {payment.id}")
        self.report("order paid", "order.Get", f"{paid.id} COMPLETED by {paid.payment_id}")

        self.step = 7
        wallet = self.call("user", "GetWallet", user_pb2.GetWalletRequest(), user_pb2.Wallet)
        left = TOPUP_PAISE - ORDER_PAISE
        self.expect(wallet.user_id == subject, f"the wallet of {wallet.user_id!r}")
        self.expect(wallet.balance == left, f"balance {wallet.balance}, expected {left}")
        self.report("wallet", "user.GetWallet", f"balance {rupees(wallet.balance)}")

        self.step = 8
        until = time.monotonic() + wait_ms / 1000.0
        polls = 0
        while True:
            history = self.call("transaction", "List",
                                transaction_pb2.ListTransactionsRequest(limit=HISTORY_LIMIT),
                                transaction_pb2.TransactionList)
            polls += 1
            by_type = {t.type: t for t in history.data}
            if "TOPUP" in by_type and "PAYMENT" in by_type:
                break
            if time.monotonic() >= until:
                seen = ", ".join(t.type for t in history.data) or "nothing"
                raise StepFailed(f"after {wait_ms} ms the history has {seen}; "
                                 "expected a TOPUP and a PAYMENT (is the event bus on?)")
            time.sleep(POLL_MS / 1000.0)
        self.expect(len(history.data) == 2,
                    f"{len(history.data)} transactions for a new user, expected 2")
        top, paid_txn = by_type["TOPUP"], by_type["PAYMENT"]
        self.expect(top.amount == TOPUP_PAISE and top.topup_id == topup.id,
                    f"TOPUP of {top.amount} for {top.topup_id!r}, expected {TOPUP_PAISE} "
                    f"for {topup.id}")
        self.expect(paid_txn.amount == ORDER_PAISE and paid_txn.payment_id == payment.id and
                    paid_txn.order_id == order.id,
                    f"PAYMENT of {paid_txn.amount} for {paid_txn.payment_id!r}/"
                    f"{paid_txn.order_id!r}, expected {ORDER_PAISE} for {payment.id}/{order.id}")
        self.expect(all(t.user_id == subject for t in history.data),
                    "the history holds another user's transaction")
        self.report("transactions", "transaction.List",
                    f"{len(history.data)} recorded (after {polls} "
                    f"{'poll' if polls == 1 else 'polls'})")
        for t in history.data:
            print(f"      {t.id}  {t.type:<8} {rupees(t.amount):>14}  {t.description}")


def main(argv):
    parser = argparse.ArgumentParser(
        description="Runs paygate's sample flow through the broker and checks each answer.",
        epilog="exit codes: 0 every step succeeded, 1 a step failed (it says which), 2 usage")
    parser.add_argument("--endpoint",
                        default=os.environ.get("PAYGATE_BROKER_ENDPOINT", "tcp://127.0.0.1:55555"),
                        help="the broker (default: $PAYGATE_BROKER_ENDPOINT or "
                             "tcp://127.0.0.1:55555)")
    parser.add_argument("--principal", default="python-demo",
                        help="caller principal in the call metadata (default python-demo)")
    parser.add_argument("--deadline-ms", type=int, default=5000,
                        help="deadline of each call (default 5000)")
    parser.add_argument("--wait-ms", type=int, default=WAIT_MS_DEFAULT,
                        help=f"how long to wait for the history (default {WAIT_MS_DEFAULT})")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(encoding="utf-8")  # ₹ also under LANG=C
    if not 1 <= args.deadline_ms <= 60000:
        parser.error("--deadline-ms must be from 1 to 60000")
    if not 0 <= args.wait_ms <= WAIT_MS_MAX:
        parser.error(f"--wait-ms must be from 0 to {WAIT_MS_MAX}")

    print(f"paygate Python client demo: broker {args.endpoint}, principal {args.principal}",
          flush=True)
    with Client(args.endpoint, principal=args.principal) as client:
        demo = Demo(client, args.deadline_ms)
        try:
            demo.run(args.wait_ms)
        except StepFailed as failure:
            print(f"paygate_demo: step {demo.step} failed: {failure}", file=sys.stderr)
            return 1
    print("all steps passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
