// web_unit.mjs: the web app's pure modules under node's test runner:
// rupee formatting and parsing (web/js/money.js) and the event-stream
// parser of the notification stream (web/js/sse.js).
//
//   node web_unit.mjs WEB_DIR
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { pathToFileURL } from "node:url";

const webDir = process.argv[2];
if (!webDir) throw new Error("usage: node web_unit.mjs WEB_DIR");
const load = (file) => import(pathToFileURL(path.join(webDir, "js", file)).href);
const { formatPaise, parseRupees } = await load("money.js");
const { EventStreamParser } = await load("sse.js");

test("paise are shown as rupees with Indian grouping", () => {
    const cases = [
        [0, "₹0"],
        [5, "₹0.05"],
        [50, "₹0.50"],
        [100, "₹1"],
        [50000, "₹500"],
        [50050, "₹500.50"],
        [100000, "₹1,000"],
        [10000050, "₹1,00,000.50"],
        [1000000000, "₹1,00,00,000"],
        [-150, "-₹1.50"],
    ];
    for (const [paise, text] of cases) assert.equal(formatPaise(paise), text, String(paise));
});

test("what is not a whole number of paise is never shown as a number", () => {
    for (const bad of [1.5, NaN, Infinity, undefined, null, "500", 2 ** 60])
        assert.equal(formatPaise(bad), "—", String(bad));
});

test("typed rupees become exact paise", () => {
    const cases = [
        ["2000", 200000],
        ["2,000", 200000],
        [" ₹1,00,000.50 ", 10000050],
        ["₹ 99.9", 9990],
        ["0.29", 29], // 0.29 * 100 is 28.999999999999996 in floating point
        ["1.10", 110],
        [".5", 50],
        ["007", 700],
    ];
    for (const [text, paise] of cases) assert.deepEqual(parseRupees(text), { ok: true, paise }, text);
});

test("anything else is refused with a message, never NaN", () => {
    for (const text of [
        "",
        " ",
        "abc",
        "1.234",
        "1,,000",
        ",100",
        "100,",
        "-5",
        "1e3",
        "0x10",
        "1.",
        "12345678901",
        "1".repeat(40) + "x",
        null,
        undefined,
    ]) {
        const r = parseRupees(text);
        assert.equal(r.ok, false, String(text));
        assert.match(r.message, /^Enter an amount/, String(text));
    }
    assert.deepEqual(parseRupees("0.00"), { ok: false, message: "Enter an amount greater than ₹0." });
});

test("the event stream parser keeps events whole across chunks", () => {
    const events = [];
    const retries = [];
    const parser = new EventStreamParser(
        (e) => events.push(e),
        (ms) => retries.push(ms),
    );
    const stream =
        'retry: 2000\n\n: keep-alive\n\nevent: notification\nid: evt_1\ndata: {"message":"Your payment of ₹500 for Order #ord_1 is successful."}\n\n' +
        "event: notification\r\nid: evt_2\r\ndata: line one\r\ndata: line two\r\n\r\n" +
        "data:no-space\r\revent: notification\ndata: last\n\n";
    // Every split point, including inside "\r\n" and inside "₹".
    for (let cut = 0; cut <= stream.length; cut++) {
        events.length = 0;
        retries.length = 0;
        parser.push(stream.slice(0, cut));
        parser.push(stream.slice(cut));
        assert.deepEqual(retries, [2000], `cut ${cut}`);
        assert.deepEqual(
            events,
            [
                {
                    type: "notification",
                    id: "evt_1",
                    data: '{"message":"Your payment of ₹500 for Order #ord_1 is successful."}',
                },
                { type: "notification", id: "evt_2", data: "line one\nline two" },
                { type: "message", id: "evt_2", data: "no-space" },
                { type: "notification", id: "evt_2", data: "last" },
            ],
            `cut ${cut}`,
        );
    }
});
