// bank: money is conserved under faults (issue 7), in the spirit of
// Jepsen's bank test.
//
// The whole system (cluster.mjs: a private PostgreSQL, the broker and its
// event bus, user, order, two payment instances, transaction,
// notification, the gateway) serves 16 concurrent HTTP clients
// (workload.mjs) while this fault schedule runs, one fault at a time:
//
//   every 0.3-1.5 s, one of (seeded):
//     SIGKILL a random service process or the gateway; restart it after
//       0.2-3 s and wait until it serves again       (55%)
//     SIGKILL two at once (one of them often the broker), restart both (10%)
//     SIGKILL the broker; restart it after 0.2-2 s     (15%)
//     SIGSTOP a random process (broker included) for 1-4 s, then SIGCONT (20%)
//   and once, in the middle of the run: PostgreSQL crashed (immediate
//   stop: every backend killed, no checkpoint) and started 1-4 s later.
//
// Then scenario.mjs heals, settles, resolves unknown outcomes and checks
// every invariant (invariants.mjs). Run by ctest as faults_bank; the
// seed is printed (PAYGATE_FAULTS_SEED replays its choices).
import { sleep } from './cluster.mjs';
import { runScenario } from './scenario.mjs';

const LOAD_MS = Number(process.env.PAYGATE_FAULTS_LOAD_MS || 75_000);
const SERVE_AGAIN_TIMEOUT_MS = 60_000;

async function nemesis({ cluster, rand: r, untilMs, faults, violations, say }) {
  const count = (what) => {
    faults[what] = (faults[what] ?? 0) + 1;
  };
  const victims = cluster.names().filter((n) => n !== 'broker');
  const pgAt = Date.now() + (untilMs - Date.now()) * (0.3 + 0.3 * r.next());
  let pgDone = false;
  const serveAgain = async (name) => {
    try {
      await cluster.waitServing(name, SERVE_AGAIN_TIMEOUT_MS);
    } catch (err) {
      violations.push(`after a fault: ${err.message}`);
    }
  };
  while (Date.now() < untilMs - 5000) {
    await sleep(r.int(300, 1500));
    if (!pgDone && Date.now() >= pgAt) {
      pgDone = true;
      say('fault: PostgreSQL crashed (immediate stop)');
      await cluster.pg.crash();
      count('postgres_restart');
      await sleep(r.int(1000, 4000));
      await cluster.pg.start();
      continue;
    }
    const dice = r.next();
    if (dice < 0.55) {
      const name = r.pick(victims);
      await cluster.kill(name);
      count(`kill_${name}`);
      await sleep(r.int(200, 3000));
      cluster.startProcess(name);
      await serveAgain(name);
    } else if (dice < 0.65) {
      const names = [r.pick(victims), 'broker'];
      if (r.next() < 0.5) names[1] = r.pick(victims.filter((n) => n !== names[0]));
      await Promise.all(names.map((n) => cluster.kill(n)));
      count(`kill_${names.join('+')}`);
      await sleep(r.int(200, 3000));
      for (const n of names) cluster.startProcess(n);
      for (const n of names) await serveAgain(n);
    } else if (dice < 0.8) {
      await cluster.kill('broker');
      count('kill_broker');
      await sleep(r.int(200, 2000));
      cluster.startProcess('broker');
      await serveAgain('broker');
    } else {
      const name = r.pick([...victims, 'broker']);
      cluster.signal(name, 'SIGSTOP');
      count(`pause_${name}`);
      await sleep(r.int(1000, 4000));
      cluster.signal(name, 'SIGCONT');
    }
  }
  if (!pgDone) {
    await cluster.pg.crash();
    count('postgres_restart');
    await sleep(1000);
    await cluster.pg.start();
  }
}

await runScenario({
  name: 'bank',
  instances: { payment: 2 },
  settings: { serviceThreads: 2, leaseMs: 2000, recoveryIntervalMs: 300 },
  users: 8,
  clientsPerUser: 2,
  loadMs: LOAD_MS,
  nemesis,
});
