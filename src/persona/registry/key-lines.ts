// The key lines of .reg text by a plain line scan, for callers that must look at every key of a large
// registry cheaply (the server's registry scope) without building a Registry.
/** A `[path]` or `[-path]` line of .reg text: its line number, the path, and how many value lines follow it. */
export interface RegKeyLine {
  line: number;
  path: string;
  values: number;
}

/**
 * The key lines of .reg text that already parsed, by a line scan: in a .reg file a line whose first
 * non-blank character is `[` is always a key line (values start with `"` or `@`, hex continuations
 * with blanks and a digit, comments with `;`). Lines end as the parser ends them: CRLF, LF or a lone
 * CR (a text with CR line ends must not hide its keys from this scan). Far cheaper than building a
 * Registry of 100,000 keys; the fuzz target for .reg files (scripts/lib/fuzz/targets/persona.ts) checks
 * that it finds exactly the keys decodeRegFile finds, in order.
 */
export function regKeyLines(text: string): RegKeyLine[] {
  const out: RegKeyLine[] = [];
  forEachRegKeyLine(text, (k) => {
    out.push(k);
  });
  return out;
}

/**
 * regKeyLines without the list: `fn` gets each key line (with its value count) in order, and may
 * return true to stop. For a scan of a large registry that keeps nothing (100,000 keys: ~15 MB less).
 */
export function forEachRegKeyLine(text: string, fn: (k: RegKeyLine) => boolean | void): void {
  let cur: RegKeyLine | null = null;
  let line = 0;
  let at = 0;
  const n = text.length;
  while (at <= n) {
    let end = at;
    while (end < n && text.charCodeAt(end) !== 0x0a && text.charCodeAt(end) !== 0x0d) end++;
    line++;
    let i = at;
    while (i < end && (text.charCodeAt(i) === 0x20 || text.charCodeAt(i) === 0x09)) i++;
    const c = i < end ? text.charCodeAt(i) : -1;
    if (c === 0x5b) {
      if (cur && fn(cur) === true) return;
      const close = text.lastIndexOf(']', end - 1);
      const raw = text.slice(i + 1, close > i ? close : end);
      cur = { line, path: raw.startsWith('-') ? raw.slice(1) : raw, values: 0 };
    } else if ((c === 0x22 || c === 0x40) && cur) {
      cur.values++;
    }
    if (end >= n) break;
    at = end + (text.charCodeAt(end) === 0x0d && text.charCodeAt(end + 1) === 0x0a ? 2 : 1);
  }
  if (cur) fn(cur);
}
