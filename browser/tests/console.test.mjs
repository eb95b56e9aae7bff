// The staff console in Chromium: sign in, find a caller by phone, read the
// customer 360, record the consent change they asked for and see it in the
// ledger, verify a request from the queue, the role checks (support cannot
// export or open the queue; the analyst sees no address), an admin making a
// staff account that then signs in, axe on every console page, and
// screenshots.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, test } from 'node:test';
import { api, axeSerious, launchBrowser, newPage, screenshot, startTarmo, tarmoBin } from '../lib/harness.mjs';

const PASSWORD = 'correct horse battery staple';
const PHONE = '+358 40 765 4321';
const EMAIL = 'kaisa.console@example.fi';

let tarmo;
let browser;
let profileId;
let requestId;

function createUser(name, role) {
  const r = spawnSync(tarmoBin, ['users', 'create', '--name', name, '--role', role, '--data-dir', tarmo.dataDir], {
    input: `${PASSWORD}\n`,
    env: { ...process.env, TARMO_LOG: 'warn' },
  });
  assert.equal(r.status, 0, String(r.stderr));
}

async function send(path, body) {
  const r = await fetch(`${tarmo.base}${path}`, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`${tarmo.writeKey}:`).toString('base64')}`,
      'content-type': 'application/json',
    },
    body: JSON.stringify(body),
  });
  assert.equal(r.status, 200, await r.text());
}

before(async () => {
  tarmo = await startTarmo();
  browser = await launchBrowser();
  for (const [name, role] of [
    ['sanna', 'support'],
    ['aki', 'analyst'],
    ['dora', 'dpo'],
    ['ada', 'admin'],
  ]) {
    createUser(name, role);
  }
  await send('/v1/identify', {
    userId: 'kaisa-7',
    traits: { email: EMAIL, phone: PHONE, firstName: 'Kaisa', tier: 'gold' },
  });
  for (const [event, total] of [
    ['Product Viewed', 0],
    ['Order Completed', 59.9],
    ['Product Viewed', 0],
  ]) {
    await send('/v1/track', { userId: 'kaisa-7', event, properties: total ? { total } : { sku: 'kale-1' } });
  }
  const found = await api(tarmo, 'GET', `/api/v1/profiles/lookup?type=phone&value=${encodeURIComponent(PHONE)}`);
  assert.equal(found.status, 200, JSON.stringify(found.body));
  profileId = found.body.id;
  const req = await api(tarmo, 'POST', '/api/v1/requests', { type: 'access', subject: { type: 'phone', value: PHONE } });
  assert.equal(req.status, 201, JSON.stringify(req.body));
  requestId = req.body.id;
  const proc = await api(tarmo, 'POST', '/api/v1/processors', {
    name: 'Mailer Oy',
    role: 'email delivery',
    country: 'FI',
    dpa_reference: 'DPA-2026-7',
    dpa_signed_on: '2026-01-15',
    purposes: ['email_marketing'],
    data_categories: ['contact'],
  });
  assert.equal(proc.status, 201, JSON.stringify(proc.body));
});

after(async () => {
  await browser?.close();
  await tarmo?.stop();
});

async function signIn(name) {
  const page = await newPage(browser, { locale: 'en-GB' });
  await page.goto(`${tarmo.base}/`);
  assert.match(page.url(), /\/console\/sign-in$/);
  // The sign-in is limited per address as the API's login is (5 at once,
  // one more every 5 s) and per account (10 at once, one more every 10 s);
  // this file signs in more often than that, so it waits when told to,
  // until a deadline rather than for a fixed number of tries (how many
  // tries it takes depends on how long the tests before it ran).
  const until = Date.now() + 120_000;
  for (;;) {
    await page.getByLabel('Name').fill(name);
    await page.getByLabel('Password').fill(PASSWORD);
    const [resp] = await Promise.all([
      page.waitForResponse((r) => r.url().endsWith('/console/sign-in') && r.request().method() === 'POST'),
      page.getByRole('button', { name: 'Sign in' }).click(),
    ]);
    if (resp.status() !== 429 || Date.now() > until) break;
    const wait = Number(resp.headers()['retry-after'] ?? 5) || 5;
    await page.waitForTimeout(wait * 1000 + 200);
    await page.goto(`${tarmo.base}/console/sign-in`);
  }
  await page.waitForURL(/\/console$/);
  return page;
}

async function noSeriousViolations(page, what) {
  const v = await axeSerious(page);
  assert.deepEqual(v, [], `${what}: ${JSON.stringify(v, null, 1)}`);
}

test('the sign-in page is accessible and signs a staff member in', async () => {
  const page = await newPage(browser);
  await page.goto(`${tarmo.base}/console`);
  assert.equal(await page.getAttribute('html', 'lang'), 'en');
  await noSeriousViolations(page, 'sign-in');
  await screenshot(page, 'console-sign-in');
  await page.getByLabel('Name').fill('sanna');
  await page.getByLabel('Password').fill('not the password');
  await page.getByRole('button', { name: 'Sign in' }).click();
  assert.match(await page.locator('[role=alert]').innerText(), /Wrong name or password/);
  await page.context().close();
});

test('support finds a caller by phone, reads the 360 and records the consent change they asked for', async () => {
  const page = await signIn('sanna');
  await noSeriousViolations(page, 'console home');
  await page.getByLabel('Search').fill(PHONE);
  await page.getByRole('button', { name: 'Search' }).click();
  await page.waitForURL(new RegExp(`/console/people/${profileId}$`));
  const body = await page.locator('main').innerText();
  assert.match(body, /\+358407654321/);
  assert.match(body, new RegExp(EMAIL.replace('.', '\\.')));
  assert.match(body, /Order Completed/);
  await noSeriousViolations(page, 'customer 360');

  await page.getByLabel('Purpose', { exact: true }).selectOption('email_marketing');
  await page.getByLabel('Decision', { exact: true }).selectOption('granted');
  await page.getByLabel('Reason', { exact: true }).fill('Customer asked on the phone to get the newsletter');
  await page.getByRole('button', { name: 'Record consent change' }).click();
  await page.waitForURL(/done=consent/);
  assert.match(await page.locator('[role=status]').innerText(), /recorded in the ledger/);
  const ledger = await page.locator('section#consents table').last().innerText();
  assert.match(ledger, /email_marketing\s+granted\s+staff/);
  assert.match(ledger, /Customer asked on the phone/);
  // The timeline filters by event name.
  await page.getByLabel('Event name').fill('Order Completed');
  await page.getByRole('button', { name: 'Filter' }).click();
  const timeline = await page.locator('section#timeline table').innerText();
  assert.match(timeline, /Order Completed/);
  assert.doesNotMatch(timeline, /Product Viewed/);
  await noSeriousViolations(page, 'customer 360 after a change');
  await screenshot(page, 'console-customer-360');

  // Support takes no exports and has no queue or access log.
  const nav = await page.locator('nav').innerText();
  assert.doesNotMatch(nav, /Requests|Access log/);
  assert.equal(await page.getByText(/export/i).count(), 0);
  const resp = await page.goto(`${tarmo.base}/console/requests`);
  assert.equal(resp.status(), 403);
  await noSeriousViolations(page, 'not allowed');
  await page.context().close();
});

test('the analyst is pseudonymous: no address, no search by it', async () => {
  const page = await signIn('aki');
  await page.getByLabel('Search').fill(EMAIL);
  await page.getByRole('button', { name: 'Search' }).click();
  assert.match(await page.locator('[role=alert]').innerText(), /No one has that identifier/);
  await page.goto(`${tarmo.base}/console/people/${profileId}`);
  const body = await page.locator('main').innerText();
  assert.match(body, /gold/);
  assert.doesNotMatch(body, /kaisa\.console@example\.fi/);
  assert.doesNotMatch(body, /358407654321/);
  await noSeriousViolations(page, 'customer 360 as analyst');
  await page.context().close();
});

test('the DPO verifies a request from the queue and reads who looked at the person', async () => {
  const page = await signIn('dora');
  await page.getByRole('link', { name: 'Requests' }).click();
  await page.waitForURL(/\/console\/requests$/);
  await noSeriousViolations(page, 'requests queue');
  await screenshot(page, 'console-requests');
  await page.getByLabel(`Reason to verify request ${requestId}`).fill('Called back on the number on file');
  await page.locator(`#request-${requestId}`).getByRole('button', { name: 'Verify' }).click();
  await page.waitForURL(/done=verify/);
  assert.match(await page.locator('[role=status]').innerText(), /verified/);
  const got = await api(tarmo, 'GET', `/api/v1/requests/${requestId}`);
  assert.notEqual(got.body.verified_at, null, JSON.stringify(got.body));

  await page.getByRole('link', { name: 'Access log' }).click();
  await page.waitForURL(/access-log$/);
  await page.getByLabel(/Who looked at this person/).fill(String(profileId));
  await page.getByRole('button', { name: 'Show' }).click();
  const log = await page.locator('main table').innerText();
  assert.match(log, /\/console\/people\/\{id\}/);
  assert.match(log, /support/);
  await noSeriousViolations(page, 'access log');
  await screenshot(page, 'console-access-log');
  await page.context().close();
});

test('the admin builds a segment with form controls, sees its count and saves it', async () => {
  const page = await signIn('ada');
  await page.getByRole('link', { name: 'Segments' }).click();
  await page.waitForURL(/\/console\/segments$/);
  await noSeriousViolations(page, 'segments list');
  await page.getByRole('link', { name: 'Build a segment' }).click();
  await page.waitForURL(/\/console\/segments\/new$/);
  await page.getByLabel('Purpose', { exact: true }).selectOption('personalisation');
  await page.getByLabel('Kind').selectOption('event');
  await page.getByLabel('Trait, event, purpose, identifier or segment').fill('Order Completed');
  await page.getByLabel('Comparison').selectOption('gte');
  await page.getByLabel('Value (count for an event, stage for lifecycle)').fill('1');
  await page.getByLabel('Within (events, e.g. 30d)').fill('365d');
  await page.getByRole('button', { name: 'Count' }).click();
  assert.match(await page.locator('[role=status]').innerText(), /^1 people match now/);
  assert.match(await page.locator('pre').innerText(), /"event": "Order Completed"/);
  await noSeriousViolations(page, 'segment builder');
  await screenshot(page, 'console-segment-builder');
  // A second condition that nobody meets: the count falls to zero.
  await page.getByRole('button', { name: 'Add a condition' }).click();
  await page.locator('#kind_1').selectOption('event');
  await page.locator('#name_1').fill('Product Viewed');
  await page.locator('#op_1').selectOption('gte');
  await page.locator('#value_1').fill('5');
  await page.locator('#within_1').fill('30d');
  await page.getByRole('button', { name: 'Count' }).click();
  assert.match(await page.locator('[role=status]').innerText(), /^0 people match now/);
  await page.locator('#value_1').fill('2');
  await page.getByLabel('Segment id').fill('gold_buyers');
  await page.getByLabel('Name', { exact: true }).fill('Gold tier buyers');
  await page.getByRole('button', { name: 'Save segment' }).click();
  await page.waitForURL(/saved=gold_buyers/);
  const row = await page.locator('table tr', { hasText: 'gold_buyers' }).innerText();
  assert.match(row, /Gold tier buyers\s+personalisation\s+1/);
  await page.context().close();
});

test('the builder counts live as one edits a property filter, without pressing Count', async () => {
  const page = await signIn('ada');
  await page.goto(`${tarmo.base}/console/segments/new`);
  const live = page.locator('#live-count');
  assert.equal(await live.getAttribute('aria-live'), 'polite');
  await page.getByLabel('Purpose', { exact: true }).selectOption('personalisation');
  await page.getByLabel('Kind').selectOption('event');
  await page.getByLabel('Trait, event, purpose, identifier or segment').fill('Product Viewed');
  await page.getByLabel('Comparison').selectOption('gte');
  await page.getByLabel('Value (count for an event, stage for lifecycle)').fill('1');
  await page.getByLabel('Within (events, e.g. 30d)').fill('365d');
  await page.getByLabel('Filter property').fill('sku');
  await page.getByLabel('Filter operator').selectOption('eq');
  await page.getByLabel('Filter value').fill('kale-1');
  // No press of Count: the script posts the form and the count arrives.
  await page.waitForFunction(() => /"value": "kale-1"/.test(document.getElementById('live-rule').textContent));
  assert.match(await live.innerText(), /^1 people match now/);
  assert.match(await page.locator('#live-rule').innerText(), /"property": "sku"/);
  await page.getByLabel('Filter value').fill('no-such-sku');
  await page.waitForFunction(() => /no-such-sku/.test(document.getElementById('live-rule').textContent));
  assert.match(await live.innerText(), /^0 people match now/);
  assert.match(page.url(), /\/console\/segments\/new$/);
  await noSeriousViolations(page, 'segment builder with live count');
  await page.context().close();
});

test('every other console page passes axe: dashboard, automations, processors, keys', async () => {
  const page = await signIn('ada');
  for (const [link, path, shot] of [
    ['Consent dashboard', 'dashboard', 'console-dashboard'],
    ['Automations', 'automations', 'console-automations'],
    ['Processors', 'processors', 'console-processors'],
    ['Keys and users', 'keys', 'console-keys'],
  ]) {
    await page.getByRole('link', { name: link, exact: true }).click();
    await page.waitForURL(new RegExp(`/console/${path}$`));
    assert.equal(await page.locator('h1').count(), 1, link);
    await noSeriousViolations(page, link);
    await screenshot(page, shot);
  }
  await page.getByRole('link', { name: 'Consent dashboard', exact: true }).click();
  await page.waitForURL(/dashboard$/);
  const now = await page.locator('main').innerText();
  assert.match(now, /email_marketing\s+1\s+1\s+100\.0 %/);
  assert.equal(await page.locator('svg[role=img]').count(), 3);
  await page.getByRole('link', { name: 'Processors', exact: true }).click();
  await page.waitForURL(/processors$/);
  assert.match(await page.locator('main').innerText(), /Mailer Oy/);
  await page.getByRole('link', { name: 'Keys and users', exact: true }).click();
  await page.waitForURL(/keys$/);
  assert.match(await page.locator('main').innerText(), /sanna/);
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.waitForURL(/sign-in$/);
  await page.goto(`${tarmo.base}/console/keys`);
  assert.match(page.url(), /sign-in$/);
  await page.context().close();
});

test('the admin makes a staff account through the form and it signs in', async () => {
  const page = await signIn('ada');
  await page.getByRole('link', { name: 'Keys and users', exact: true }).click();
  await page.waitForURL(/keys$/);
  await noSeriousViolations(page, 'keys and users with the account forms');
  const form = page.locator('form[action="/console/users"]');
  await form.getByLabel('Account name').fill('saara');
  await form.getByLabel('Password', { exact: true }).fill(PASSWORD);
  await form.getByRole('group', { name: 'Roles' }).getByLabel('support', { exact: true }).check();
  await form.getByRole('button', { name: 'Make account' }).click();
  assert.match(await page.locator('[role=status]').innerText(), /Staff account saara \(support\) made\./);
  assert.match(await page.locator('table').last().innerText(), /saara\s+support/);
  await noSeriousViolations(page, 'keys and users after making an account');
  await screenshot(page, 'console-users');
  await page.context().close();

  // A fresh context: the new account signs in, and is support (no keys page).
  const saara = await signIn('saara');
  const nav = await saara.locator('nav').innerText();
  assert.doesNotMatch(nav, /Keys and users/);
  const resp = await saara.goto(`${tarmo.base}/console/keys`);
  assert.equal(resp.status(), 403);
  await saara.context().close();
});

test('the builder makes a segment of RFM scores and a consent channel, counted as the API previews it; the 360 shows channels', async () => {
  const g = await api(tarmo, 'POST', '/api/v1/consents', {
    subject: { profile: profileId }, purpose: 'email_marketing', decision: 'granted', method: 'api', source: 'console test',
  });
  assert.equal(g.status, 200, JSON.stringify(g.body));
  const page = await signIn('ada');
  await page.goto(`${tarmo.base}/console/segments/new`);
  await page.getByLabel('Purpose', { exact: true }).selectOption('email_marketing');
  await page.locator('#kind_0').selectOption('rfm');
  await page.getByLabel('Recency (R) score is', { exact: true }).selectOption('gte');
  await page.getByLabel('Recency (R) score', { exact: true }).fill('1');
  await page.getByRole('button', { name: 'Add a condition' }).click();
  await page.locator('#kind_1').selectOption('consent');
  await page.locator('#name_1').fill('email_marketing');
  await page.locator('#channel_1').selectOption('email');
  await page.getByRole('button', { name: 'Count' }).click();
  const counted = async () => {
    const rule = JSON.parse(await page.locator('#live-rule').innerText());
    const shown = /^(\d+) people match now/.exec(await page.locator('#live-count').innerText());
    assert.ok(shown, await page.locator('#live-count').innerText());
    const preview = await api(tarmo, 'POST', '/api/v1/segments/preview', { purpose: 'email_marketing', rule });
    assert.equal(preview.status, 200, JSON.stringify(preview.body));
    assert.equal(Number(shown[1]), preview.body.count, JSON.stringify(rule));
    return [rule, preview.body.count];
  };
  const [rule, n] = await counted();
  assert.deepEqual(rule, { all: [{ rfm: { r: { gte: 1 } } }, { consent: 'email_marketing', channel: 'email' }] });
  assert.equal(n, 1, 'the buyer with email marketing granted');
  await noSeriousViolations(page, 'segment builder with RFM and a consent channel');
  await screenshot(page, 'console-segment-builder-rfm');

  // SMS is not a channel of email marketing: the live count falls to 0.
  await page.locator('#channel_1').selectOption('sms');
  await page.waitForFunction(() => /"sms"/.test(document.getElementById('live-rule').textContent));
  await page.waitForFunction(() => /^0 people/.test(document.getElementById('live-count').textContent));
  const [, none] = await counted();
  assert.equal(none, 0);

  // A second property filter on one event, and a second nested group:
  // each button posts the form, so this works without script too.
  await page.locator('#channel_1').selectOption('email');
  await page.getByRole('button', { name: 'Add a condition' }).click();
  await page.locator('#kind_2').selectOption('event');
  await page.locator('#name_2').fill('Product Viewed');
  await page.locator('#op_2').selectOption('gte');
  await page.locator('#value_2').fill('1');
  await page.locator('#within_2').fill('365d');
  await page.locator('#wprop_2').fill('sku');
  await page.locator('#wvalue_2').fill('kale-1');
  await page.getByRole('button', { name: 'Add a filter to condition 3' }).click();
  await page.locator('#wprop_2_1').fill('sku');
  await page.locator('#wop_2_1').selectOption('exists');
  await page.locator('#group_2').selectOption('a');
  await page.getByRole('button', { name: 'Add a condition' }).click();
  await page.locator('#kind_3').selectOption('lifecycle');
  await page.locator('#value_3').fill('lapsed');
  await page.locator('#group_3').selectOption('b');
  await page.getByRole('button', { name: 'Count' }).click();
  const [tree] = await counted();
  assert.deepEqual(tree.all.slice(2), [
    { any: [{ event: 'Product Viewed', within: '365d', where: [{ property: 'sku', op: 'eq', value: 'kale-1' }, { property: 'sku', op: 'exists' }], count: { gte: 1 } }] },
    { any: [{ lifecycle: 'lapsed' }] },
  ]);
  await noSeriousViolations(page, 'segment builder with two groups and two filters');

  // The 360 shows each channel of a purpose, one switched off by the person.
  const put = await api(tarmo, 'PUT', '/api/v1/purposes/offers', {
    name: 'Offers by email and text message', legal_basis: 'consent', channels: ['email', 'sms'],
    data_categories: ['contact'], retention_days: 365, notice: { en: 'Offers by email and by text message.' },
  });
  assert.equal(put.status, 200, JSON.stringify(put.body));
  for (const extra of [{ decision: 'granted' }, { decision: 'withdrawn', channel: 'sms' }]) {
    const r = await api(tarmo, 'POST', '/api/v1/consents', {
      subject: { profile: profileId }, purpose: 'offers', method: 'api', source: 'app settings', ...extra,
    });
    assert.equal(r.status, 200, JSON.stringify(r.body));
  }
  await page.goto(`${tarmo.base}/console/people/${profileId}`);
  const state = await page.locator('section#consents tr', { hasText: 'offers' }).first().innerText();
  assert.match(state, /email: on/);
  assert.match(state, /sms: switched off by the person/);
  assert.match(await page.locator('section#consents table').last().innerText(), /offers\s+withdrawn \(sms only\)/);
  await noSeriousViolations(page, 'customer 360 with a channel switched off');
  await page.context().close();
});
