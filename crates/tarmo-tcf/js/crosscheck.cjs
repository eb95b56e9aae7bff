'use strict';
// Cross-checks tarmo-tcf against the official IAB libraries. Driven by
// crates/tarmo-tcf/tests/it.rs and benches/codec.rs; every line exchanged is
// `STRING<TAB>JSON`, JSON in tarmo's CLI form (see src/cli.rs) so that equal
// content means equal text.
//
//   node crosscheck.cjs gen-tcf COUNT SEED   official encoder -> stdout lines
//   node crosscheck.cjs gen-gpp COUNT SEED
//   node crosscheck.cjs check-tcf            stdin lines from tarmo: the official
//   node crosscheck.cjs check-gpp            decoder must agree on every field and
//                                            the official encoder on every byte
//   node crosscheck.cjs bench-tcf FILE MS    decodes/s of the official decoder

const fs = require('fs');
const { TCModel, TCString, GVL, PurposeRestriction } = require('@iabtechlabtcf/core');
const { GppModel, RangeEntry } = require('@iabgpp/cmpapi');

function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const LANGUAGES = ['EN', 'FR', 'DE', 'ES', 'IT', 'NL', 'PL', 'FI', 'SV', 'PT'];

// Random vendor ids 1..max in one of several shapes, so that both bitfield and
// range encodings (and the cases near the official choice rule) occur.
function randomIds(rand, max) {
  const int = (n) => Math.floor(rand() * n);
  const ids = new Set();
  switch (int(6)) {
    case 0:
      break;
    case 1:
      for (let i = int(8) + 1; i > 0; i--) ids.add(1 + int(max));
      break;
    case 2:
      for (let b = int(5) + 1; b > 0; b--) {
        const start = 1 + int(max);
        const len = 1 + int(40);
        for (let i = start; i < start + len && i <= max; i++) ids.add(i);
      }
      break;
    case 3: {
      const p = rand();
      for (let i = 1; i <= max; i++) if (rand() < p) ids.add(i);
      break;
    }
    case 4:
      for (let i = 1; i <= max; i++) if (rand() < 0.97) ids.add(i);
      break;
    default:
      for (let i = 1; i <= max; i += 1 + int(3)) ids.add(i);
  }
  return [...ids].sort((a, b) => a - b);
}

function randomSubset(rand, pool) {
  return pool.filter(() => rand() < 0.5);
}

function range(from, to) {
  const out = [];
  for (let i = from; i <= to; i++) out.push(i);
  return out;
}

// A vendor list where every vendor 1..max may hold every signal and every
// restriction on purposes 2..11, so the official encoder keeps what it is given.
function makeGvl(max, vendorListVersion, policyVersion, language) {
  const purposes = {};
  for (let i = 1; i <= 11; i++) purposes[i] = { id: i, name: `p${i}`, description: '', illustrations: [] };
  const vendors = {};
  for (let i = 1; i <= Math.max(max, 1); i++) {
    vendors[i] = {
      id: i, name: `v${i}`, purposes: range(1, 11), legIntPurposes: range(2, 11),
      flexiblePurposes: range(2, 11), specialPurposes: [1], features: [], specialFeatures: [],
      cookieMaxAgeSeconds: null, usesCookies: false, cookieRefresh: false, usesNonCookieAccess: false,
      deviceStorageDisclosureUrl: null, urls: [], dataDeclaration: [], dataRetention: {},
    };
  }
  return new GVL({
    gvlSpecificationVersion: 3, vendorListVersion, tcfPolicyVersion: policyVersion,
    lastUpdated: '2025-01-01T00:00:00Z', purposes,
    specialPurposes: { 1: { id: 1, name: 'sp1', description: '', illustrations: [] } }, features: {},
    specialFeatures: {}, stacks: {}, dataCategories: {}, vendors,
  }, { language });
}

const sorted = (vector) => [...vector.values()].sort((a, b) => a - b);

// Which optional segments a TC string carries, from each segment's type bits.
function tcSegments(text) {
  const present = { disclosed: false, publisher: false };
  for (const seg of text.split('.').slice(1)) {
    const c = seg.charAt(0);
    if (c >= 'I' && c <= 'P') present.disclosed = true;
    if ((c >= 'Y' && c <= 'Z') || (c >= 'a' && c <= 'f')) present.publisher = true;
  }
  return present;
}

function tcJson(m, present) {
  const restrictions = m.publisherRestrictions.getRestrictions()
    .map((r) => ({ purpose_id: r.purposeId, restriction_type: r.restrictionType, vendor_ids: m.publisherRestrictions.getVendors(r) }))
    .filter((r) => r.vendor_ids.length > 0)
    .sort((a, b) => a.purpose_id - b.purpose_id || a.restriction_type - b.restriction_type);
  return {
    version: m.version,
    created_ds: Math.round(m.created.getTime() / 100),
    last_updated_ds: Math.round(m.lastUpdated.getTime() / 100),
    cmp_id: m.cmpId,
    cmp_version: m.cmpVersion,
    consent_screen: m.consentScreen,
    consent_language: m.consentLanguage,
    vendor_list_version: m.vendorListVersion,
    policy_version: m.policyVersion,
    is_service_specific: m.isServiceSpecific,
    use_non_standard_texts: m.useNonStandardTexts,
    special_feature_optins: sorted(m.specialFeatureOptins),
    purpose_consents: sorted(m.purposeConsents),
    purpose_legitimate_interests: sorted(m.purposeLegitimateInterests),
    purpose_one_treatment: m.purposeOneTreatment,
    publisher_country_code: m.publisherCountryCode,
    vendor_consents: sorted(m.vendorConsents),
    vendor_legitimate_interests: sorted(m.vendorLegitimateInterests),
    publisher_restrictions: restrictions,
    vendors_disclosed: present.disclosed ? sorted(m.vendorsDisclosed) : null,
    publisher_consents: present.publisher ? sorted(m.publisherConsents) : null,
    publisher_legitimate_interests: present.publisher ? sorted(m.publisherLegitimateInterests) : null,
    num_custom_purposes: present.publisher ? m.numCustomPurposes : null,
    publisher_custom_consents: present.publisher ? sorted(m.publisherCustomConsents) : null,
    publisher_custom_legitimate_interests: present.publisher ? sorted(m.publisherCustomLegitimateInterests) : null,
  };
}

function maxVendor(m) {
  let max = 0;
  for (const v of [m.vendorConsents, m.vendorLegitimateInterests, m.vendorsDisclosed]) max = Math.max(max, v.maxId);
  for (const r of m.publisherRestrictions.getRestrictions()) {
    for (const id of m.publisherRestrictions.getVendors(r)) max = Math.max(max, id);
  }
  return max;
}

// The official encoder's options that yield the segments `present` asks for.
function encodeOptions(m, present) {
  if (m.isServiceSpecific) return {};
  if (!present.publisher) return { isForVendors: false };
  m.supportOOB = present.disclosed;
  return { isForVendors: true };
}

function genTcf(rand) {
  const int = (n) => Math.floor(rand() * n);
  const long = rand() < 0.4;
  const max = long ? 300 + int(1200) : 1 + int(120);
  const gvl = makeGvl(max, 1 + int(4095), 2 + int(4), LANGUAGES[int(LANGUAGES.length)]);
  const m = new TCModel(gvl);
  m.cmpId = 2 + int(4094);
  m.cmpVersion = int(4096);
  m.consentScreen = int(64);
  m.isServiceSpecific = rand() < 0.5;
  m.useNonStandardTexts = rand() < 0.5;
  m.purposeOneTreatment = rand() < 0.5;
  m.publisherCountryCode = String.fromCharCode(65 + int(26), 65 + int(26));
  m.created = new Date((16000000000 + int(2000000000)) * 100);
  m.lastUpdated = new Date(m.created.getTime() + int(100000000) * 100);
  m.specialFeatureOptins.set(randomSubset(rand, range(1, 12)));
  m.purposeConsents.set(randomSubset(rand, range(1, 24)));
  m.purposeLegitimateInterests.set(randomSubset(rand, [2, 7, 8, 9, 10, 11]));
  m.vendorConsents.set(randomIds(rand, max));
  m.vendorLegitimateInterests.set(randomIds(rand, max));
  const pairs = [];
  for (let n = int(4); n > 0; n--) pairs.push([2 + int(10), int(3)]);
  pairs.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  for (const [purpose, type] of pairs) {
    const restriction = new PurposeRestriction(purpose, type);
    for (const id of randomIds(rand, max)) m.publisherRestrictions.add(id, restriction);
  }
  m.vendorsDisclosed.set(randomIds(rand, max));
  m.publisherConsents.set(randomSubset(rand, range(1, 24)));
  m.publisherLegitimateInterests.set(randomSubset(rand, range(1, 24)));
  m.numCustomPurposes = int(64);
  m.publisherCustomConsents.set(randomSubset(rand, range(1, m.numCustomPurposes)));
  m.publisherCustomLegitimateInterests.set(randomSubset(rand, range(1, m.numCustomPurposes)));
  const options = rand() < 0.5 ? { isForVendors: true } : {};
  m.supportOOB = rand() < 0.5;
  const text = TCString.encode(m, options);
  return `${text}\t${JSON.stringify(tcJson(TCString.decode(text), tcSegments(text)))}`;
}

function checkTcf(text, expected) {
  const present = tcSegments(text);
  const m = TCString.decode(text);
  const actual = JSON.stringify(tcJson(m, present));
  if (actual !== expected) return `decoded fields differ\n  tarmo:    ${expected}\n  official: ${actual}`;
  m.gvl = makeGvl(maxVendor(m), m.vendorListVersion, m.policyVersion, m.consentLanguage);
  const again = TCString.encode(m, encodeOptions(m, present));
  if (again !== text) return `encodings differ\n  tarmo:    ${text}\n  official: ${again}`;
  return null;
}

// ---- GPP ----

const US = {
  usnat: 7, usca: 8, usva: 9, usco: 10, usut: 11, usct: 12,
};
const HAS_GPC = new Set(['usnat', 'usca', 'usco', 'usct']);
const snake = (name) => name.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toLowerCase();

const bools = (arr) => arr.map((b, i) => (b ? i + 1 : 0)).filter((i) => i > 0);
const flags = (ids, n) => range(1, n).map((i) => ids.includes(i));

function gppTcfJson(o, sectionText) {
  const present = tcSegments(sectionText);
  const restrictions = o.PublisherRestrictions
    .map((r) => ({ purpose_id: r.key, restriction_type: r.type, vendor_ids: [...r.ids].sort((a, b) => a - b) }))
    .sort((a, b) => a.purpose_id - b.purpose_id || a.restriction_type - b.restriction_type);
  return {
    version: o.Version,
    created_ds: Math.round(o.Created.getTime() / 100),
    last_updated_ds: Math.round(o.LastUpdated.getTime() / 100),
    cmp_id: o.CmpId,
    cmp_version: o.CmpVersion,
    consent_screen: o.ConsentScreen,
    consent_language: o.ConsentLanguage,
    vendor_list_version: o.VendorListVersion,
    policy_version: o.PolicyVersion,
    is_service_specific: o.IsServiceSpecific,
    use_non_standard_texts: o.UseNonStandardStacks,
    special_feature_optins: bools(o.SpecialFeatureOptins),
    purpose_consents: bools(o.PurposeConsents),
    purpose_legitimate_interests: bools(o.PurposeLegitimateInterests),
    purpose_one_treatment: o.PurposeOneTreatment,
    publisher_country_code: o.PublisherCountryCode,
    vendor_consents: o.VendorConsents,
    vendor_legitimate_interests: o.VendorLegitimateInterests,
    publisher_restrictions: restrictions,
    vendors_disclosed: present.disclosed ? o.VendorsDisclosed : null,
    publisher_consents: present.publisher ? bools(o.PublisherConsents) : null,
    publisher_legitimate_interests: present.publisher ? bools(o.PublisherLegitimateInterests) : null,
    num_custom_purposes: present.publisher ? o.NumCustomPurposes : null,
    publisher_custom_consents: present.publisher ? bools(o.PublisherCustomConsents) : null,
    publisher_custom_legitimate_interests: present.publisher ? bools(o.PublisherCustomLegitimateInterests) : null,
  };
}

function usJson(name, o, sectionText) {
  const out = {};
  for (const [key, value] of Object.entries(o)) {
    if (key === 'GpcSegmentType' || key === 'GpcSegmentIncluded' || key === 'Gpc') continue;
    out[snake(key)] = value;
  }
  if (HAS_GPC.has(name)) out.gpc = sectionText.includes('.') ? o.Gpc : null;
  return out;
}

function gppJson(text) {
  const model = new GppModel(text);
  const ids = model.getSectionIds();
  const texts = text.split('~').slice(1);
  const sections = {};
  ids.forEach((id, i) => {
    const name = [...Object.entries(US), ['tcfeuv2', 2]].find(([, v]) => v === id)?.[0];
    const o = name ? model.getSection(name) : null;
    if (name === 'tcfeuv2') sections[name] = gppTcfJson(o, texts[i]);
    else if (name) sections[name] = usJson(name, o, texts[i]);
    else sections[{ 5: 'tcfcav1', 6: 'uspv1' }[id] ?? String(id)] = texts[i];
  });
  return { version: 1, section_ids: ids, sections };
}

function setTcfSection(model, t) {
  const set = (field, value) => model.setFieldValue('tcfeuv2', field, value);
  set('CmpId', t.cmp_id);
  set('CmpVersion', t.cmp_version);
  set('ConsentScreen', t.consent_screen);
  set('ConsentLanguage', t.consent_language);
  set('VendorListVersion', t.vendor_list_version);
  set('PolicyVersion', t.policy_version);
  set('IsServiceSpecific', t.is_service_specific);
  set('UseNonStandardStacks', t.use_non_standard_texts);
  set('SpecialFeatureOptins', flags(t.special_feature_optins, 12));
  set('PurposeConsents', flags(t.purpose_consents, 24));
  set('PurposeLegitimateInterests', flags(t.purpose_legitimate_interests, 24));
  set('PurposeOneTreatment', t.purpose_one_treatment);
  set('PublisherCountryCode', t.publisher_country_code);
  set('VendorConsents', t.vendor_consents);
  set('VendorLegitimateInterests', t.vendor_legitimate_interests);
  set('PublisherRestrictions', t.publisher_restrictions.map((r) => new RangeEntry(r.purpose_id, r.restriction_type, r.vendor_ids)));
  set('VendorsDisclosed', t.vendors_disclosed ?? []);
  set('PublisherConsents', flags(t.publisher_consents ?? [], 24));
  set('PublisherLegitimateInterests', flags(t.publisher_legitimate_interests ?? [], 24));
  set('NumCustomPurposes', t.num_custom_purposes ?? 0);
  set('PublisherCustomConsents', flags(t.publisher_custom_consents ?? [], t.num_custom_purposes ?? 0));
  set('PublisherCustomLegitimateInterests', flags(t.publisher_custom_legitimate_interests ?? [], t.num_custom_purposes ?? 0));
  // Last: setting any other field stamps both dates with today.
  set('Created', new Date(t.created_ds * 100));
}

const UPPER = (key) => key.replace(/(^|_)([a-z])/g, (_, __, c) => c.toUpperCase());

function setUsSection(model, name, s) {
  for (const [key, value] of Object.entries(s)) {
    if (key === 'gpc') continue;
    model.setFieldValue(name, UPPER(key), value);
  }
  if (HAS_GPC.has(name)) {
    model.setFieldValue(name, 'GpcSegmentIncluded', s.gpc !== null);
    if (s.gpc !== null) model.setFieldValue(name, 'Gpc', s.gpc);
  }
}

// Builds a model from tarmo's JSON form through the official setters.
function gppFromJson(json) {
  const model = new GppModel();
  for (const [name, value] of Object.entries(json.sections)) {
    if (name === 'tcfeuv2') setTcfSection(model, value);
    else if (US[name]) setUsSection(model, name, value);
    else model.decodeSection(name, value);
  }
  return model;
}

function randomUs(rand, name) {
  const int = (n) => Math.floor(rand() * n);
  const lists = {
    usnat: [16, 3], usca: [9, 2], usva: [8, 1], usco: [7, 1], usut: [8, 1], usct: [8, 3],
  }[name];
  const probe = new GppModel();
  probe.setFieldValue(name, 'MspaCoveredTransaction', 1);
  const template = probe.getSection(name);
  const s = {};
  for (const key of Object.keys(template)) {
    if (key === 'GpcSegmentType' || key === 'GpcSegmentIncluded' || key === 'Gpc') continue;
    const k = snake(key);
    if (k === 'version') s[k] = name === 'usnat' && rand() < 0.3 ? 1 : 1 + (name === 'usnat' ? 1 : 0);
    else if (k === 'sensitive_data_processing') s[k] = range(1, lists[0]).map(() => int(3));
    else if (k === 'known_child_sensitive_data_consents') s[k] = lists[1] === 1 ? int(3) : range(1, lists[1]).map(() => int(3));
    else if (k === 'mspa_covered_transaction') s[k] = 1 + int(2);
    else s[k] = int(3);
  }
  if (HAS_GPC.has(name)) s.gpc = rand() < 0.3 ? null : rand() < 0.5;
  return s;
}

function randomGppTcf(rand) {
  const int = (n) => Math.floor(rand() * n);
  const max = rand() < 0.4 ? 300 + int(1200) : 1 + int(120);
  const n = int(64);
  const pairs = [];
  for (let k = int(4); k > 0; k--) pairs.push([2 + int(10), int(3)]);
  pairs.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const ds = 16000000000 + int(2000000000);
  return {
    created_ds: ds, last_updated_ds: ds, cmp_id: 2 + int(4094), cmp_version: int(4096),
    consent_screen: int(64), consent_language: LANGUAGES[int(LANGUAGES.length)],
    vendor_list_version: 1 + int(4095), policy_version: 2 + int(4), is_service_specific: true,
    use_non_standard_texts: rand() < 0.5,
    special_feature_optins: randomSubset(rand, range(1, 12)),
    purpose_consents: randomSubset(rand, range(1, 24)),
    purpose_legitimate_interests: randomSubset(rand, [2, 7, 8, 9, 10, 11]),
    purpose_one_treatment: rand() < 0.5,
    publisher_country_code: String.fromCharCode(65 + int(26), 65 + int(26)),
    vendor_consents: randomIds(rand, max),
    vendor_legitimate_interests: randomIds(rand, max),
    publisher_restrictions: pairs
      .filter(([p, t], i) => i === 0 || pairs[i - 1][0] !== p || pairs[i - 1][1] !== t)
      .map(([p, t]) => ({ purpose_id: p, restriction_type: t, vendor_ids: randomIds(rand, max) })),
    vendors_disclosed: randomIds(rand, max),
    publisher_consents: randomSubset(rand, range(1, 24)),
    publisher_legitimate_interests: randomSubset(rand, range(1, 24)),
    num_custom_purposes: n,
    publisher_custom_consents: randomSubset(rand, range(1, n)),
    publisher_custom_legitimate_interests: randomSubset(rand, range(1, n)),
  };
}

function genGpp(rand) {
  const sections = {};
  if (rand() < 0.6) sections.tcfeuv2 = randomGppTcf(rand);
  if (rand() < 0.3) sections.uspv1 = ['1YNN', '1NYY', '1---', '1YYN'][Math.floor(rand() * 4)];
  for (const name of Object.keys(US)) if (rand() < 0.4) sections[name] = randomUs(rand, name);
  const text = gppFromJson({ sections }).encode();
  return `${text}\t${JSON.stringify(gppJson(text))}`;
}

function checkGpp(text, expected) {
  const actual = JSON.stringify(gppJson(text));
  if (actual !== expected) return `decoded fields differ\n  tarmo:    ${expected}\n  official: ${actual}`;
  const again = gppFromJson(JSON.parse(expected)).encode();
  if (again !== text) return `encodings differ\n  tarmo:    ${text}\n  official: ${again}`;
  return null;
}

function check(fn) {
  const lines = fs.readFileSync(0, 'utf8').split('\n').filter((l) => l.length > 0);
  let failed = 0;
  lines.forEach((line, i) => {
    const [text, json] = line.split('\t');
    let problem;
    try {
      problem = fn(text, json);
    } catch (e) {
      problem = `official library threw: ${e && e.message}`;
    }
    if (problem) {
      failed++;
      if (failed <= 5) console.error(`case ${i + 1}: ${problem}`);
    }
  });
  console.log(`${lines.length - failed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

function benchTcf(file, ms) {
  const strings = fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.length > 0);
  let n = 0;
  const start = process.hrtime.bigint();
  const deadline = start + BigInt(ms) * 1000000n;
  let now = start;
  while (now < deadline) {
    for (const s of strings) TCString.decode(s);
    n += strings.length;
    now = process.hrtime.bigint();
  }
  const seconds = Number(now - start) / 1e9;
  console.log(JSON.stringify({ decodes: n, seconds, per_second: n / seconds }));
}

const [command, a, b] = process.argv.slice(2);
switch (command) {
  case 'gen-tcf':
  case 'gen-gpp': {
    const rand = rng(Number(b ?? 1));
    const gen = command === 'gen-tcf' ? genTcf : genGpp;
    const out = [];
    for (let i = 0; i < Number(a); i++) out.push(gen(rand));
    process.stdout.write(out.join('\n') + '\n');
    break;
  }
  case 'check-tcf':
    check(checkTcf);
    break;
  case 'check-gpp':
    check(checkGpp);
    break;
  case 'bench-tcf':
    benchTcf(a, Number(b ?? 2000));
    break;
  default:
    console.error('usage: node crosscheck.cjs gen-tcf|gen-gpp COUNT SEED | check-tcf | check-gpp | bench-tcf FILE MS');
    process.exit(2);
}
