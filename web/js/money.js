// money: rupees for people, paise for the API.
//
// Amounts travel as integers in paise (100 = ₹1) and are shown as rupees
// with Indian digit grouping: 10000050 -> "₹1,00,000.50", 50000 -> "₹500"
// (paise only when not zero, as the server writes them in notifications).
// Parsing never goes through floating point: "250.5" is split at the dot
// and becomes 25050 exactly.
//
// Must never: round an amount, accept an amount with more than two
// decimals, or produce NaN/"undefined" for any input.

const RUPEE = "\u20B9";

// Largest amount the parser accepts, in rupees digits (the API's own limits
// are lower and it says so): 10 digits keeps paise a safe integer.
const RUPEE_DIGITS_MAX = 10;

/** Groups the decimal digits of a non-negative integer the Indian way:
 *  the last three, then pairs ("10000000" -> "1,00,00,000"). */
function groupIndian(digits) {
    if (digits.length <= 3) return digits;
    const head = digits.slice(0, -3);
    const tail = digits.slice(-3);
    return head.replace(/\B(?=(\d{2})+$)/g, ",") + "," + tail;
}

/** Formats 'paise' (a safe integer, any sign) as rupees: "₹1,00,000.50",
 *  "-₹1.50", "₹0". Anything else is shown as "—" rather than a wrong
 *  number. */
export function formatPaise(paise) {
    if (typeof paise !== "number" || !Number.isSafeInteger(paise)) return "—";
    const sign = paise < 0 ? "-" : "";
    const magnitude = Math.abs(paise);
    const rupees = Math.floor(magnitude / 100);
    const rest = magnitude % 100;
    const fraction = rest === 0 ? "" : "." + String(rest).padStart(2, "0");
    return sign + RUPEE + groupIndian(String(rupees)) + fraction;
}

/** Parses what a person typed as a rupee amount: "2000", "2,000",
 *  "₹1,00,000.50", "99.9", ".50". Returns {ok: true, paise} or
 *  {ok: false, message} with a message fit to show. Only positive amounts
 *  are accepted; the API checks its own limits and explains them. */
export function parseRupees(text) {
    const input = String(text ?? "")
        .trim()
        .replace(/^\u20B9\s*/, "");
    const bad = {
        ok: false,
        message: "Enter an amount in rupees, for example 1,000 or 250.50 (at most two decimals).",
    };
    if (input.length > 24) return bad;
    // Digits with commas between them (any grouping), then up to 2 decimals.
    const match = /^(\d+(?:,\d+)*)?(?:\.(\d{1,2}))?$/.exec(input);
    if (input === "" || match === null || (match[1] === undefined && match[2] === undefined)) return bad;
    const rupeeDigits = (match[1] ?? "").replace(/,/g, "").replace(/^0+(?=\d)/, "");
    if (rupeeDigits.length > RUPEE_DIGITS_MAX) return bad;
    const paiseDigits = (match[2] ?? "").padEnd(2, "0");
    const paise = Number(rupeeDigits || "0") * 100 + Number(paiseDigits);
    if (!Number.isSafeInteger(paise)) return bad;
    if (paise <= 0) return { ok: false, message: "Enter an amount greater than " + RUPEE + "0." };
    return { ok: true, paise };
}
