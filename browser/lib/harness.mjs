// The browser tests' harness: starts the real `tarmo` binary on a free
// loopback port with a data directory of its own, drives Debian's Chromium
// through playwright-core, checks pages with axe-core and keeps screenshots
// under target/browser/. Nothing is downloaded at run time.
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const repo = resolve(here, '..', '..');
export const tarmoBin = process.env.TARMO_BIN ?? join(repo, 'target', 'debug', 'tarmo');
export const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const shots = join(repo, 'target', 'browser');

/** A free TCP port on 127.0.0.1 (bound, read, released). */
export function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.on('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

function run(args, env) {
  return new Promise((ok, fail) => {
    const p = spawn(tarmoBin, args, { env: { ...process.env, ...env } });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('error', fail);
    p.on('close', (code) =>
      code === 0 ? ok(out) : fail(new Error(`tarmo ${args.join(' ')} exited ${code}: ${err}`)),
    );
  });
}

async function waitReady(base, proc, deadlineMs) {
  const until = Date.now() + deadlineMs;
  while (Date.now() < until) {
    if (proc.exitCode !== null) throw new Error(`tarmo exited with ${proc.exitCode}`);
    try {
      const r = await fetch(`${base}/healthz`);
      if (r.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`tarmo did not answer on ${base}`);
}

/**
 * Starts Tarmo on a fresh data directory.
 * - `{}`: `tarmo init --json` then `tarmo serve`; resolves once /healthz answers.
 * - `{ demo: { customers } }`: `tarmo demo`; resolves once the shop is filled.
 * `env` adds environment variables (e.g. TARMO_* settings).
 * Returns { base, dataDir, adminKey, writeKey, staffPassword, log(), stop() }.
 */
export async function startTarmo(opts = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'tarmo-browser-'));
  const port = await freePort();
  const listen = `127.0.0.1:${port}`;
  const base = `http://${listen}`;
  const env = { TARMO_LOG: 'warn', ...(opts.env ?? {}) };
  let adminKey;
  let writeKey;
  let staffPassword;
  let args;
  if (opts.demo) {
    args = ['demo', '--data-dir', dataDir, '--listen', listen, '--customers', String(opts.demo.customers ?? 60)];
  } else {
    const keys = JSON.parse(await run(['init', '--data-dir', dataDir, '--json'], env));
    adminKey = keys.admin_key;
    writeKey = keys.write_key;
    args = ['serve', '--data-dir', dataDir, '--listen', listen, ...(opts.serveArgs ?? [])];
  }
  const proc = spawn(tarmoBin, args, { env: { ...process.env, ...env } });
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', (d) => (stdout += d));
  proc.stderr.on('data', (d) => (stderr += d));
  const stop = async () => {
    if (proc.exitCode === null) {
      proc.kill('SIGTERM');
      await new Promise((r) => {
        const t = setTimeout(() => {
          proc.kill('SIGKILL');
          r();
        }, 10_000);
        proc.on('close', () => {
          clearTimeout(t);
          r();
        });
      });
    }
    rmSync(dataDir, { recursive: true, force: true });
  };
  try {
    await waitReady(base, proc, 60_000);
    if (opts.demo) {
      const until = Date.now() + 600_000;
      while (!/The demo shop is ready/.test(stderr)) {
        if (proc.exitCode !== null) throw new Error(`tarmo demo exited: ${stderr}`);
        if (Date.now() > until) throw new Error('the demo shop was not filled in time');
        await new Promise((r) => setTimeout(r, 200));
      }
      staffPassword = /password ([0-9a-f]+)\)/.exec(stderr)?.[1];
      adminKey = /Bearer (\S+)/.exec(stderr)?.[1];
      writeKey = /write key[^:]*:\s+(\S+)/.exec(stdout)?.[1];
    }
  } catch (e) {
    await stop();
    throw e;
  }
  return { base, dataDir, adminKey, writeKey, staffPassword, log: () => stderr, stop };
}

/** Calls Tarmo's API with a key (admin by default); returns { status, body }. */
export async function api(tarmo, method, path, body, key = tarmo.adminKey) {
  const r = await fetch(`${tarmo.base}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${key}`,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: r.status, body: parsed };
}

/** Debian's Chromium, headless, with nothing reaching out to the network. */
export function launchBrowser() {
  return chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
}

/** A page in a fresh context; `locale` sets navigator.language and Accept-Language. */
export async function newPage(browser, { locale = 'en-GB', javaScriptEnabled = true } = {}) {
  const context = await browser.newContext({ locale, javaScriptEnabled });
  return context.newPage();
}

const axeSource = readFileSync(join(here, '..', 'node_modules', 'axe-core', 'axe.min.js'), 'utf8');

/**
 * Runs axe-core on the page (WCAG 2.0/2.1/2.2 A and AA rules) and returns the
 * serious and critical violations, each as { id, impact, help, targets }.
 * Injected through the DevTools protocol, so the page's CSP does not stop it.
 */
export async function axeSerious(page) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(() =>
    // eslint-disable-next-line no-undef
    axe.run(document, {
      runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa'] },
    }),
  );
  return result.violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => ({ id: v.id, impact: v.impact, help: v.help, targets: v.nodes.map((n) => n.target.join(' ')) }));
}

/** Saves a full-page screenshot as target/browser/NAME.png and returns its path. */
export async function screenshot(page, name) {
  mkdirSync(shots, { recursive: true });
  const path = join(shots, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

/**
 * An SMTP server on loopback (no TLS) that keeps every message: enough of
 * RFC 5321 for Tarmo's mailer (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT).
 * Returns { url, messages, waitFor(n), close() }; a message is
 * { from, to, data, header(name) } with headers unfolded.
 */
export async function startSmtpSink() {
  const messages = [];
  const sockets = new Set();
  const srv = createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => {});
    let buf = '';
    let inData = false;
    let env = { from: '', to: [] };
    const say = (line) => sock.write(`${line}\r\n`);
    say('220 sink.test ESMTP');
    sock.on('data', (d) => {
      buf += d.toString('latin1');
      for (;;) {
        if (inData) {
          const end = buf.indexOf('\r\n.\r\n');
          if (end < 0) return;
          const data = Buffer.from(buf.slice(0, end), 'latin1')
            .toString('utf8')
            .replace(/\r\n\.\./g, '\r\n.');
          buf = buf.slice(end + 5);
          inData = false;
          const head = data.split('\r\n\r\n')[0].replace(/\r\n[ \t]+/g, ' ');
          const headers = head.split('\r\n');
          messages.push({
            ...env,
            data,
            header: (name) => {
              const h = headers.find((l) => l.toLowerCase().startsWith(`${name.toLowerCase()}:`));
              return h?.slice(name.length + 1).trim();
            },
          });
          env = { from: '', to: [] };
          say('250 2.0.0 kept');
          continue;
        }
        const nl = buf.indexOf('\r\n');
        if (nl < 0) return;
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 2);
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === 'EHLO') {
          say('250-sink.test');
          say('250-8BITMIME');
          say('250-SMTPUTF8');
          say('250 PIPELINING');
        } else if (verb === 'HELO') say('250 sink.test');
        else if (verb === 'MAIL') {
          env.from = line;
          say('250 2.1.0 ok');
        } else if (verb === 'RCPT') {
          env.to.push(line);
          say('250 2.1.5 ok');
        } else if (verb === 'DATA') {
          inData = true;
          say('354 go ahead');
        } else if (verb === 'QUIT') {
          say('221 bye');
          sock.end();
        } else if (verb === 'RSET') {
          env = { from: '', to: [] };
          say('250 ok');
        } else if (verb === 'NOOP') say('250 ok');
        else say('502 5.5.2 not implemented');
      }
    });
  });
  const port = await freePort();
  await new Promise((ok) => srv.listen(port, '127.0.0.1', ok));
  return {
    url: `smtp://127.0.0.1:${port}?tls=none`,
    messages,
    async waitFor(n, ms = 30_000) {
      const until = Date.now() + ms;
      while (messages.length < n) {
        if (Date.now() > until) throw new Error(`${messages.length} of ${n} messages arrived`);
        await new Promise((r) => setTimeout(r, 100));
      }
      return messages;
    },
    close: () =>
      new Promise((ok) => {
        for (const s of sockets) s.destroy();
        srv.close(ok);
      }),
  };
}
