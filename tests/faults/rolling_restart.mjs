// rolling_restart: graceful behaviour (issue 7). Under steady load over
// HTTP, every process of the system is stopped with SIGTERM, one at a
// time, and started again once it has exited:
//
//   user-1, user-2, order-1, order-2, payment-1, payment-2, transaction-1,
//   transaction-2, notification-1, notification-2, gateway-1, gateway-2,
//   and last the broker (there is one: requests fail cleanly meanwhile)
//
// Two instances of every service and two gateways (clients pick one at
// random per request), so while one restarts the other serves. Each
// process must exit by itself with status 0 within 10 s of SIGTERM (an
// ASan leak report also fails it); the next restart waits until it serves
// again. First, one request is held in progress at a gateway while it
// gets SIGTERM: it must still be answered. Requests may fail cleanly meanwhile (502/503/504 or a refused
// connection, then retried with the same Idempotency-Key), never with a
// false answer, and nothing acknowledged may be lost: scenario.mjs checks
// every invariant of the bank test afterwards. Run by ctest as
// faults_rolling_restart.
import { sleep, STOP_GRACE_MS } from './cluster.mjs';
import { runScenario } from './scenario.mjs';

const SERVE_AGAIN_TIMEOUT_MS = 60_000;
const SETTLE_BETWEEN_MS = 1000; // load on the restarted process before the next
const exits = [];

// A request in progress at a gateway's SIGTERM is answered before the
// gateway exits: the user service is paused (both instances) so that a
// top-up sent to gateway-1 waits there; gateway-1 gets SIGTERM; the user
// service resumes. The client must get an HTTP answer (whatever it is),
// not a closed connection.
async function answeredThroughSigterm({ cluster, violations, workload, say }) {
  const users = cluster.names().filter((n) => n.startsWith('user-'));
  for (const name of users) cluster.signal(name, 'SIGSTOP');
  const pending = workload.topUpOnce(workload.users[0], cluster.baseUrls[0], 100);
  await sleep(1000); // the request reaches gateway-1 (and waits there)
  const exit = cluster.terminate('gateway-1', STOP_GRACE_MS);
  await sleep(1500);
  for (const name of users) cluster.signal(name, 'SIGCONT');
  const res = await pending;
  const r = await exit;
  say(`in flight through gateway-1's SIGTERM: answered ${res.status || res.error}; gateway-1 exited ` +
      `${r.code} after ${r.ms} ms`);
  if (res.status === 0) violations.push(`a request in progress at gateway-1's SIGTERM got no answer: ${res.error}`);
  if (!r.clean) violations.push(`gateway-1 did not exit 0 within ${STOP_GRACE_MS} ms while draining (code ${r.code}, signal ${r.signal})`);
  cluster.startProcess('gateway-1');
  await cluster.waitServing('gateway-1', SERVE_AGAIN_TIMEOUT_MS);
}

async function nemesis(ctx) {
  const { cluster, faults, violations, workload, say } = ctx;
  await sleep(3000); // steady load first
  await answeredThroughSigterm(ctx);
  await sleep(2000);
  const order = [...cluster.names().filter((n) => n !== 'broker'), 'broker'];
  for (const name of order) {
    const failedBefore = workload.stats.attemptsFailedCleanly;
    const causesBefore = { ...workload.stats.failures };
    const r = await cluster.terminate(name, STOP_GRACE_MS);
    const exit = { name, ...r };
    exits.push(exit);
    faults.sigterm = (faults.sigterm ?? 0) + 1;
    if (!r.clean) {
      violations.push(`${name} did not exit by itself with status 0 within ${STOP_GRACE_MS} ms of SIGTERM ` +
                      `(code ${r.code}, signal ${r.signal}, after ${r.ms} ms); see ${cluster.proc(name).logPath}`);
    }
    cluster.startProcess(name);
    try {
      await cluster.waitServing(name, SERVE_AGAIN_TIMEOUT_MS);
    } catch (err) {
      violations.push(`after its restart: ${err.message}`);
    }
    await sleep(SETTLE_BETWEEN_MS);
    exit.failedCleanly = workload.stats.attemptsFailedCleanly - failedBefore;
    exit.causes = Object.entries(workload.stats.failures)
      .filter(([why, n]) => n !== (causesBefore[why] ?? 0))
      .map(([why, n]) => `${why} x${n - (causesBefore[why] ?? 0)}`).join(' ');
  }
  say(`SIGTERM exits (exit time, requests failed cleanly meanwhile): ${exits
    .map((e) => `${e.name} ${e.clean ? 'ok' : 'BAD'} ${e.ms} ms ${e.failedCleanly}${e.causes ? ` (${e.causes})` : ''}`).join(', ')}`);
  workload.endSoon(3000);
}

await runScenario({
  name: 'rolling',
  instances: { user: 2, order: 2, payment: 2, transaction: 2, notification: 2, gateway: 2 },
  settings: { serviceThreads: 2, leaseMs: 2000, recoveryIntervalMs: 300 },
  users: 6,
  clientsPerUser: 2,
  loadMs: 240_000, // ended by the schedule once every process restarted
  nemesis,
  summary: () => {
    const slowest = exits.reduce((a, e) => (e.ms > a.ms ? e : a), { ms: 0 });
    return `rolling restart: ${exits.length} processes stopped by SIGTERM, ` +
           `${exits.filter((e) => e.clean).length} exited 0 in time (slowest ${slowest.name} ${slowest.ms} ms)`;
  },
});
