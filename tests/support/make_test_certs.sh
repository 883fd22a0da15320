#!/usr/bin/env bash
# make_test_certs.sh PAYGATE_CERTS_BIN DIR
#
# The test certificates of a harness that starts the whole system (the
# ctest fixture "test_certs" runs it once per build tree): the standard set
# of paygate-certs (broker, user, order, payment, transaction, notification,
# gateway, paygatectl) plus a "test" key for the test process itself that
# may do everything (register any service, publish and consume any topic,
# claim any principal, call for any user). Existing keys are kept.
#
# A harness then exports (tests/CMakeLists.txt: PAYGATE_TEST_CERTS_ENV)
#   PAYGATE_TEST_CERTS_DIR=DIR             where each process finds its key
#   PAYGATE_CURVE_CERT=DIR/test.cert_secret  the test process's own key
#   PAYGATE_BROKER_CERT=DIR/broker.cert      the broker's public key
#   PAYGATE_CURVE_CLIENTS_DIR=DIR/clients    what the broker admits
# and starts process NAME with PAYGATE_CURVE_CERT=DIR/NAME.cert_secret.
set -euo pipefail
(($# == 2)) || { echo "usage: $0 PAYGATE_CERTS_BIN DIR" >&2; exit 2; }
certs=$1 dir=$2
"$certs" "$dir" >/dev/null
"$certs" "$dir" test role=operator 'services=*' 'publish=*' 'consume=*' 'groups=*' \
    'principals=*' act_for_users=true >/dev/null
echo "test certificates in $dir"
