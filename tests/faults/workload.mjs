// workload: concurrent bank clients over HTTP, and what each was told.
//
// Users are new accounts; each has 'clientsPerUser' clients that work at
// once on its wallet (so payments, cancellations and refunds of one user
// race each other). A client repeats, until the run ends, a random choice
// of: top up; create an order and pay it; pay the newest order of another
// client of its user (two payments racing for one order); cancel such an
// order (racing its payment); refund a payment of its user, partly or
// fully; or send an earlier payment, top-up or refund again with the same
// Idempotency-Key (a client that lost an answer).
//
// Every money request carries an Idempotency-Key and is retried with THAT
// key, as a real client would, while it gets no final answer: no answer at
// all (refused, reset, timed out), 5xx, 429, or idempotency_in_progress.
// A final answer is kept in the operation's record, which is keyed by
// idempotency key, so repeats of one key are one record; a repeat that is
// told something else than before is a violation. An operation with no
// final answer within its budget is 'unknown' until resolve() sends it
// again after the faults have healed.
//
// Randomness comes from one seed (the caller prints it); the interleaving
// with the system's threads is of course not replayed by it.

const REQUEST_TIMEOUT_MS = 12_000; // above the gateway's 8 s deadline
const ACTION_BUDGET_MS = 8_000; // one operation, retries included (then: unknown)
const RESOLVE_BUDGET_MS = 60_000; // one unknown operation after the faults
const BACKOFF_FIRST_MS = 100;
const BACKOFF_MAX_MS = 1000;
const THINK_MS_MAX = 150;

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// mulberry32: a small seeded generator; 'next()' is in [0, 1).
export function rng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)),
    pick: (items) => items[Math.floor(next() * items.length)],
  };
}

// Whether a response is final: an answer the client may act upon.
function isFinal(r) {
  if (r.status === 0 || r.status >= 500 || r.status === 429) return false;
  return r.json?.error?.code !== 'idempotency_in_progress';
}

export class Workload {
  constructor({ baseUrls, seed, users, clientsPerUser, log }) {
    this.baseUrls = baseUrls;
    this.seed = seed;
    this.userCount = users;
    this.clientsPerUser = clientsPerUser;
    this.log = log;
    this.users = [];
    this.topups = new Map(); // key -> record
    this.pays = new Map();
    this.refunds = new Map();
    this.cancels = [];
    this.orders = new Map(); // order id -> {user, amount}
    this.violations = [];
    this.stats = {
      tried: 0, succeeded: 0, declined: 0, unknown: 0, resolved: 0, replays: 0,
      attempts: 0, attemptsFailedCleanly: 0, attemptsInternalError: 0, byKind: {},
      failures: {}, // why attempts failed cleanly: HTTP status or the socket error's code
    };
    this.counter = 0;
    this.rand = rng(seed);
  }

  violation(text) {
    this.violations.push(text);
  }

  unique(what) {
    this.counter += 1;
    return `${what}-${this.seed}-${this.counter}`;
  }

  // One HTTP exchange with a gateway picked at random. Never throws:
  // {status: 0, error} when no answer came.
  async request(r, method, path, { token, key, body } = {}) {
    const base = r.pick(this.baseUrls);
    const headers = {};
    if (token) headers.Authorization = `Bearer ${token}`;
    if (key) headers['Idempotency-Key'] = key;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    this.stats.attempts += 1;
    try {
      const res = await fetch(base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
      const text = await res.text();
      let json = null;
      try {
        json = JSON.parse(text);
      } catch {
        // not JSON
      }
      if ((res.status > 500 || res.status === 429) && res.status !== 500) this.failedCleanly(String(res.status));
      if (res.status === 500) {
        this.stats.attemptsInternalError += 1;
        this.violation(`${method} ${path} answered 500: ${text.slice(0, 200)}`);
      }
      return { status: res.status, json, text };
    } catch (err) {
      const why = err.cause?.code ?? err.name ?? String(err);
      this.failedCleanly(why);
      return { status: 0, error: why };
    }
  }

  failedCleanly(why) {
    this.stats.attemptsFailedCleanly += 1;
    this.stats.failures[why] = (this.stats.failures[why] ?? 0) + 1;
  }

  // Sends until a final answer or 'budgetMs' passes. Returns the final
  // response, or null.
  async untilFinal(r, method, path, opts, budgetMs = ACTION_BUDGET_MS) {
    const until = Date.now() + budgetMs;
    let backoff = BACKOFF_FIRST_MS;
    for (;;) {
      const res = await this.request(r, method, path, opts);
      if (isFinal(res)) return res;
      if (Date.now() + backoff > until) return null;
      await sleep(backoff);
      backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    }
  }

  count(kind, outcome) {
    const k = (this.stats.byKind[kind] ??= { tried: 0, succeeded: 0, declined: 0, unknown: 0 });
    k[outcome] += 1;
    this.stats[outcome] += 1;
  }

  // ---- setup ------------------------------------------------------------

  async setup() {
    const r = rng(this.seed ^ 0x5bd1e995);
    for (let i = 0; i < this.userCount; i++) {
      const email = `${this.unique('bank')}@example.com`;
      const password = 'Bank-Passw0rd-4f1';
      const reg = await this.untilFinal(r, 'POST', '/v1/users', {
        body: { email, password, name: `Bank ${i}` },
      });
      if (reg?.status !== 201) throw new Error(`register: ${reg?.status} ${reg?.text}`);
      const login = await this.untilFinal(r, 'POST', '/v1/auth/login', { body: { email, password } });
      if (login?.status !== 200) throw new Error(`login: ${login?.status} ${login?.text}`);
      const user = {
        index: i, id: reg.json.id, token: login.json.access_token,
        latest: new Array(this.clientsPerUser).fill(null), paid: [],
      };
      this.users.push(user);
      await this.topUp(user, r, 20_000);
    }
  }

  // ---- operations -------------------------------------------------------

  async topUp(user, r, amount) {
    const rec = { kind: 'topup', user: user.id, key: this.unique('top'), amount, outcome: null };
    this.topups.set(rec.key, rec);
    this.stats.tried += 1;
    this.stats.byKind.topup = this.stats.byKind.topup ?? { tried: 0, succeeded: 0, declined: 0, unknown: 0 };
    this.stats.byKind.topup.tried += 1;
    await this.sendTopUp(user, r, rec, ACTION_BUDGET_MS, true);
  }

  async sendTopUp(user, r, rec, budgetMs, first) {
    const res = await this.untilFinal(r, 'POST', '/v1/wallet/topups', {
      token: user.token, key: rec.key, body: { amount: rec.amount },
    }, budgetMs);
    this.settle(rec, res, first, (x) => ({
      status: x.status, code: x.json?.error?.code ?? '', id: x.json?.id ?? '', amount: x.json?.amount,
    }));
  }

  // One top-up of 'amount' sent once to the gateway at 'baseUrl' (no
  // retry), recorded like any other (resolve() sends it again when it got
  // no final answer). Returns the response ({status: 0} when none came).
  async topUpOnce(user, baseUrl, amount) {
    const rec = { kind: 'topup', user: user.id, key: this.unique('top'), amount, outcome: null };
    this.topups.set(rec.key, rec);
    (this.stats.byKind.topup ??= { tried: 0, succeeded: 0, declined: 0, unknown: 0 }).tried += 1;
    this.stats.tried += 1;
    const res = await this.request({ pick: () => baseUrl }, 'POST', '/v1/wallet/topups', {
      token: user.token, key: rec.key, body: { amount },
    });
    this.settle(rec, isFinal(res) ? res : null, true, (x) => ({
      status: x.status, code: x.json?.error?.code ?? '', id: x.json?.id ?? '', amount: x.json?.amount,
    }));
    return res;
  }

  // Records final answer 'res' of 'rec' (or that it had none): the first
  // final answer is its outcome; a later different one is a violation.
  settle(rec, res, first, summarise) {
    if (res === null) {
      if (first) this.count(rec.kind, 'unknown');
      return;
    }
    const told = summarise(res);
    if (rec.outcome === null) {
      rec.outcome = told;
      if (first) this.count(rec.kind, res.status < 300 ? 'succeeded' : 'declined');
      else this.stats.resolved += 1;
      return;
    }
    // A refund answered PENDING (its credit to be finished by recovery)
    // may be SUCCEEDED when asked again: progress, not a contradiction.
    const same = (x) => JSON.stringify({ ...x, refundStatus: undefined });
    if (same(told) !== same(rec.outcome)) {
      this.violation(`${rec.kind} key ${rec.key}: first told ${JSON.stringify(rec.outcome)}, ` +
                     `then ${JSON.stringify(told)}`);
    }
  }

  async createOrder(user, r) {
    const amount = r.int(5, 60) * 100;
    this.stats.tried += 1;
    const k = (this.stats.byKind.order ??= { tried: 0, succeeded: 0, declined: 0, unknown: 0 });
    k.tried += 1;
    const res = await this.untilFinal(r, 'POST', '/v1/orders', {
      token: user.token, body: { amount, receipt: this.unique('r') },
    });
    if (res === null) {
      this.count('order', 'unknown');
      return null;
    }
    if (res.status !== 201) {
      this.count('order', 'declined');
      this.violation(`create order answered ${res.status}: ${res.text?.slice(0, 200)}`);
      return null;
    }
    this.count('order', 'succeeded');
    this.orders.set(res.json.id, { user: user.id, amount });
    return res.json.id;
  }

  async pay(user, r, orderId) {
    const rec = { kind: 'pay', user: user.id, key: this.unique('pay'), order: orderId, outcome: null };
    this.pays.set(rec.key, rec);
    this.stats.tried += 1;
    (this.stats.byKind.pay ??= { tried: 0, succeeded: 0, declined: 0, unknown: 0 }).tried += 1;
    await this.sendPay(user, r, rec, ACTION_BUDGET_MS, true);
    if (rec.outcome?.status === 201) user.paid.push({ id: rec.outcome.id, amount: rec.outcome.amount });
  }

  async sendPay(user, r, rec, budgetMs, first) {
    const res = await this.untilFinal(r, 'POST', '/v1/payments', {
      token: user.token, key: rec.key, body: { order_id: rec.order },
    }, budgetMs);
    this.settle(rec, res, first, (x) => ({
      status: x.status,
      code: x.json?.error?.code ?? '',
      id: x.json?.error ? (x.json.error.payment_id ?? '') : (x.json?.id ?? ''),
      paymentStatus: x.json?.status ?? '',
      amount: x.json?.amount,
    }));
  }

  async refund(user, r) {
    if (user.paid.length === 0) return;
    const payment = r.pick(user.paid);
    const full = r.next() < 0.4;
    const amount = full ? undefined : Math.max(100, Math.floor(payment.amount / 200) * 100);
    const rec = { kind: 'refund', user: user.id, key: this.unique('ref'), payment: payment.id,
                  amount, outcome: null };
    this.refunds.set(rec.key, rec);
    this.stats.tried += 1;
    (this.stats.byKind.refund ??= { tried: 0, succeeded: 0, declined: 0, unknown: 0 }).tried += 1;
    await this.sendRefund(user, r, rec, ACTION_BUDGET_MS, true);
  }

  async sendRefund(user, r, rec, budgetMs, first) {
    const res = await this.untilFinal(r, 'POST', `/v1/payments/${rec.payment}/refunds`, {
      token: user.token, key: rec.key, body: rec.amount === undefined ? {} : { amount: rec.amount },
    }, budgetMs);
    this.settle(rec, res, first, (x) => ({
      status: x.status, code: x.json?.error?.code ?? '', id: x.json?.id ?? '',
      amount: x.json?.amount, refundStatus: x.json?.status ?? '',
    }));
  }

  async cancel(user, r, orderId) {
    const rec = { kind: 'cancel', user: user.id, order: orderId, outcome: null };
    this.cancels.push(rec);
    this.stats.tried += 1;
    (this.stats.byKind.cancel ??= { tried: 0, succeeded: 0, declined: 0, unknown: 0 }).tried += 1;
    const res = await this.untilFinal(r, 'POST', `/v1/orders/${orderId}/cancel`, {
      token: user.token, body: {},
    });
    if (res === null) {
      this.count('cancel', 'unknown');
      return;
    }
    rec.outcome = { status: res.status, code: res.json?.error?.code ?? '', orderStatus: res.json?.status ?? '' };
    this.count('cancel', res.status < 300 ? 'succeeded' : 'declined');
  }

  // Sends an earlier operation of 'user' again with its key.
  async replay(user, r) {
    const pick = r.next();
    const mine = (map) => [...map.values()].filter((x) => x.user === user.id);
    this.stats.replays += 1;
    if (pick < 0.6) {
      const recs = mine(this.pays);
      if (recs.length) await this.sendPay(user, r, r.pick(recs), ACTION_BUDGET_MS, false);
    } else if (pick < 0.8) {
      const recs = mine(this.topups);
      if (recs.length) await this.sendTopUp(user, r, r.pick(recs), ACTION_BUDGET_MS, false);
    } else {
      const recs = mine(this.refunds);
      if (recs.length) await this.sendRefund(user, r, r.pick(recs), ACTION_BUDGET_MS, false);
    }
  }

  async client(user, slot, r) {
    const other = (slot + 1) % this.clientsPerUser;
    while (Date.now() < this.untilMs) {
      const dice = r.next();
      if (dice < 0.15) {
        await this.topUp(user, r, r.int(10, 150) * 100);
      } else if (dice < 0.55) {
        const order = await this.createOrder(user, r);
        if (order) {
          user.latest[slot] = order;
          await this.pay(user, r, order);
        }
      } else if (dice < 0.63) {
        if (user.latest[other]) await this.pay(user, r, user.latest[other]);
      } else if (dice < 0.70) {
        const order = r.next() < 0.7 ? user.latest[other] : user.latest[slot];
        if (order) await this.cancel(user, r, order);
      } else if (dice < 0.85) {
        await this.refund(user, r);
      } else {
        await this.replay(user, r);
      }
      await sleep(r.int(0, THINK_MS_MAX));
    }
  }

  // Runs every client until 'untilMs' (each finishes its operation);
  // endSoon() may bring the end forward.
  async run(untilMs) {
    this.untilMs = untilMs;
    const runs = [];
    for (const user of this.users) {
      for (let slot = 0; slot < this.clientsPerUser; slot++) {
        const r = rng((this.seed + user.index * 7919 + slot * 104729) >>> 0);
        runs.push(this.client(user, slot, r));
      }
    }
    await Promise.all(runs);
  }

  endSoon(ms) {
    this.untilMs = Math.min(this.untilMs, Date.now() + ms);
  }

  // Sends every operation whose outcome is unknown again with its key,
  // until it gets a final answer (the faults have healed by now).
  async resolve() {
    const r = rng(this.seed ^ 0x1234567);
    const byId = new Map(this.users.map((u) => [u.id, u]));
    const jobs = [];
    for (const rec of this.topups.values()) {
      if (rec.outcome === null) jobs.push(this.sendTopUp(byId.get(rec.user), r, rec, RESOLVE_BUDGET_MS, false));
    }
    for (const rec of this.pays.values()) {
      if (rec.outcome === null) jobs.push(this.sendPay(byId.get(rec.user), r, rec, RESOLVE_BUDGET_MS, false));
    }
    for (const rec of this.refunds.values()) {
      if (rec.outcome === null) jobs.push(this.sendRefund(byId.get(rec.user), r, rec, RESOLVE_BUDGET_MS, false));
    }
    await Promise.all(jobs);
    for (const map of [this.topups, this.pays, this.refunds]) {
      for (const rec of map.values()) {
        if (rec.outcome === null) {
          this.violation(`${rec.kind} key ${rec.key}: still no final answer ${RESOLVE_BUDGET_MS} ms after the faults healed`);
        }
      }
    }
    return jobs.length;
  }
}
