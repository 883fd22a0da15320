// redis: the smallest RESP client the fault tests need (no npm package):
// commands with array replies, and a pattern subscription that counts every
// message it receives. Redis is ./dev test's (PAYGATE_TEST_REDIS_PORT).
import net from 'node:net';

const COMMAND_TIMEOUT_MS = 10_000;

// Parses one RESP value from 'buf' at 'pos'. Returns [value, next] or null
// when the buffer does not hold all of it yet.
function parse(buf, pos) {
  if (pos >= buf.length) return null;
  const eol = buf.indexOf('\r\n', pos);
  if (eol < 0) return null;
  const type = String.fromCharCode(buf[pos]);
  const line = buf.toString('utf8', pos + 1, eol);
  const next = eol + 2;
  switch (type) {
    case '+':
      return [line, next];
    case '-':
      return [new Error(line), next];
    case ':':
      return [Number(line), next];
    case '$': {
      const len = Number(line);
      if (len < 0) return [null, next];
      if (buf.length < next + len + 2) return null;
      return [buf.toString('utf8', next, next + len), next + len + 2];
    }
    case '*': {
      const count = Number(line);
      if (count < 0) return [null, next];
      const items = [];
      let at = next;
      for (let i = 0; i < count; i++) {
        const item = parse(buf, at);
        if (item === null) return null;
        items.push(item[0]);
        at = item[1];
      }
      return [items, at];
    }
    default:
      throw new Error(`redis: unexpected reply type ${type}`);
  }
}

function encode(args) {
  let out = `*${args.length}\r\n`;
  for (const arg of args) {
    const s = String(arg);
    out += `$${Buffer.byteLength(s)}\r\n${s}\r\n`;
  }
  return out;
}

// One connection; replies come back in order.
export class Redis {
  constructor(port) {
    this.port = port;
    this.buf = Buffer.alloc(0);
    this.waiting = [];
    this.onPush = null;
  }

  connect() {
    return new Promise((resolve, reject) => {
      this.socket = net.createConnection({ host: '127.0.0.1', port: this.port }, resolve);
      this.socket.once('error', reject);
      this.socket.on('data', (chunk) => this.receive(chunk));
      this.socket.on('close', () => {
        this.closed = true;
        for (const w of this.waiting.splice(0)) w.reject(new Error('redis: connection closed'));
      });
    });
  }

  receive(chunk) {
    this.buf = Buffer.concat([this.buf, chunk]);
    for (;;) {
      const parsed = parse(this.buf, 0);
      if (parsed === null) break;
      this.buf = this.buf.subarray(parsed[1]);
      const value = parsed[0];
      if (this.onPush && Array.isArray(value) && (value[0] === 'pmessage' || value[0] === 'psubscribe')) {
        this.onPush(value);
        continue;
      }
      const w = this.waiting.shift();
      if (!w) continue;
      clearTimeout(w.timer);
      if (value instanceof Error) w.reject(value);
      else w.resolve(value);
    }
  }

  command(...args) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`redis: ${args[0]} timed out`)),
                               COMMAND_TIMEOUT_MS);
      this.waiting.push({ resolve, reject, timer });
      this.socket.write(encode(args));
    });
  }

  // PSUBSCRIBE 'pattern': calls 'onMessage(channel, text)' for every
  // message. Resolves once Redis confirmed the subscription.
  psubscribe(pattern, onMessage) {
    return new Promise((resolve) => {
      this.onPush = (value) => {
        if (value[0] === 'psubscribe') resolve();
        else onMessage(value[2], value[3]);
      };
      this.socket.write(encode(['PSUBSCRIBE', pattern]));
    });
  }

  close() {
    this.socket?.destroy();
  }
}
