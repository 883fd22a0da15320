// invariants: after a fault run, does the money add up? Checked three
// ways: in PostgreSQL (the ledger, payments, orders, transactions), over
// the HTTP API (wallets, payments, orders, transaction history,
// notifications), and in Redis (each notification delivered, and published
// exactly once). And against what the clients were told (workload.mjs):
// an answer that the final state contradicts is a violation.
//
// The database is the test's private cluster, so every row in it is this
// run's.

const PAGE_LIMIT = 100;

// Waits, up to 'timeoutMs', until no payment is PROCESSING, no refund
// PENDING and no outbox row unsent. Returns what is still open ({} when
// nothing).
export async function waitSettled(pg, timeoutMs) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    let open;
    try {
      [open] = await pg.sql(
        "SELECT (SELECT count(*) FROM payments.payments WHERE status = 'PROCESSING') AS payments," +
        " (SELECT count(*) FROM payments.refunds WHERE status = 'PENDING') AS refunds," +
        ' (SELECT count(*) FROM payments.outbox WHERE sent_at IS NULL) AS payment_outbox,' +
        ' (SELECT count(*) FROM users.outbox WHERE sent_at IS NULL) AS user_outbox');
    } catch (err) {
      open = { error: err.message };
    }
    const busy = Object.fromEntries(Object.entries(open).filter(([, v]) => v !== 0));
    if (Object.keys(busy).length === 0 || Date.now() > until) return busy;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

// What the clients were finally told, as sets of acknowledged movements.
export function acknowledged(workload) {
  const topups = new Map(); // id -> {user, amount}
  const payments = new Map(); // id -> {user, amount, order}
  const refunds = new Map(); // id -> {user, amount, payment}
  for (const rec of workload.topups.values()) {
    if (rec.outcome?.status === 201) topups.set(rec.outcome.id, { user: rec.user, amount: rec.outcome.amount, key: rec.key });
  }
  for (const rec of workload.pays.values()) {
    if (rec.outcome?.status === 201) payments.set(rec.outcome.id, { user: rec.user, amount: rec.outcome.amount, order: rec.order, key: rec.key });
  }
  for (const rec of workload.refunds.values()) {
    if (rec.outcome?.status === 201) refunds.set(rec.outcome.id, { user: rec.user, amount: rec.outcome.amount, payment: rec.payment, key: rec.key });
  }
  return { topups, payments, refunds };
}

// The event ids of 'ack' that must each become one transaction and one
// notification: id -> {user, type, ref}.
export function expectedEvents(ack) {
  const events = new Map();
  for (const [id, t] of ack.topups) events.set(`topup.succeeded:${id}`, { user: t.user, type: 'TOPUP', ref: id, amount: t.amount });
  for (const [id, p] of ack.payments) events.set(`payment.succeeded:${id}`, { user: p.user, type: 'PAYMENT', ref: id, amount: p.amount });
  for (const [id, f] of ack.refunds) events.set(`refund.succeeded:${id}`, { user: f.user, type: 'REFUND', ref: id, amount: f.amount });
  return events;
}

// Waits, up to 'timeoutMs', until every expected event has its
// transaction row and its Redis "seen" mark. Returns how many are missing.
export async function waitDelivered(pg, redis, events, timeoutMs) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const [{ n }] = await pg.sql('SELECT count(*) AS n FROM transactions.transactions');
    let seen = 0;
    for (const id of events.keys()) seen += await redis.command('EXISTS', `notification:seen:${id}`);
    const missing = Math.max(0, events.size - n) + (events.size - seen);
    if (missing === 0 || Date.now() > until) return missing;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

// GETs every page of 'path' (cursor pagination) for 'user'. Null on error.
async function allPages(workload, user, path) {
  const items = [];
  let after = '';
  const r = { pick: (xs) => xs[0] };
  for (let page = 0; page < 1000; page++) {
    const q = `${path}?limit=${PAGE_LIMIT}${after ? `&starting_after=${after}` : ''}`;
    const res = await workload.untilFinal(r, 'GET', q, { token: user.token });
    if (res?.status !== 200) return null;
    items.push(...res.json.data);
    if (!res.json.has_more || res.json.data.length === 0) return items;
    after = res.json.data[res.json.data.length - 1].id;
  }
  return null;
}

// Checks every invariant; returns the violations (strings).
export async function checkAll({ pg, workload, published }) {
  const v = [];
  const ack = acknowledged(workload);
  const events = expectedEvents(ack);
  const users = workload.users;

  // ---- final states -------------------------------------------------------
  for (const row of await pg.sql("SELECT id, status, step FROM payments.payments WHERE status = 'PROCESSING'")) {
    v.push(`payment ${row.id} still PROCESSING at ${row.step}`);
  }
  for (const row of await pg.sql("SELECT id FROM payments.refunds WHERE status <> 'SUCCEEDED'")) {
    v.push(`refund ${row.id} not SUCCEEDED`);
  }

  // ---- the ledger, per wallet ------------------------------------------------
  const wallets = await pg.sql(
    'SELECT w.user_id, w.balance,' +
    ' (SELECT COALESCE(SUM(amount), 0) FROM users.ledger l WHERE l.user_id = w.user_id)::bigint AS ledger,' +
    ' (SELECT COALESCE(SUM(amount), 0) FROM users.topups t WHERE t.user_id = w.user_id)::bigint AS topups,' +
    " (SELECT COALESCE(SUM(amount), 0) FROM users.ledger l WHERE l.user_id = w.user_id AND l.kind = 'TOPUP')::bigint AS topup_rows," +
    " (SELECT COALESCE(SUM(amount), 0) FROM payments.payments p WHERE p.user_id = w.user_id AND p.status = 'SUCCEEDED')::bigint AS paid," +
    " (SELECT COALESCE(SUM(amount), 0) FROM payments.refunds r WHERE r.user_id = w.user_id AND r.status = 'SUCCEEDED')::bigint AS refunded" +
    ' FROM users.wallets w');
  const walletOf = new Map(wallets.map((w) => [w.user_id, w]));
  if (wallets.length !== users.length) v.push(`${users.length} users but ${wallets.length} wallets`);
  for (const w of wallets) {
    if (w.balance !== w.ledger) v.push(`wallet ${w.user_id}: balance ${w.balance} != SUM(ledger) ${w.ledger}`);
    if (w.balance < 0) v.push(`wallet ${w.user_id}: negative balance ${w.balance}`);
    if (w.topups !== w.topup_rows) v.push(`wallet ${w.user_id}: top-ups ${w.topups} != TOPUP ledger rows ${w.topup_rows}`);
    if (w.topups - w.paid + w.refunded !== w.balance) {
      v.push(`wallet ${w.user_id}: top-ups ${w.topups} - payments ${w.paid} + refunds ${w.refunded} != balance ${w.balance}`);
    }
  }
  for (const row of await pg.sql(
    'SELECT user_id, id, balance_after, running FROM (SELECT user_id, id, balance_after,' +
    ' SUM(amount) OVER (PARTITION BY user_id ORDER BY id) AS running FROM users.ledger) x' +
    ' WHERE running <> balance_after OR running < 0')) {
    v.push(`ledger row ${row.id} of ${row.user_id}: balance_after ${row.balance_after}, replayed ${row.running}`);
  }

  // ---- what the clients know, per user ----------------------------------------
  for (const user of users) {
    let expected = 0;
    for (const t of ack.topups.values()) if (t.user === user.id) expected += t.amount;
    for (const p of ack.payments.values()) if (p.user === user.id) expected -= p.amount;
    for (const f of ack.refunds.values()) if (f.user === user.id) expected += f.amount;
    const w = walletOf.get(user.id);
    if (!w || w.balance !== expected) {
      v.push(`user ${user.id}: acknowledged top-ups - payments + refunds = ${expected}, database balance ${w?.balance}`);
    }
    const res = await workload.untilFinal({ pick: (xs) => xs[0] }, 'GET', '/v1/wallet', { token: user.token });
    if (res?.status !== 200 || res.json.balance !== expected) {
      v.push(`user ${user.id}: GET /v1/wallet says ${res?.status} ${res?.json?.balance}, clients expect ${expected}`);
    }
  }

  // ---- orders and payments ----------------------------------------------------
  for (const row of await pg.sql(
    "SELECT order_id, count(*) AS n FROM payments.payments WHERE status = 'SUCCEEDED' GROUP BY order_id HAVING count(*) > 1")) {
    v.push(`order ${row.order_id} paid ${row.n} times`);
  }
  for (const row of await pg.sql(
    "SELECT l.reference, count(*) AS n FROM users.ledger l WHERE l.kind = 'DEBIT' GROUP BY l.reference HAVING count(*) > 1")) {
    v.push(`payment ${row.reference} debited ${row.n} times`);
  }
  for (const row of await pg.sql(
    "SELECT o.id, o.payment_id FROM orders.orders o WHERE o.status = 'COMPLETED' AND (" +
    " (SELECT count(*) FROM payments.payments p WHERE p.order_id = o.id AND p.status = 'SUCCEEDED') <> 1" +
    " OR NOT EXISTS (SELECT 1 FROM payments.payments p WHERE p.id = o.payment_id AND p.status = 'SUCCEEDED'))")) {
    v.push(`COMPLETED order ${row.id} has not exactly one SUCCEEDED payment (it names ${row.payment_id})`);
  }
  for (const row of await pg.sql(
    "SELECT p.id, p.order_id, o.status AS order_status FROM payments.payments p LEFT JOIN orders.orders o ON o.id = p.order_id" +
    " WHERE p.status = 'SUCCEEDED' AND (o.status IS DISTINCT FROM 'COMPLETED' OR o.payment_id IS DISTINCT FROM p.id)")) {
    v.push(`SUCCEEDED payment ${row.id}: order ${row.order_id} is ${row.order_status} and not paid by it`);
  }
  for (const row of await pg.sql(
    "SELECT p.id FROM payments.payments p WHERE p.status = 'SUCCEEDED' AND (" +
    " (SELECT count(*) FROM users.ledger l WHERE l.kind = 'DEBIT' AND l.reference = p.id AND l.amount = -p.amount) <> 1" +
    " OR EXISTS (SELECT 1 FROM users.ledger c WHERE c.kind = 'CREDIT' AND c.reference = p.id))")) {
    v.push(`SUCCEEDED payment ${row.id} without exactly one DEBIT of its amount, or with a compensation`);
  }
  for (const row of await pg.sql(
    "SELECT l.reference FROM users.ledger l LEFT JOIN payments.payments p ON p.id = l.reference WHERE l.kind = 'DEBIT'" +
    " AND (p.id IS NULL OR (p.status <> 'SUCCEEDED' AND NOT EXISTS (SELECT 1 FROM users.ledger c" +
    "  WHERE c.kind = 'CREDIT' AND c.reference = l.reference AND c.amount = -l.amount)))")) {
    v.push(`DEBIT ${row.reference} of a payment that did not succeed and was not given back`);
  }
  for (const row of await pg.sql(
    "SELECT c.reference FROM users.ledger c WHERE c.kind = 'CREDIT'" +
    " AND NOT EXISTS (SELECT 1 FROM payments.payments p WHERE p.id = c.reference AND p.status = 'FAILED' AND p.amount = c.amount)" +
    " AND NOT EXISTS (SELECT 1 FROM payments.refunds r WHERE r.id = c.reference AND r.status = 'SUCCEEDED' AND r.amount = c.amount)")) {
    v.push(`CREDIT ${row.reference} is neither a compensation nor a refund`);
  }
  for (const row of await pg.sql(
    "SELECT r.id FROM payments.refunds r WHERE (SELECT count(*) FROM users.ledger c WHERE c.kind = 'CREDIT'" +
    " AND c.reference = r.id AND c.amount = r.amount) <> 1")) {
    v.push(`refund ${row.id} without exactly one CREDIT of its amount`);
  }
  for (const row of await pg.sql(
    'SELECT p.id, p.amount_refunded, (SELECT COALESCE(SUM(r.amount), 0) FROM payments.refunds r WHERE r.payment_id = p.id)::bigint AS refunds' +
    ' FROM payments.payments p WHERE p.amount_refunded <> (SELECT COALESCE(SUM(r.amount), 0) FROM payments.refunds r WHERE r.payment_id = p.id)')) {
    v.push(`payment ${row.id}: amount_refunded ${row.amount_refunded} != its refunds ${row.refunds}`);
  }

  // ---- nothing the clients were told is false ---------------------------------
  const payRows = new Map((await pg.sql(
    'SELECT p.id, p.user_id, p.idempotency_key, p.order_id, p.amount, p.status, p.failure_code FROM payments.payments p'))
    .map((p) => [`${p.user_id}/${p.idempotency_key}`, p]));
  for (const rec of workload.pays.values()) {
    const row = payRows.get(`${rec.user}/${rec.key}`);
    const o = rec.outcome;
    if (o === null) continue; // reported by resolve()
    if (o.status === 201) {
      if (o.paymentStatus !== 'SUCCEEDED' || row?.status !== 'SUCCEEDED' || row.id !== o.id || row.amount !== o.amount) {
        v.push(`payment key ${rec.key}: told 201 ${o.paymentStatus} ${o.id}, database has ${row?.id} ${row?.status}`);
      }
    } else if ((o.status === 402 && o.code === 'insufficient_funds') || (o.status === 409 && o.code === 'order_not_payable')) {
      if (row?.status !== 'FAILED' || row.failure_code !== o.code || row.id !== o.id) {
        v.push(`payment key ${rec.key}: told ${o.status} ${o.code} for ${o.id}, database has ${row?.id} ${row?.status} ${row?.failure_code}`);
      }
    } else {
      v.push(`payment key ${rec.key} (order ${rec.order}): unexpected final answer ${o.status} ${o.code}`);
    }
    if (row && row.order_id !== rec.order) v.push(`payment key ${rec.key}: pays ${row.order_id}, not ${rec.order}`);
  }
  // Every payment in the database was asked for by a client, and (every
  // outcome being known now) each SUCCEEDED one was acknowledged.
  for (const row of payRows.values()) {
    if (row.status === 'SUCCEEDED' && !ack.payments.has(row.id)) v.push(`SUCCEEDED payment ${row.id} that no client was told about`);
  }
  const topupRows = new Map((await pg.sql('SELECT id, user_id, idempotency_key, amount FROM users.topups'))
    .map((t) => [`${t.user_id}/${t.idempotency_key}`, t]));
  for (const rec of workload.topups.values()) {
    const row = topupRows.get(`${rec.user}/${rec.key}`);
    const o = rec.outcome;
    if (o === null) continue;
    if (o.status !== 201) v.push(`top-up key ${rec.key}: unexpected final answer ${o.status} ${o.code}`);
    else if (row?.id !== o.id || row.amount !== rec.amount || o.amount !== rec.amount) {
      v.push(`top-up key ${rec.key}: told 201 ${o.id} of ${o.amount}, database has ${row?.id} of ${row?.amount}`);
    }
  }
  for (const row of topupRows.values()) {
    if (!ack.topups.has(row.id)) v.push(`top-up ${row.id} (key ${row.idempotency_key}) that no client was told about`);
  }
  const refundRows = new Map((await pg.sql('SELECT id, user_id, idempotency_key, payment_id, amount, status FROM payments.refunds'))
    .map((f) => [`${f.user_id}/${f.idempotency_key}`, f]));
  for (const rec of workload.refunds.values()) {
    const row = refundRows.get(`${rec.user}/${rec.key}`);
    const o = rec.outcome;
    if (o === null) continue;
    if (o.status === 201) {
      if (row?.id !== o.id || row.status !== 'SUCCEEDED' || row.amount !== o.amount || row.payment_id !== rec.payment ||
          (rec.amount !== undefined && o.amount !== rec.amount)) {
        v.push(`refund key ${rec.key}: told 201 ${o.id} of ${o.amount} (${o.refundStatus}), database has ${row?.id} ${row?.status} of ${row?.amount}`);
      }
    } else if (o.status === 409 && (o.code === 'refund_exceeds_payment' || o.code === 'payment_not_refundable')) {
      if (row) v.push(`refund key ${rec.key}: told ${o.status} ${o.code}, yet refund ${row.id} exists`);
    } else {
      v.push(`refund key ${rec.key}: unexpected final answer ${o.status} ${o.code}`);
    }
  }
  for (const row of refundRows.values()) {
    if (!ack.refunds.has(row.id)) v.push(`refund ${row.id} (key ${row.idempotency_key}) that no client was told about`);
  }
  const orderRows = new Map((await pg.sql('SELECT id, status, payment_id FROM orders.orders')).map((o) => [o.id, o]));
  for (const rec of workload.cancels) {
    const o = rec.outcome;
    const row = orderRows.get(rec.order);
    if (o === null) continue;
    if (o.status === 200) {
      if (row?.status !== 'CANCELLED') v.push(`cancel of ${rec.order}: told 200, the order ends ${row?.status}`);
    } else if (o.status === 409 && o.code === 'order_not_cancellable') {
      if (row?.status !== 'COMPLETED') v.push(`cancel of ${rec.order}: told 409 ${o.code}, the order ends ${row?.status}`);
    } else {
      v.push(`cancel of ${rec.order}: unexpected final answer ${o.status} ${o.code}`);
    }
  }

  // ---- the same payments and orders over the API ------------------------------
  const payById = new Map([...payRows.values()].map((p) => [p.id, p]));
  for (const user of users) {
    const listed = await allPages(workload, user, '/v1/payments');
    const rows = [...payById.values()].filter((p) => p.user_id === user.id);
    if (listed === null) {
      v.push(`user ${user.id}: GET /v1/payments failed`);
    } else {
      if (listed.length !== rows.length) v.push(`user ${user.id}: GET /v1/payments lists ${listed.length}, the database has ${rows.length}`);
      for (const p of listed) {
        const row = payById.get(p.id);
        if (row?.status !== p.status || row.amount !== p.amount || row.user_id !== user.id) {
          v.push(`payment ${p.id}: the API says ${p.status} ${p.amount}, the database ${row?.status} ${row?.amount}`);
        }
      }
    }
    const orders = await allPages(workload, user, '/v1/orders');
    if (orders === null) {
      v.push(`user ${user.id}: GET /v1/orders failed`);
      continue;
    }
    for (const o of orders) {
      const row = orderRows.get(o.id);
      if (row?.status !== o.status) v.push(`order ${o.id}: the API says ${o.status}, the database ${row?.status}`);
    }
  }

  // ---- transaction history: each movement exactly once ------------------------
  const txRows = await pg.sql(
    'SELECT id, event_id, user_id, type, amount, payment_id, refund_id, topup_id FROM transactions.transactions');
  const txByEvent = new Map();
  for (const t of txRows) {
    const ref = t.type === 'TOPUP' ? t.topup_id : t.type === 'REFUND' ? t.refund_id : t.payment_id;
    const key = `${t.type}:${ref}`;
    if (txByEvent.has(key)) v.push(`transaction for ${key} recorded twice`);
    txByEvent.set(key, t);
  }
  for (const [eventId, e] of events) {
    const t = txByEvent.get(`${e.type}:${e.ref}`);
    if (!t) v.push(`no transaction for ${eventId}`);
    else if (t.amount !== e.amount || t.user_id !== e.user) v.push(`transaction for ${eventId}: ${t.amount} of ${t.user_id}, expected ${e.amount} of ${e.user}`);
  }
  for (const [key, t] of txByEvent) {
    if (!events.has(t.event_id)) v.push(`transaction ${t.id} (${key}) for nothing a client was told about`);
  }
  for (const user of users) {
    const listed = await allPages(workload, user, '/v1/transactions');
    if (listed === null) {
      v.push(`user ${user.id}: GET /v1/transactions failed`);
      continue;
    }
    const want = [...events.values()].filter((e) => e.user === user.id);
    const ids = new Set(listed.map((t) => t.id));
    if (ids.size !== listed.length) v.push(`user ${user.id}: the history lists a transaction twice`);
    const got = new Set(listed.map((t) => `${t.type}:${t.type === 'TOPUP' ? t.topup_id : t.type === 'REFUND' ? t.refund_id : t.payment_id}`));
    for (const e of want) if (!got.has(`${e.type}:${e.ref}`)) v.push(`user ${user.id}: ${e.type} ${e.ref} missing from GET /v1/transactions`);
    if (listed.length !== want.length) v.push(`user ${user.id}: GET /v1/transactions lists ${listed.length}, expected ${want.length}`);
  }

  // ---- notifications -------------------------------------------------------
  // 'published': event id -> {n: times Redis published it on the user's
  // channel, user}, counted by a subscriber that ran all along.
  const failedRows = new Set((await pg.sql("SELECT id FROM payments.payments WHERE status = 'FAILED'")).map((p) => p.id));
  for (const [eventId, e] of events) {
    const n = published.get(eventId)?.n ?? 0;
    if (n !== 1) v.push(`notification ${eventId} (user ${e.user}) published ${n} times`);
  }
  for (const [eventId, { n }] of published) {
    if (events.has(eventId)) continue;
    const failed = eventId.startsWith('payment.failed:') && failedRows.has(eventId.slice('payment.failed:'.length));
    if (!failed) v.push(`notification ${eventId} for nothing a client was told about`);
    else if (n !== 1) v.push(`notification ${eventId} published ${n} times`);
  }
  for (const user of users) {
    const res = await workload.untilFinal({ pick: (xs) => xs[0] }, 'GET', '/v1/notifications?limit=50', { token: user.token });
    if (res?.status !== 200) {
      v.push(`user ${user.id}: GET /v1/notifications answered ${res?.status}`);
      continue;
    }
    const ids = res.json.data.map((n) => n.id);
    if (new Set(ids).size !== ids.length) v.push(`user ${user.id}: a notification is listed twice`);
    for (const id of ids) {
      if (published.get(id)?.user !== user.id) v.push(`user ${user.id}: lists notification ${id}, never published to it`);
    }
    const mine = [...published.values()].filter((e) => e.user === user.id).length;
    if (ids.length !== Math.min(50, mine)) v.push(`user ${user.id}: lists ${ids.length} notifications, ${mine} were published`);
  }
  return v;
}
