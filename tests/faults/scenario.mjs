// scenario: the frame both fault tests share.
//
//   start the cluster (cluster.mjs) and a Redis subscriber that counts
//   every notification published -> users -> clients (workload.mjs) and
//   the test's fault schedule ("nemesis") at once, for a bounded time ->
//   heal (every process running and serving) -> wait until every saga
//   and outbox settled -> send every operation with an unknown outcome
//   again with its key -> wait until every movement is in the history and
//   notified -> check the invariants (invariants.mjs) -> stop every
//   process (each must exit 0 on SIGTERM) -> print the summary.
//
// Command line: --bin paygate-NAME=PATH (each binary and paygatectl),
// --log-dir DIR. The seed comes from PAYGATE_FAULTS_SEED (printed, so a
// run's random choices can be replayed), else from the clock.
import { Cluster, sleep } from './cluster.mjs';
import { checkAll, expectedEvents, acknowledged, waitDelivered, waitSettled } from './invariants.mjs';
import { Redis } from './redis.mjs';
import { rng, Workload } from './workload.mjs';

const HEAL_TIMEOUT_MS = 120_000;
const SETTLE_TIMEOUT_MS = 90_000;
const DELIVER_TIMEOUT_MS = 90_000;

function parseArgs(argv) {
  const bins = {};
  let logDir = '.';
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--bin') {
      const [name, file] = argv[++i].split('=');
      bins[name] = file;
    } else if (argv[i] === '--log-dir') {
      logDir = argv[++i];
    } else {
      throw new Error(`unknown argument ${argv[i]}`);
    }
  }
  return { bins, logDir };
}

export function seedFromEnv() {
  const given = process.env.PAYGATE_FAULTS_SEED;
  if (given !== undefined && given !== '') {
    if (!/^\d{1,10}$/.test(given)) throw new Error('PAYGATE_FAULTS_SEED must be an integer 0..4294967295');
    return Number(given) >>> 0;
  }
  return (Date.now() ^ (process.pid << 16)) >>> 0;
}

// Runs scenario 'spec': {name, instances, settings, users, clientsPerUser,
// loadMs, nemesis(ctx) -> Promise, summary(ctx) -> extra summary text}.
// Exits the process: 0 with no violation, 1 otherwise.
export async function runScenario(spec) {
  const { bins, logDir } = parseArgs(process.argv.slice(2));
  const seed = seedFromEnv();
  const tag = `${spec.name}:`;
  const say = (text) => console.log(`${tag} ${text}`);
  say(`seed ${seed} (replay the random choices with PAYGATE_FAULTS_SEED=${seed})`);
  const cluster = new Cluster({ bins, logDir, prefix: spec.name, instances: spec.instances,
                                settings: spec.settings });
  const stopNow = () => {
    cluster.killAll();
    process.exit(130);
  };
  process.on('SIGINT', stopNow);
  process.on('SIGTERM', stopNow);
  const violations = [];
  const faults = {};
  let redis;
  let workload;
  let exitCode = 1;
  const started = Date.now();
  try {
    await cluster.start();
    say(`started in ${Date.now() - started} ms: ${cluster.names().join(' ')}; gateways ${cluster.baseUrls.join(' ')}`);

    // Every notification published on a user's channel, counted by event id.
    const published = new Map();
    redis = new Redis(cluster.redisPort);
    await redis.connect();
    const subscriber = new Redis(cluster.redisPort);
    await subscriber.connect();
    await subscriber.psubscribe('notifications:user:*', (channel, text) => {
      try {
        const n = JSON.parse(text);
        const entry = published.get(n.id) ?? { n: 0, user: channel.split(':')[2] };
        entry.n += 1;
        published.set(n.id, entry);
      } catch {
        violations.push(`a notification that is not JSON on ${channel}: ${text.slice(0, 100)}`);
      }
    });

    workload = new Workload({ baseUrls: cluster.baseUrls, seed, users: spec.users,
                              clientsPerUser: spec.clientsPerUser, log: say });
    await workload.setup();
    const loadStart = Date.now();
    const untilMs = loadStart + spec.loadMs;
    const ctx = { cluster, say, faults, violations, untilMs, rand: rng(seed ^ 0x9e3779b9), workload };
    const [, nemesisError] = await Promise.all([
      workload.run(untilMs),
      spec.nemesis(ctx).then(() => null, (err) => err),
    ]);
    if (nemesisError) violations.push(`fault schedule failed: ${nemesisError.stack ?? nemesisError}`);
    say(`load ran ${Date.now() - loadStart} ms; faults ${JSON.stringify(faults)}`);

    // Heal: whatever is not running starts again, then everything serves.
    for (const name of cluster.names()) {
      const proc = cluster.proc(name);
      cluster.signal(name, 'SIGCONT');
      if (proc.exited) cluster.startProcess(name);
    }
    await cluster.waitAllReady(HEAL_TIMEOUT_MS);
    const healed = Date.now();
    let open = await waitSettled(cluster.pg, SETTLE_TIMEOUT_MS);
    const unknownBefore = workload.stats.unknown;
    const resent = await workload.resolve();
    open = await waitSettled(cluster.pg, SETTLE_TIMEOUT_MS);
    if (Object.keys(open).length) violations.push(`not settled ${SETTLE_TIMEOUT_MS} ms after healing: ${JSON.stringify(open)}`);
    const events = expectedEvents(acknowledged(workload));
    const missing = await waitDelivered(cluster.pg, redis, events, DELIVER_TIMEOUT_MS);
    if (missing) violations.push(`${missing} transactions or notifications still missing ${DELIVER_TIMEOUT_MS} ms after settling`);
    say(`settled ${Date.now() - healed} ms after healing; ${unknownBefore} unknown outcomes sent again (${resent} operations)`);
    await sleep(1000); // a late duplicate publish would show up now
    const ours = new Set(workload.users.map((u) => u.id));
    const publishedOurs = new Map([...published].filter(([, e]) => ours.has(e.user)));
    violations.push(...(await checkAll({ pg: cluster.pg, workload, published: publishedOurs })));
    violations.push(...workload.violations);
    if (spec.after) violations.push(...(await spec.after(ctx)));
    subscriber.close();

    const s = workload.stats;
    const kinds = Object.entries(s.byKind)
      .map(([k, x]) => `${k} ${x.tried}/${x.succeeded}/${x.declined}/${x.unknown}`).join(', ');
    say(`operations tried ${s.tried}, succeeded ${s.succeeded}, declined (402/409, a correct no) ${s.declined}, ` +
        `unknown at first ${s.unknown} (all resolved: ${s.resolved} by sending again), replays ${s.replays}`);
    say(`per kind tried/succeeded/declined/unknown: ${kinds}`);
    say(`HTTP attempts ${s.attempts}, failed cleanly (502/503/504/429 or no answer, then retried) ${s.attemptsFailedCleanly}, ` +
        `500s ${s.attemptsInternalError}; failed cleanly by cause: ${JSON.stringify(s.failures)}`);
    say(`money: ${events.size} movements acknowledged (top-ups ${acknowledged(workload).topups.size}, ` +
        `payments ${acknowledged(workload).payments.size}, refunds ${acknowledged(workload).refunds.size})`);
    const [money] = await cluster.pg.sql(
      'SELECT (SELECT COALESCE(SUM(amount), 0) FROM users.topups)::bigint AS topups,' +
      " (SELECT COALESCE(SUM(amount), 0) FROM payments.payments WHERE status = 'SUCCEEDED')::bigint AS paid," +
      " (SELECT COALESCE(SUM(amount), 0) FROM payments.refunds WHERE status = 'SUCCEEDED')::bigint AS refunded," +
      ' (SELECT COALESCE(SUM(balance), 0) FROM users.wallets)::bigint AS balances');
    say(`total money (paise): top-ups ${money.topups} - payments ${money.paid} + refunds ${money.refunded} ` +
        `= ${money.topups - money.paid + money.refunded}; wallets hold ${money.balances}`);
    if (spec.summary) say(spec.summary(ctx));
    say(`faults injected: ${JSON.stringify(faults)}`);
  } catch (err) {
    violations.push(`the run failed: ${err.stack ?? err}`);
  } finally {
    redis?.close();
    const notes = await cluster.stop();
    violations.push(...cluster.unexpectedExits, ...notes);
  }
  for (const v of violations.slice(0, 80)) console.log(`${tag} VIOLATION: ${v}`);
  if (violations.length > 80) console.log(`${tag} ... and ${violations.length - 80} more`);
  say(`invariant violations: ${violations.length}; ${Date.now() - started} ms in all; seed ${seed}; logs in ${logDir}/${spec.name}-*.log`);
  exitCode = violations.length === 0 ? 0 : 1;
  process.exit(exitCode);
}
