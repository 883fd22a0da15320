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
// again. Requests may fail cleanly meanwhile (502/503/504 or a refused
// connection, then retried with the same Idempotency-Key), never with a
// false answer, and nothing acknowledged may be lost: scenario.mjs checks
// every invariant of the bank test afterwards. Run by ctest as
// faults_rolling_restart.
import { sleep, STOP_GRACE_MS } from './cluster.mjs';
import { runScenario } from './scenario.mjs';

const SERVE_AGAIN_TIMEOUT_MS = 60_000;
const SETTLE_BETWEEN_MS = 1000; // load on the restarted process before the next
const exits = [];

async function nemesis({ cluster, faults, violations, workload, say }) {
  await sleep(3000); // steady load first
  const order = [...cluster.names().filter((n) => n !== 'broker'), 'broker'];
  for (const name of order) {
    const failedBefore = workload.stats.attemptsFailedCleanly;
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
  }
  say(`SIGTERM exits (exit time, requests failed cleanly meanwhile): ${exits
    .map((e) => `${e.name} ${e.clean ? 'ok' : 'BAD'} ${e.ms} ms ${e.failedCleanly}`).join(', ')}`);
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
