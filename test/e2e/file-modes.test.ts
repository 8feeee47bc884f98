// File modes (issue 9): under the common umask 022 the data folder and the laptop home, and everything
// in them, are this user's alone: folders 0700, files 0600 (a checked-in disk 0400). The persona's own
// profile files keep the modes they travel with, inside a 0700 folder.
import { spawnSync } from 'node:child_process';
import { lstatSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Laptop, qemuWrite, removeTmp, TestServer, tmpDir } from './harness.js';

/** Every path under `root` whose mode lets anyone but the owner in, with its mode. */
function openToOthers(root: string, skip: (p: string) => boolean = () => false): string[] {
  const out: string[] = [];
  const walk = (p: string): void => {
    if (skip(p)) return;
    const st = lstatSync(p);
    if (st.isSymbolicLink()) return;
    if ((st.mode & 0o077) !== 0) out.push(`${path.relative(root, p) || '.'} ${(st.mode & 0o777).toString(8)}`);
    if (st.isDirectory()) for (const n of readdirSync(p)) walk(path.join(p, n));
  };
  walk(root);
  return out;
}

describe('file modes under umask 022', () => {
  const dir = tmpDir('modes');
  const server = new TestServer(dir);
  const laptop = new Laptop(path.join(dir, 'home'));
  const previous = process.umask(0o022); // what the CLIs inherit, as from a login shell

  beforeAll(async () => {
    spawnSync('truncate', ['-s', '8M', path.join(dir, 'img.raw')]);
    qemuWrite(path.join(dir, 'img.raw'), [[0x5a, 0, 1 << 20]]);
    await server.init();
    const token = await server.addUser('alice');
    writeFileSync(path.join(dir, 'token'), `${token}\n`, { mode: 0o600 });
    expect((await server.admin(['image', 'publish', 'img', path.join(dir, 'img.raw')])).code).toBe(0);
    expect((await server.admin(['desktop', 'create', 'desk', '--user', 'alice', '--image', 'img'])).code).toBe(0);
    await server.start();
    expect((await laptop.cli(['login', server.url, '--token-file', path.join(dir, 'token')])).code).toBe(0);
    expect((await laptop.cli(['checkout', 'desk'])).code).toBe(0);
    qemuWrite(path.join(laptop.home, 'desktops', 'desk', 'disk.raw'), [[0xa5, 2 << 20, 1 << 20]]);
    const ci = await laptop.cli(['checkin', 'desk']);
    expect(ci.code, ci.stderr).toBe(0);
  }, 120_000);

  afterAll(async () => {
    process.umask(previous);
    await server.stop();
    removeTmp(dir);
  });

  it('the data folder: 0700 folders, 0600 files', () => {
    expect(lstatSync(server.data).mode & 0o777).toBe(0o700);
    expect(openToOthers(server.data)).toEqual([]);
    expect(lstatSync(path.join(server.data, 'carryon.db')).mode & 0o777).toBe(0o600);
  });

  it('the laptop home: 0700 folders, 0600 files, the checked-in disk 0400; profile files keep their own modes inside a 0700 folder', () => {
    expect(lstatSync(laptop.home).mode & 0o777).toBe(0o700);
    const profile = path.join(laptop.home, 'desktops', 'desk', 'persona', 'profile');
    expect(openToOthers(laptop.home, (p) => p.startsWith(`${profile}/`))).toEqual([]);
    expect(lstatSync(path.join(laptop.home, 'desktops', 'desk', 'disk.raw')).mode & 0o777).toBe(0o400);
    expect(lstatSync(path.join(laptop.home, 'state.db')).mode & 0o777).toBe(0o600);
  });
});
