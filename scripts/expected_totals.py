#!/usr/bin/env python3
"""Expected totals of an invoice API's feed, computed independently of the pipeline.

Reads every record of the cursor-paginated feed (Bearer token from INVOICE_API_TOKEN), checks each with
Python's own JSON parser, exact decimals and the rules of docs/validation.md that the reference API's
malformed records break (missing field, wrong type, zero quantity, negative value, discount above gross,
impossible or invalid date, no item, bad UTF-8), and writes {records, invalid, invoices, net, lines,
line_total} as JSON. Used by scripts/demo.sh and scripts/check-image.sh as the oracle the stores are
compared with.

Usage: expected_totals.py FEED_URL OUTPUT_JSON
"""
import datetime, json, os, sys, urllib.request
from decimal import Decimal, getcontext
getcontext().prec = 200
url, cursor, records = sys.argv[1], "", []
while True:
    req = urllib.request.Request(f"{url}?limit=1000" + (f"&cursor={cursor}" if cursor else ""),
                                 headers={"Authorization": "Bearer " + os.environ["INVOICE_API_TOKEN"]})
    page = json.loads(urllib.request.urlopen(req).read().decode("utf-8", "surrogateescape"),
                      parse_float=Decimal, parse_int=Decimal)
    records += page["items"]
    cursor = page["next_cursor"]
    if not page["has_more"]:
        break
def texts(v):
    if isinstance(v, str):
        yield v
    elif isinstance(v, (list, dict)):
        for x in (v.values() if isinstance(v, dict) else v):
            yield from texts(x)
def lines(r):
    """The line totals of a valid record, or None."""
    try:
        for t in texts(r):
            t.encode("utf-8")  # bytes that were not UTF-8 (decoded as surrogates) fail here
        if not all(isinstance(r[k], Decimal) for k in ("NFeID", "NFeNumber", "Discount")):
            return None
        datetime.datetime.fromisoformat(r["CreateDate"]), datetime.datetime.fromisoformat(r["EmissionDate"])
        items = r["ItemList"]
        if not items or not all(isinstance(i["Value"], Decimal) and isinstance(i["Quantity"], Decimal)
                                and i["Value"] >= 0 and i["Quantity"] > 0 for i in items):
            return None
        totals = [i["Value"] * i["Quantity"] for i in items]
        return totals if 0 <= r["Discount"] <= sum(totals) else None
    except (KeyError, TypeError, ValueError, UnicodeEncodeError):
        return None
valid = {int(r["NFeID"]): (r, t) for r in records if (t := lines(r)) is not None}
e = {
    "records": len(records), "invalid": len(records) - len(valid), "invoices": len(valid),
    "net": format(sum((sum(t, Decimal(0)) - r["Discount"] for r, t in valid.values()), Decimal(0)), "f"),
    "lines": sum(len(t) for _, t in valid.values()),
    "line_total": format(sum((sum(t, Decimal(0)) for _, t in valid.values()), Decimal(0)), "f"),
}
json.dump(e, open(sys.argv[2], "w"))
print(f"{e['records']:,} records: {e['invoices']:,} valid invoices with {e['lines']:,} lines, "
      f"net {Decimal(e['net']):,f}; {e['invalid']:,} malformed")
