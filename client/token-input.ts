// How `carryon login` gets the user's token without putting it on the command line (where `ps` and
// shell history show it): --token-file FILE, $CARRYON_TOKEN, or a prompt that does not echo. --token
// still works for old scripts. Must not know: the server, the laptop state.
import { readFileSync, statSync } from 'node:fs';
import type tty from 'node:tty';
import { CarryonError } from '../src/index.js';

export const TOKEN_ENV = 'CARRYON_TOKEN';

export interface TokenSources {
  token?: string;
  tokenFile?: string;
  env: NodeJS.ProcessEnv;
  stdin: NodeJS.ReadStream;
  /** Where the prompt and warnings go (stderr: stdout carries --json). */
  out: NodeJS.WritableStream;
}

/** The token, from the first source given: --token, --token-file, $CARRYON_TOKEN, else a hidden prompt on a terminal. */
export async function readToken(s: TokenSources): Promise<{ token: string; from: 'option' | 'file' | 'env' | 'prompt' }> {
  if (s.token !== undefined && s.tokenFile !== undefined) throw new CarryonError('INVALID_ARGUMENT', 'give the token one way: --token-file FILE or --token TOKEN, not both');
  if (s.token !== undefined) return { token: nonEmpty(s.token.trim(), '--token'), from: 'option' };
  if (s.tokenFile !== undefined) return { token: nonEmpty(readTokenFile(s.tokenFile, s.out), `the first line of ${s.tokenFile}`), from: 'file' };
  const env = s.env[TOKEN_ENV];
  if (env !== undefined && env.trim() !== '') return { token: env.trim(), from: 'env' };
  if (s.stdin.isTTY) return { token: nonEmpty((await promptHidden(s.stdin as tty.ReadStream, s.out, 'token (from carryon-server user add; not shown): ')).trim(), 'the token typed'), from: 'prompt' };
  throw new CarryonError('INVALID_ARGUMENT',
    `no token given, and stdin is not a terminal to ask for one. Give it one of three ways: --token-file FILE (its first line; \`-\` reads stdin), ` +
    `the ${TOKEN_ENV} environment variable, or run \`carryon login URL\` on a terminal and type it (not shown). ` +
    `(--token TOKEN also works but shows the token to other users in \`ps\` and keeps it in shell history.)`);
}

function nonEmpty(token: string, what: string): string {
  if (token === '') throw new CarryonError('INVALID_ARGUMENT', `${what} is empty: expected the token from \`carryon-server user add\``);
  if (/\s/.test(token)) throw new CarryonError('INVALID_ARGUMENT', `${what} holds white space: expected one token from \`carryon-server user add\``);
  return token;
}

/** The first line of FILE (or of stdin for `-`), trimmed; warns when others may read the file. */
function readTokenFile(file: string, out: NodeJS.WritableStream): string {
  let text: string;
  try {
    text = readFileSync(file === '-' ? 0 : file, 'utf8');
    if (file !== '-') {
      const mode = statSync(file).mode & 0o777;
      if (mode & 0o044) out.write(`carryon: warning: ${file} is readable by other users (mode ${mode.toString(8).padStart(4, '0')}): run \`chmod 600 ${file}\`, and think of the token as seen\n`);
    }
  } catch (err) {
    throw new CarryonError('INVALID_ARGUMENT', `cannot read the token file ${file}: ${(err as Error).message}`, { file });
  }
  return (text.split(/\r?\n/, 1)[0] ?? '').trim();
}

/** Ask on the terminal with echo off (raw mode): Enter ends, Backspace and Ctrl-U edit, Ctrl-C aborts. */
export function promptHidden(stdin: tty.ReadStream, out: NodeJS.WritableStream, question: string, what = 'token'): Promise<string> {
  // Echo off before the question shows: whatever is typed after it is never shown.
  stdin.setRawMode(true);
  out.write(question);
  return new Promise((resolve, reject) => {
    let typed = '';
    const finish = (err?: CarryonError): void => {
      stdin.off('data', onData);
      stdin.setRawMode(false);
      stdin.pause();
      out.write('\n');
      if (err) reject(err);
      else resolve(typed);
    };
    const onData = (chunk: string): void => {
      for (const ch of chunk) {
        if (ch === '\r' || ch === '\n') return finish();
        if (ch === '\u0003') return finish(new CarryonError('ABORTED', `interrupted at the ${what} prompt`));
        if (ch === '\u0004') return typed === '' ? finish(new CarryonError('ABORTED', `no ${what} typed (end of input)`)) : finish();
        if (ch === '\u007f' || ch === '\b') typed = typed.slice(0, -1);
        else if (ch === '\u0015') typed = '';
        else if (ch >= ' ') typed += ch;
      }
    };
    stdin.setEncoding('utf8');
    stdin.on('data', onData);
    stdin.resume();
  });
}
