// The rules of the wire that need no network: which hosts count as this machine for plain http://, the
// --insecure-http choice kept in the laptop home and honoured by later commands, and how the server
// reads the client's address through trusted reverse proxies (X-Forwarded-For).
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ApiClient } from '../../client/api-client.js';
import { LocalState } from '../../client/state.js';
import { checkTransport, isLoopbackHost, systemTrust } from '../../client/tls.js';
import { ProxyTrust } from '../../server/client-address.js';
import { CarryonError } from '../../src/index.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'carryon-transport-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function codeOf(f: () => unknown): string | null {
  try {
    f();
    return null;
  } catch (err) {
    return err instanceof CarryonError ? err.code : 'NOT_A_CARRYON_ERROR';
  }
}

describe('plain http:// only to this machine', () => {
  it.each(['localhost', 'LOCALHOST', '127.0.0.1', '127.255.0.9', '[::1]', '[::ffff:7f00:1]'])('%s is loopback', (h) => {
    expect(isLoopbackHost(h)).toBe(true);
  });

  it.each(['10.255.255.1', '192.168.1.10', '128.0.0.1', '[::2]', '[fe80::1]', 'example.org', 'localhost.example.org', '0.0.0.0'])('%s is not', (h) => {
    expect(isLoopbackHost(h)).toBe(false);
  });

  it('refuses plain http:// elsewhere with INSECURE_HTTP unless chosen; https:// always passes', () => {
    expect(codeOf(() => checkTransport(new URL('http://10.0.0.5:7480'), false))).toBe('INSECURE_HTTP');
    expect(codeOf(() => checkTransport(new URL('http://10.0.0.5:7480'), true))).toBeNull();
    expect(codeOf(() => checkTransport(new URL('http://127.0.0.1:7480'), false))).toBeNull();
    expect(codeOf(() => checkTransport(new URL('http://[::1]:7480'), false))).toBeNull();
    expect(codeOf(() => checkTransport(new URL('https://10.0.0.5:7480'), false))).toBeNull();
    // URL parsing normalizes other spellings of a loopback address first.
    expect(codeOf(() => checkTransport(new URL('http://2130706433:7480'), false))).toBeNull();
  });

  it('the choice is kept in the home, and a later command (any ApiClient made from the login) honours it', async () => {
    const state = new LocalState(path.join(dir, 'home'));
    try {
      state.saveLogin({ url: 'http://10.0.0.5:7480', token: 'cod_x', deviceName: 'pc', user: 'u', ca: null, insecureHttp: true });
      const l = state.login();
      expect(l.insecureHttp).toBe(true);
      expect(l.ca).toBeNull();
      new ApiClient(l).close();
      // A later login without the flag takes the choice back.
      state.saveLogin({ url: 'http://10.0.0.5:7480', token: 'cod_x', deviceName: 'pc', user: 'u', ca: null, insecureHttp: false });
      expect(codeOf(() => new ApiClient(state.login()))).toBe('INSECURE_HTTP');
      // The extra CA is kept for https://, and dropped by a login without --ca.
      state.saveLogin({ url: 'https://carryon.example.org', token: 'cod_x', deviceName: 'pc', user: 'u', ca: '-----BEGIN CERTIFICATE-----\n…', insecureHttp: false });
      expect(state.login().ca).toMatch(/BEGIN CERTIFICATE/);
      state.saveLogin({ url: 'https://carryon.example.org', token: 'cod_x', deviceName: 'pc', user: 'u', ca: null, insecureHttp: false });
      expect(state.login().ca).toBeNull();
    } finally {
      await state.close();
    }
  });

  it('trusts the system store: a bundle of many CAs', () => {
    const t = systemTrust();
    expect(t.pems.join('').split('BEGIN CERTIFICATE').length - 1).toBeGreaterThan(20);
  });
});

describe('the client address behind reverse proxies', () => {
  it('ignores X-Forwarded-For without trusted proxies', () => {
    const none = new ProxyTrust('');
    expect(none.clientAddress('127.0.0.1', '203.0.113.7')).toBe('127.0.0.1');
    expect(none.clientAddress('::ffff:10.1.2.3', '203.0.113.7')).toBe('10.1.2.3');
    expect(none.clientAddress(undefined, undefined)).toBeNull();
  });

  it('ignores it on connections from anyone but a listed proxy', () => {
    const t = new ProxyTrust('10.0.0.1');
    expect(t.clientAddress('10.0.0.2', '203.0.113.7')).toBe('10.0.0.2');
  });

  it('takes the right-most entry that is not a trusted proxy', () => {
    const t = new ProxyTrust('10.0.0.0/8, ::1');
    expect(t.clientAddress('10.0.0.1', '203.0.113.7')).toBe('203.0.113.7');
    expect(t.clientAddress('::ffff:10.0.0.1', '203.0.113.7')).toBe('203.0.113.7');
    expect(t.clientAddress('10.0.0.1', '198.51.100.9, 203.0.113.7')).toBe('203.0.113.7');
    expect(t.clientAddress('10.0.0.1', '203.0.113.7, 10.9.9.9')).toBe('203.0.113.7');
    expect(t.clientAddress('::1', ['203.0.113.7', '10.0.0.3'])).toBe('203.0.113.7');
    expect(t.clientAddress('10.0.0.1', '2001:db8::5')).toBe('2001:db8::5');
    // All hops trusted: the left-most; a malformed entry ends the walk at the hop before it.
    expect(t.clientAddress('10.0.0.1', '10.0.0.2')).toBe('10.0.0.2');
    expect(t.clientAddress('10.0.0.1', 'garbage')).toBe('10.0.0.1');
    expect(t.clientAddress('10.0.0.1', '203.0.113.7, garbage, 10.0.0.4')).toBe('10.0.0.4');
    expect(t.clientAddress('10.0.0.1', '')).toBe('10.0.0.1');
  });

  it.each(['10.0.0.0/33', 'fd00::/129', 'example.org', '10.0.0', '1.2.3.4/x'])('refuses %s as a proxy address', (bad) => {
    expect(codeOf(() => new ProxyTrust(bad))).toBe('INVALID_ARGUMENT');
  });
});
