// The harness itself, end to end: a served Tarmo, a person sent through the
// write key, their preference link opened in Chromium, and axe run on it.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { api, axeSerious, launchBrowser, newPage, screenshot, startTarmo } from '../lib/harness.mjs';

let tarmo;
let browser;
before(async () => {
  tarmo = await startTarmo();
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await tarmo?.stop();
});

test('a person sent by an SDK opens their own page in Chromium', async () => {
  const r = await fetch(`${tarmo.base}/v1/identify`, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`${tarmo.writeKey}:`).toString('base64')}`,
      'content-type': 'application/json',
    },
    body: JSON.stringify({ userId: 'browser-1', traits: { email: 'ann.browser@example.com' } }),
  });
  assert.equal(r.status, 200, await r.text());
  const found = await api(tarmo, 'GET', '/api/v1/profiles/lookup?type=email&value=ann.browser@example.com');
  assert.equal(found.status, 200, JSON.stringify(found.body));
  const link = await api(tarmo, 'POST', `/api/v1/profiles/${found.body.id}/preference-link`);
  assert.equal(link.status, 200, JSON.stringify(link.body));

  const page = await newPage(browser, { locale: 'en-GB' });
  const resp = await page.goto(link.body.url);
  assert.equal(resp.status(), 200);
  assert.equal(await page.getAttribute('html', 'lang'), 'en');
  assert.ok(await page.locator('form').count() > 0, 'the page has its forms');
  const violations = await axeSerious(page);
  assert.ok(Array.isArray(violations), 'axe ran in the page');
  await screenshot(page, 'harness-preferences-en');
});
