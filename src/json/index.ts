// json: JSON from outside (request bodies, tar parts, server answers, persona snapshots), parsed with a
// bound on nesting. V8's JSON.parse is iterative, so deep nesting does not overflow the stack, but it is
// slow: 16 MB of `[` took 3.6 s of one thread here, time every other request waits. carryon's documents
// nest a few levels, so a cheap scan refuses anything deeper before JSON.parse runs.
// Must not know: HTTP, files, what the document means.
import { CarryonError } from '../errors/index.js';

/** Deeper than any document carryon writes (a persona delta nests 4 levels, a merge report 5). */
export const MAX_JSON_DEPTH = 32;

/** Parse `text` (bytes or a string) as JSON; BAD_REQUEST naming `what` when it is not JSON or nests too deep. */
export function parseJson(text: Uint8Array | string, what: string, maxDepth = MAX_JSON_DEPTH): unknown {
  const s = typeof text === 'string' ? text : Buffer.from(text.buffer, text.byteOffset, text.byteLength).toString('utf8');
  let depth = 0;
  let inString = false;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++; // a backslash escapes the next character
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > maxDepth) throw new CarryonError('BAD_REQUEST', `${what} nests deeper than ${maxDepth} levels`, { maxDepth });
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
  try {
    return JSON.parse(s);
  } catch {
    throw new CarryonError('BAD_REQUEST', `${what} is not valid JSON`);
  }
}
