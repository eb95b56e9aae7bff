#!/usr/bin/env python3
"""Make the built-in dictionary that event bodies are packed with
(crates/tarmo-store/src/crypto/events-v1.dict; see packed.rs).

It writes N synthetic Segment messages (identify, track, page, screen,
group) in the shapes the SDKs send, with made-up values: random ids,
addresses only at the reserved example domains (RFC 2606), phone numbers
in the UK's drama range. No message of any installation goes in, so the
dictionary holds nothing about anyone and never has to be erased.

    python3 scripts/events-dict.py 20000 /tmp/events-corpus
    zstd --train -3 --maxdict=16384 -r /tmp/events-corpus -o events.dict

The dictionary in the tree came from these two commands (zstd 1.5.4). A new
dictionary needs a new mark in packed.rs: bodies packed with the old one
must stay readable.
"""
import json, random, uuid, sys, os
rnd = random.Random(20261206)
def uid(): return str(uuid.UUID(int=rnd.getrandbits(128), version=4))
def ts(): return "2026-%02d-%02dT%02d:%02d:%02d.%03dZ" % (rnd.randint(1,12), rnd.randint(1,28), rnd.randint(0,23), rnd.randint(0,59), rnd.randint(0,59), rnd.randint(0,999))
words = "avocado banana coffee shoes jacket lamp chair sofa phone cable socks tea bread cheese wine book game watch bike tent".split()
cats = "produce dairy bakery electronics apparel home garden sports books toys beauty".split()
libs = [("analytics.js","5.2.0"),("analytics.js","npm:next-1.76.0"),("analytics-ios","4.1.8"),("analytics-android","4.11.3"),("analytics-node","2.1.2"),("analytics-python","2.3.3"),("RudderLabs JavaScript SDK","3.0.0")]
locales = "fi-FI en-US en-GB sv-SE de-DE fr-FR nl-NL es-ES".split()
uas = ["Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/%d.0.0.0 Safari/537.36",
       "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.%d Safari/605.1.15",
       "Mozilla/5.0 (iPhone; CPU iPhone OS 17_%d like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
       "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/%d.0.0.0 Mobile Safari/537.36"]
events = ["Product Viewed","Product Added","Product Removed","Cart Viewed","Checkout Started","Order Completed","Products Searched","Product List Viewed","Signed Up","Signed In","Email Opened","Email Link Clicked","Application Opened","Coupon Applied","Promotion Viewed"]
def ident():
    k = rnd.random()
    out = {}
    if k < 0.8: out["userId"] = rnd.choice(["user-%d" % rnd.randint(1, 10**7), uid(), "%d" % rnd.randint(1, 10**9), "cus_%x" % rnd.getrandbits(48)])
    if k > 0.3: out["anonymousId"] = rnd.choice([uid(), "anon-%d" % rnd.randint(1,10**7)])
    return out
def ctx(web):
    lib = rnd.choice(libs)
    c = {"library": {"name": lib[0], "version": lib[1]}}
    if rnd.random() < 0.6: c["locale"] = rnd.choice(locales)
    if web and rnd.random() < 0.7:
        p = "/%s/%s" % (rnd.choice(["p","products","c","blog"]), rnd.choice(words))
        c["page"] = {"path": p}
        if rnd.random() < 0.5:
            c["page"].update({"url": "https://shop.example" + p, "title": rnd.choice(words).title(), "referrer": rnd.choice(["", "https://www.google.com/", "https://shop.example/"])})
    if rnd.random() < 0.4: c["userAgent"] = rnd.choice(uas) % rnd.randint(1, 130)
    if rnd.random() < 0.3: c["ip"] = "%d.%d.%d.%d" % tuple(rnd.randint(1,254) for _ in range(4))
    if rnd.random() < 0.2: c["timezone"] = rnd.choice(["Europe/Helsinki","Europe/Berlin","America/New_York","Europe/Stockholm"])
    return c
def props(ev):
    p = {}
    if ev.startswith("Product") or ev in ("Order Completed","Checkout Started"):
        p["product_id"] = rnd.choice(["sku-%d" % rnd.randint(1,99999), "%d" % rnd.randint(1,99999), "P%05d" % rnd.randint(1,99999)])
        p["price"] = round(rnd.uniform(0.5, 300), rnd.choice([0,1,2]))
        p["currency"] = rnd.choice(["EUR","EUR","USD","SEK","GBP"])
        if rnd.random() < 0.6: p["category"] = rnd.choice(cats)
        if rnd.random() < 0.5: p["name"] = rnd.choice(words).title()
        if rnd.random() < 0.3: p["quantity"] = rnd.randint(1,5)
    if ev == "Order Completed":
        p["order_id"] = "%d" % rnd.randint(1, 10**8); p["total"] = round(rnd.uniform(1, 900), 2)
    if ev == "Products Searched": p = {"query": rnd.choice(words)}
    return p
def msg():
    r = rnd.random()
    m = {"messageId": rnd.choice(["msg-%d" % rnd.randint(1,10**8), uid(), "ajs-next-%d-%s" % (rnd.randint(1.7e12,1.8e12), uid())]), "timestamp": ts()}
    m.update(ident())
    if r < 0.12:
        m["type"] = "identify"
        t = {}
        for k in rnd.sample(["email","firstName","lastName","plan","phone","city","country","createdAt"], rnd.randint(1,4)):
            t[k] = {"email": "%s%d@%s" % (rnd.choice(words), rnd.randint(1,99999), rnd.choice(["example.com","example.org","mail.example"])),
                    "firstName": rnd.choice(["Aino","Eero","Anna","Jonas","Marie","Lucas"]), "lastName": rnd.choice(["Virtanen","Korhonen","Schmidt","Dubois"]),
                    "plan": rnd.choice(["gold","silver","free","pro"]), "phone": "+447700900%03d" % rnd.randint(0,999),
                    "city": rnd.choice(["Helsinki","Tampere","Berlin","Paris"]), "country": rnd.choice(["FI","DE","FR","SE"]), "createdAt": ts()}[k]
        m["traits"] = t
        m["context"] = ctx(True)
    elif r < 0.22:
        m["type"] = "page"; m["name"] = rnd.choice(words).title(); m["context"] = ctx(True)
        m["properties"] = {"path": "/" + rnd.choice(words)}
    elif r < 0.25:
        m["type"] = "screen"; m["name"] = rnd.choice(["Home","Cart","Product","Settings"]); m["context"] = ctx(False)
    elif r < 0.26:
        m["type"] = "group"; m["groupId"] = "g-%d" % rnd.randint(1,9999); m["traits"] = {"name": rnd.choice(words).title(), "plan": "enterprise"}; m["context"] = ctx(False)
    else:
        ev = rnd.choice(events); m["type"] = "track"; m["event"] = ev; m["properties"] = props(ev); m["context"] = ctx(rnd.random() < 0.7)
    if rnd.random() < 0.2: m["sentAt"] = ts()
    return m
n, out = int(sys.argv[1]), sys.argv[2]
os.makedirs(out, exist_ok=True)
for i in range(n):
    # Keys sorted, no spaces: as the server serialises a message.
    with open(os.path.join(out, "%05d.json" % i), "w") as f:
        f.write(json.dumps(msg(), sort_keys=True, separators=(",", ":")))
