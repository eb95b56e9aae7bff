// The end customer's preference center in Chromium: a Finnish subscriber
// confirms by SMS and sees everything in Finnish (purpose names too),
// withdraws and objects there with effect in the next decision, asks for a
// copy of their data; a Hebrew page runs right to left with an operator's
// English text marked as English; axe-core finds no serious or critical
// violation on any public page (six languages, confirmation, request and
// error pages). Screenshots go to target/browser/.
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, before, test } from 'node:test';
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { api, axeSerious, freePort, launchBrowser, newPage, repo, screenshot, startSmtpSink, startTarmo } from '../lib/harness.mjs';

let tarmo;
let browser;
let gateway;
let smtp;
const texts = []; // SMS bodies the gateway received
const phone = '+358401234567';

/** An SMS gateway on loopback: keeps each message's body. */
async function startGateway() {
  const port = await freePort();
  const srv = createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      try {
        texts.push(JSON.parse(body).body);
      } catch {
        texts.push(body);
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
  });
  await new Promise((ok) => srv.listen(port, '127.0.0.1', ok));
  return { url: `http://127.0.0.1:${port}`, close: () => new Promise((ok) => srv.close(ok)) };
}

/** The first link under `prefix` in an SMS received after `seen` messages. */
async function smsLink(prefix, seen) {
  const until = Date.now() + 20_000;
  while (Date.now() < until) {
    for (const t of texts.slice(seen)) {
      const at = t.indexOf(prefix);
      if (at >= 0) return t.slice(at).split(/\s/)[0];
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no ${prefix} link in ${JSON.stringify(texts)}`);
}

async function decision(purpose, type, value) {
  const r = await api(tarmo, 'GET', `/api/v1/decisions?purpose=${purpose}&type=${type}&value=${encodeURIComponent(value)}`);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body;
}

async function noSeriousViolations(page, what) {
  const v = await axeSerious(page);
  assert.deepEqual(v, [], `${what}: ${JSON.stringify(v, null, 1)}`);
}

/** A person granted email marketing through the API; their preference link. */
async function personLink(email, language) {
  const r = await api(tarmo, 'POST', '/api/v1/consents', {
    subject: { type: 'email', value: email },
    purpose: 'email_marketing',
    decision: 'granted',
    method: 'web_form',
    source: 'shop footer',
  });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  const d = await decision('email_marketing', 'email', email);
  const q = language ? `?language=${language}` : '';
  const link = await api(tarmo, 'POST', `/api/v1/profiles/${d.profile_id}/preference-link${q}`);
  assert.equal(link.status, 200, JSON.stringify(link.body));
  return link.body.url;
}

/** A purpose reaching people by email and by text message, in six languages. */
const offers = {
  name: 'Offers by email and text message',
  names: {
    fi: 'Tarjoukset sähköpostilla ja tekstiviestillä',
    de: 'Angebote per E-Mail und SMS',
    nb: 'Tilbud på e-post og SMS',
    he: 'מבצעים בדוא״ל ובהודעות SMS',
    tr: 'E-posta ve kısa mesajla fırsatlar',
  },
  legal_basis: 'consent',
  channels: ['email', 'sms'],
  data_categories: ['contact'],
  retention_days: 365,
  direct_marketing: true,
  notice: {
    en: 'We send you offers by email and by text message. You choose which.',
    fi: 'Lähetämme sinulle tarjouksia sähköpostilla ja tekstiviestillä. Sinä valitset, kummalla.',
    de: 'Wir senden Ihnen Angebote per E-Mail und per SMS. Sie wählen, auf welchem Weg.',
    nb: 'Vi sender deg tilbud på e-post og SMS. Du velger hvilke.',
    he: 'נשלח אליך מבצעים בדוא״ל ובהודעות SMS. הבחירה בידיך.',
    tr: 'Size e-postayla ve kısa mesajla fırsatlar göndeririz. Hangisini istediğinizi siz seçersiniz.',
  },
};

before(async () => {
  gateway = await startGateway();
  smtp = await startSmtpSink();
  tarmo = await startTarmo({
    serveArgs: [
      '--smtp-url', smtp.url,
      '--mail-from', 'Kauppa Tarmo <hello@kauppa.example>',
      '--organisation', 'Kauppa Tarmo Oy',
      '--controller-contact', 'tietosuoja@kauppa.example',
      '--allow-private-webhooks',
      '--sms-webhook-url', `${gateway.url}/sms`,
    ],
  });
  browser = await launchBrowser();
  const p = await api(tarmo, 'POST', '/api/v1/processors', {
    name: 'Viestit Oy', role: 'SMS delivery', country: 'FI', dpa_reference: 'DPA-12',
    dpa_signed_on: '2024-05-02', purposes: ['sms_marketing'], data_categories: ['contact'],
  });
  assert.equal(p.status, 201, JSON.stringify(p.body));
  const o = await api(tarmo, 'PUT', '/api/v1/purposes/offers', offers);
  assert.equal(o.status, 200, JSON.stringify(o.body));
});
after(async () => {
  await browser?.close();
  await tarmo?.stop();
  await gateway?.close();
  await smtp?.close();
});

test('a Finnish subscriber: confirmation, preferences, withdrawal, objection and a copy of their data, all in Finnish', async () => {
  const s = await api(tarmo, 'POST', '/api/v1/subscriptions', {
    phone, purposes: ['sms_marketing'], language: 'fi', source: 'till',
  });
  assert.equal(s.status, 202, JSON.stringify(s.body));
  const confirm = await smsLink(`${tarmo.base}/c/`, 0);

  const page = await newPage(browser, { locale: 'fi-FI' });
  assert.equal((await page.goto(confirm)).status(), 200);
  assert.equal(await page.getAttribute('html', 'lang'), 'fi');
  assert.equal(await page.locator('h2').first().innerText(), 'Tarjoukset tekstiviestillä', 'the purpose named in Finnish');
  await noSeriousViolations(page, 'confirmation page');
  await screenshot(page, 'confirm-fi');
  await page.getByRole('button', { name: 'Kyllä, vahvistan' }).click();
  await page.waitForSelector('h1:has-text("Kiitos — vahvistettu")');
  await noSeriousViolations(page, 'confirmed page');
  assert.equal((await decision('sms_marketing', 'phone', phone)).allowed, true);

  await page.getByRole('link', { name: 'Katso ja muuta kaikkia valintojasi' }).click();
  await page.waitForSelector('h1:has-text("Valintasi")');
  assert.equal(await page.getAttribute('html', 'lang'), 'fi');
  assert.equal(await page.locator('main [lang]').count(), 0, 'nothing falls back to another language');
  const names = await page.locator('h3').allInnerTexts();
  for (const n of ['Tarjoukset tekstiviestillä', 'Sivustomme käytön mittaaminen', 'Tilaustesi toimittaminen']) {
    assert.ok(names.includes(n), `${n} in ${names}`);
  }
  const main = await page.locator('main').innerText();
  for (const t of ['Kauppa Tarmo Oy on henkilötietojesi rekisterinpitäjä', 'Viestit Oy (SMS delivery, FI)', 'Poista kaikki tietoni', 'Mitä teemme kysymättä — voit vastustaa']) {
    assert.ok(main.includes(t), `${t} missing`);
  }
  // Legitimate interests: an objection box, never a consent box.
  assert.equal(await page.locator('input[name=purpose][value=analytics]').count(), 0);
  const analytics = page.locator('fieldset', { has: page.locator('input[name=object][value=analytics]') });
  assert.equal(await analytics.getByLabel('Vastustan').isChecked(), false);
  await noSeriousViolations(page, 'preference page (fi)');
  await screenshot(page, 'preferences-fi');

  // Withdraw SMS offers and object to analytics: in effect at the next decision.
  await page.locator('input[name=purpose][value=sms_marketing]').uncheck();
  await analytics.getByLabel('Vastustan').check();
  await page.getByRole('button', { name: 'Tallenna valintani' }).click();
  await page.waitForSelector('[role=status]');
  let d = await decision('sms_marketing', 'phone', phone);
  assert.deepEqual([d.allowed, d.reason], [false, 'withdrawn']);
  d = await decision('analytics', 'phone', phone);
  assert.deepEqual([d.allowed, d.reason], [false, 'objected']);
  assert.ok((await page.locator('main').innerText()).includes('Olet vastustanut tätä.'));
  await noSeriousViolations(page, 'preference page after saving');

  // A copy of their data: request, the link by SMS, confirm, download.
  const seen = texts.length;
  await page.getByRole('button', { name: 'Lähetä minulle kopio tiedoistani' }).click();
  await page.waitForSelector('[role=status]');
  await noSeriousViolations(page, 'request sent page');
  const verify = await smsLink(`${tarmo.base}/r/`, seen);
  assert.equal((await page.goto(verify)).status(), 200);
  assert.ok((await page.locator('main').innerText()).includes('kopio tiedoistasi'));
  await noSeriousViolations(page, 'request verification page');
  await page.getByRole('button', { name: 'Kyllä, tämä on minun pyyntöni' }).click();
  await page.waitForSelector('h1:has-text("Pyyntösi on vahvistettu.")');
  await noSeriousViolations(page, 'request confirmed page');
  await screenshot(page, 'request-confirmed-fi');
  const href = await page.getByRole('link', { name: 'Lataa tietoni (ZIP-tiedosto)' }).getAttribute('href');
  const zip = await fetch(href);
  assert.equal(zip.status, 200);
  assert.match(zip.headers.get('content-type'), /zip/);

  // Error pages: a used link, a forged one.
  assert.equal((await page.goto(confirm)).status(), 410);
  assert.equal(await page.locator('h1').innerText(), 'Tätä linkkiä on jo käytetty. Aiempi valintasi on voimassa.');
  await noSeriousViolations(page, 'used link page');
  for (const forged of ['/p/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', '/u/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', '/r/nope', '/r/download/nope']) {
    assert.equal((await page.goto(`${tarmo.base}${forged}`)).status(), 404, forged);
    assert.equal(await page.locator('h1').innerText(), 'Linkki ei ole kelvollinen.');
    await noSeriousViolations(page, `error page ${forged}`);
  }
  await page.context().close();
});

test('Hebrew runs right to left, an English fallback is marked and keeps its full stop at its end', async () => {
  const put = await api(tarmo, 'PUT', '/api/v1/purposes/loyalty_club', {
    name: 'Loyalty club', legal_basis: 'consent', channels: ['email'], data_categories: ['contact'],
    retention_days: 365, notice: { en: 'We keep your points and send you member offers.' },
  });
  assert.ok([200, 201].includes(put.status), JSON.stringify(put.body));
  const url = await personLink('noa@example.co.il');
  const page = await newPage(browser, { locale: 'he-IL' });
  assert.equal((await page.goto(url)).status(), 200);
  assert.equal(await page.getAttribute('html', 'dir'), 'rtl');
  assert.equal(await page.getAttribute('html', 'lang'), 'he');
  const name = page.locator('h3', { hasText: 'Loyalty club' });
  assert.equal(await name.getAttribute('lang'), 'en');
  const notice = page.locator('p.notice[lang=en]', { hasText: 'member offers.' });
  assert.equal(await notice.getAttribute('dir'), 'ltr');
  // Where the full stop is drawn: right of the first letter, as in English.
  const [first, last] = await notice.evaluate((p) => {
    const node = p.firstChild;
    const at = (i) => {
      const r = document.createRange();
      r.setStart(node, i);
      r.setEnd(node, i + 1);
      return r.getBoundingClientRect().left;
    };
    return [at(0), at(node.length - 1)];
  });
  assert.ok(last > first, `full stop at ${last}, first letter at ${first}`);
  // The page's own words are Hebrew, the built-in purposes too.
  const names = await page.locator('h3').allInnerTexts();
  assert.ok(names.includes('חדשות ומבצעים בדוא״ל'), `${names}`);
  assert.ok((await page.locator('main').innerText()).includes('מחיקת כל המידע שלי'));
  await noSeriousViolations(page, 'preference page (he)');
  await screenshot(page, 'preferences-he');
  await page.context().close();
});

test('the preference page in all six languages passes axe; the browser language is negotiated by weight', async () => {
  const url = await personLink('kim@example.com');
  const cases = [
    ['en-GB', 'en', 'News and offers by email'],
    ['fi-FI', 'fi', 'Uutiset ja tarjoukset sähköpostilla'],
    ['de-DE', 'de', 'Neuigkeiten und Angebote per E-Mail'],
    ['nb-NO', 'nb', 'Nyheter og tilbud på e-post'],
    ['he-IL', 'he', 'חדשות ומבצעים בדוא״ל'],
    ['tr-TR', 'tr', 'E-postayla haberler ve fırsatlar'],
  ];
  for (const [locale, lang, name] of cases) {
    const page = await newPage(browser, { locale });
    assert.equal((await page.goto(url)).status(), 200);
    assert.equal(await page.getAttribute('html', 'lang'), lang, locale);
    assert.ok((await page.locator('h3').allInnerTexts()).includes(name), `${locale}: ${name}`);
    await noSeriousViolations(page, `preference page (${lang})`);
    await screenshot(page, `preferences-${lang}`);
    await page.context().close();
  }
  // q-values: Swedish is not offered, Turkish outweighs English.
  const ctx = await browser.newContext({ extraHTTPHeaders: { 'accept-language': 'sv-SE, en;q=0.2, tr;q=0.7' } });
  const page = await ctx.newPage();
  await page.goto(url);
  assert.equal(await page.getAttribute('html', 'lang'), 'tr');
  await ctx.close();
});

test('without JavaScript the plain form withdraws a consent', async () => {
  const email = 'nojs@example.de';
  const url = await personLink(email, 'de');
  const page = await newPage(browser, { locale: 'de-DE', javaScriptEnabled: false });
  await page.goto(url);
  await page.locator('input[name=purpose][value=email_marketing]').uncheck();
  await page.getByRole('button', { name: 'Einstellungen speichern' }).click();
  await page.waitForSelector('[role=status]');
  const d = await decision('email_marketing', 'email', email);
  assert.deepEqual([d.allowed, d.reason], [false, 'withdrawn']);
  await page.context().close();
});

/** The decision for one channel of a purpose, for a person by email. */
async function decisionOn(purpose, channel, email) {
  const r = await api(tarmo, 'GET', `/api/v1/decisions?purpose=${purpose}&channel=${channel}&type=email&value=${encodeURIComponent(email)}`);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return [r.body.allowed, r.body.reason];
}

test('within one purpose a person keeps email and stops text messages, without JavaScript', async () => {
  const email = 'kanavat@example.fi';
  const g = await api(tarmo, 'POST', '/api/v1/consents', {
    subject: { type: 'email', value: email }, purpose: 'offers', decision: 'granted',
    method: 'web_form', source: 'checkout',
  });
  assert.equal(g.status, 200, JSON.stringify(g.body));
  const d = await decision('offers', 'email', email);
  const link = await api(tarmo, 'POST', `/api/v1/profiles/${d.profile_id}/preference-link?language=en`);
  assert.equal(link.status, 200, JSON.stringify(link.body));
  const page = await newPage(browser, { locale: 'en-GB', javaScriptEnabled: false });
  await page.goto(link.body.url);
  const box = page.locator('fieldset', { has: page.locator('input[name=purpose][value=offers]') });
  const channels = box.getByRole('group', { name: 'Channels you allow' });
  const sms = channels.getByRole('checkbox', { name: 'text message' });
  const byEmail = channels.getByRole('checkbox', { name: 'email' });
  assert.equal(await box.getByRole('checkbox', { name: 'I allow this' }).isChecked(), true);
  assert.deepEqual([await byEmail.isChecked(), await sms.isChecked()], [true, true]);

  await sms.uncheck();
  await page.getByRole('button', { name: 'Save my choices' }).click();
  await page.waitForSelector('[role=status]');
  assert.deepEqual(await decisionOn('offers', 'sms', email), [false, 'channel_withdrawn']);
  assert.deepEqual(await decisionOn('offers', 'email', email), [true, 'consent_granted']);
  assert.equal(await sms.isChecked(), false, 'the page shows the choice it saved');
  assert.equal(await byEmail.isChecked(), true);
  // axe runs as script, so the same page is checked in a context with it.
  const checked = await newPage(browser, { locale: 'en-GB' });
  await checked.goto(link.body.url);
  await noSeriousViolations(checked, 'preference page with a channel switched off');
  const shot = await screenshot(checked, 'preferences-channels-en');
  copyFileSync(shot, join(repo, 'docs', 'preferences-channels-en.png'));
  await checked.context().close();

  // The choice is evidence in the ledger, made on the page.
  const c = await api(tarmo, 'GET', `/api/v1/profiles/${d.profile_id}/consents`);
  const last = c.body.ledger.at(-1);
  assert.deepEqual([last.purpose, last.channel, last.decision, last.method], ['offers', 'sms', 'withdrawn', 'preference_center']);

  // And back on.
  await sms.check();
  await page.getByRole('button', { name: 'Save my choices' }).click();
  await page.waitForSelector('[role=status]');
  assert.deepEqual(await decisionOn('offers', 'sms', email), [true, 'consent_granted']);
  await page.context().close();
});

test('the unsubscribe page of a real marketing email passes axe and its button withdraws', async () => {
  const email = 'uutiset@example.fi';
  const g = await api(tarmo, 'POST', '/api/v1/consents', {
    subject: { type: 'email', value: email }, purpose: 'email_marketing', decision: 'granted',
    method: 'web_form', source: 'shop footer',
  });
  assert.equal(g.status, 200, JSON.stringify(g.body));
  const seen = smtp.messages.length;
  const sent = await api(tarmo, 'POST', '/api/v1/messages/email', {
    recipient: { type: 'email', value: email }, purpose: 'email_marketing',
    subject: 'Avocados are in', text: 'Ripe avocados at your store this week.',
  });
  assert.equal(sent.status, 202, JSON.stringify(sent.body));
  const mail = (await smtp.waitFor(seen + 1))[seen];
  assert.equal(mail.header('Subject'), 'Avocados are in');
  const url = /<([^>]+)>/.exec(mail.header('List-Unsubscribe'))?.[1];
  assert.ok(url?.startsWith(`${tarmo.base}/u/`), mail.header('List-Unsubscribe'));

  // Without script the page is the same plain form.
  const plain = await newPage(browser, { locale: 'en-GB', javaScriptEnabled: false });
  assert.equal((await plain.goto(url)).status(), 200);
  assert.equal(await plain.locator('form[method=post] button[type=submit]').innerText(), 'Unsubscribe');
  await plain.context().close();
  const page = await newPage(browser, { locale: 'en-GB' });
  assert.equal((await page.goto(url)).status(), 200);
  await noSeriousViolations(page, 'unsubscribe page');
  await screenshot(page, 'unsubscribe-en');
  let d = await decision('email_marketing', 'email', email);
  assert.deepEqual([d.allowed, d.reason], [true, 'consent_granted'], 'opening the page changes nothing');
  await page.getByRole('button', { name: 'Unsubscribe' }).click();
  await page.waitForSelector('text=You are unsubscribed');
  await noSeriousViolations(page, 'unsubscribed page');
  d = await decision('email_marketing', 'email', email);
  assert.deepEqual([d.allowed, d.reason], [false, 'withdrawn']);
  await page.context().close();
});
