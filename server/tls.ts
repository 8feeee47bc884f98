// The server's certificate and key: read from the files given to `carryon-server start --tls-cert
// --tls-key`, checked (PEM, key matches certificate), and read again on SIGHUP for renewals.
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import tls from 'node:tls';
import { CarryonError } from '../src/index.js';

export interface TlsPair {
  cert: Buffer;
  key: Buffer;
  /** For the log: which certificate serves. */
  info: { subject: string; names: string | null; validTo: string; fingerprint256: string; serial: string };
}

/** Read and check the pair; fails with INVALID_ARGUMENT and a sentence saying what is wrong with which file. */
export function loadTlsPair(certFile: string, keyFile: string): TlsPair {
  const read = (f: string, what: string): Buffer => {
    try {
      return readFileSync(f);
    } catch (err) {
      throw new CarryonError('INVALID_ARGUMENT', `cannot read the TLS ${what} ${f}: ${(err as Error).message}`, { file: f });
    }
  };
  const cert = read(certFile, 'certificate');
  const key = read(keyFile, 'key');
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch (err) {
    throw new CarryonError('INVALID_ARGUMENT', `${certFile} is not a PEM certificate (${(err as Error).message}): give the server's certificate, followed by its intermediates`, { file: certFile });
  }
  let pk;
  try {
    pk = createPrivateKey(key);
  } catch (err) {
    throw new CarryonError('INVALID_ARGUMENT', `${keyFile} is not a PEM private key, or it is encrypted (${(err as Error).message}): give the unencrypted key of the certificate`, { file: keyFile });
  }
  if (!x509.checkPrivateKey(pk)) throw new CarryonError('INVALID_ARGUMENT', `the key in ${keyFile} does not belong to the certificate in ${certFile} (${x509.subject.replace(/\n/g, ', ')})`, { certFile, keyFile });
  try {
    tls.createSecureContext({ cert, key });
  } catch (err) {
    throw new CarryonError('INVALID_ARGUMENT', `${certFile} and ${keyFile} cannot serve TLS: ${(err as Error).message}`, { certFile, keyFile });
  }
  return {
    cert,
    key,
    info: { subject: x509.subject.replace(/\n/g, ', '), names: x509.subjectAltName ?? null, validTo: new Date(x509.validTo).toISOString(), fingerprint256: x509.fingerprint256, serial: x509.serialNumber },
  };
}
