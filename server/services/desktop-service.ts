// DesktopService: users, images and desktops as an admin manages them, from the HTTP API or the
// server's command line alike. Owns: validation, one transaction per change, and its audit row (so
// `carryon-server desktop policy` and POST /admin/desktops/:name/policy record the same change the
// same way). Must not know: HTTP, commander, which engine holds the metadata.
import { existsSync } from 'node:fs';
import { open } from 'node:fs/promises';
import os from 'node:os';
import { CarryonError, decodeManifest, getBlock, type BlockStore, type DesktopInfo, type DesktopPolicyChange, type EncryptionPolicy } from '../../src/index.js';
import { createImageView, openImageView, probeImage, type ImageFormat } from '../image-format.js';
import type { Actor } from '../audit.js';
import { publishImage, type PublishResult } from '../blocks.js';
import type { FleetMeta, RestorePoint } from '../fleet-meta.js';
import type { IngestLeases } from '../gc.js';
import type { Meta, User } from '../meta.js';

export type DesktopPolicy = Awaited<ReturnType<FleetMeta['desktopPolicy']>>;
export type ImagePolicy = Awaited<ReturnType<FleetMeta['imagePolicy']>>;

export class DesktopService {
  constructor(private readonly meta: Meta, private readonly fleet: FleetMeta, private readonly store: BlockStore, private readonly leases: IngestLeases | null = null, private readonly tmp: string = os.tmpdir()) {}

  addUser(name: string, admin: boolean, actor: Actor): Promise<{ user: string; token: string; admin: boolean }> {
    return this.meta.addUser(name, admin, actor);
  }

  user(name: string): Promise<User> {
    return this.meta.userByName(name);
  }

  /**
   * Store FILE's blocks (verified, deduplicated) and make its manifest the image's next version. FILE is
   * a raw disk or a qcow2 (with its backing chain, flattened), VMDK, VHDX, VDI or VHD image, read through
   * a raw view (image-format.ts), never copied to a raw file first.
   */
  async publishImage(name: string, file: string, blockSize: number, actor: Actor, onProgress?: (done: number, total: number) => void, opts: { raw?: boolean } = {}): Promise<PublishResult & { format: ImageFormat; chain: string[] }> {
    const probe = probeImage(file, opts);
    const view = await openImageView(file, probe, this.tmp);
    try {
      const r = await publishImage(this.meta, this.store, this.leases, name, view.path, blockSize, actor, onProgress);
      return { ...r, format: probe.format, chain: probe.chain };
    } finally {
      await view.close();
    }
  }

  /**
   * Write an image version (default: the newest) to OUT as `format`: only its data blocks are written,
   * each verified against its id, so holes stay holes. OUT must not exist.
   */
  async exportImage(name: string, version: number | undefined, out: string, format: ImageFormat, onProgress?: (done: number, total: number) => void): Promise<{ image: string; version: number; out: string; format: ImageFormat; size: number; dataBytes: number }> {
    const v = await this.meta.imageVersion(name, version);
    const m = decodeManifest(await this.meta.getManifest(v.manifestId));
    if (existsSync(out)) throw new CarryonError('LOCAL_PATH_CONFLICT', `${out} exists: give a new file name (an export never overwrites)`, { out });
    const view = await createImageView(out, format, m.size, this.tmp).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'EEXIST') throw new CarryonError('LOCAL_PATH_CONFLICT', `${out} exists: give a new file name (an export never overwrites)`, { out });
      throw err;
    });
    let written = 0;
    try {
      const fh = await open(view.path, 'r+');
      try {
        if (format === 'raw') await fh.truncate(m.size);
        for (let i = 0; i < m.count; i++) {
          const id = m.idAt(i);
          if (id === null) continue;
          const plain = await getBlock(this.store, id, m.blockSize);
          await fh.write(plain, 0, plain.length, i * m.blockSize);
          written += plain.length;
          onProgress?.(i + 1, m.count);
        }
        await fh.sync();
      } finally {
        await fh.close();
      }
    } finally {
      await view.close();
    }
    return { image: name, version: v.version, out, format, size: m.size, dataBytes: written };
  }

  createDesktop(name: string, user: string, image: string, actor: Actor, encryption: EncryptionPolicy | null = null): Promise<DesktopInfo> {
    return this.meta.createDesktop(name, user, image, actor, encryption);
  }

  /** The desktops `user` may see (all of them for an admin; every one for null, the server's CLI). */
  list(user: User | null): Promise<DesktopInfo[]> {
    return this.meta.listDesktops(user);
  }

  async info(user: User, name: string): Promise<DesktopInfo> {
    return this.meta.desktopInfo(await this.meta.desktopFor(user, name));
  }

  /** Change any of a desktop's policies at once: all or nothing, each changed setting audited. */
  async setDesktopPolicy(name: string, p: DesktopPolicyChange, actor: Actor): Promise<DesktopPolicy> {
    return this.meta.db.transaction(async () => {
      await this.meta.desktopByName(name); // DESKTOP_NOT_FOUND before anything else
      if (p.leaseDays !== undefined) await this.fleet.setLeaseDays('desktop', name, p.leaseDays, actor);
      if (p.replicateMinutes !== undefined) await this.fleet.setReplicateMinutes(name, p.replicateMinutes, actor);
      if (p.rollbackKeepsLocal !== undefined) await this.fleet.setRollbackKeepsLocal(name, p.rollbackKeepsLocal, actor);
      if (p.encryption !== undefined) await this.fleet.setEncryption('desktop', name, p.encryption, actor);
      if (p.files !== undefined || p.registry !== undefined) await this.meta.setDesktopPolicies(name, p.files, p.registry, actor);
      await this.meta.setRegistryScope(name, p.registryInclude, p.registryExclude, actor);
      return this.fleet.desktopPolicy(name);
    });
  }

  desktopPolicy(name: string): Promise<DesktopPolicy> {
    return this.fleet.desktopPolicy(name);
  }

  /** An image sets its desktops' lease length and encryption (a desktop's own setting wins). */
  async setImagePolicy(name: string, p: DesktopPolicyChange, actor: Actor): Promise<ImagePolicy> {
    const keys = Object.keys(p);
    if (keys.some((k) => k !== 'leaseDays' && k !== 'encryption')) throw new CarryonError('BAD_REQUEST', 'an image policy sets leaseDays and encryption only');
    return this.meta.db.transaction(async () => {
      await this.fleet.imagePolicy(name); // IMAGE_NOT_FOUND before anything else
      if (p.leaseDays !== undefined) await this.fleet.setLeaseDays('image', name, p.leaseDays, actor);
      if (p.encryption !== undefined) await this.fleet.setEncryption('image', name, p.encryption, actor);
      return this.fleet.imagePolicy(name);
    });
  }

  imagePolicy(name: string): Promise<ImagePolicy> {
    return this.fleet.imagePolicy(name);
  }

  deleteDesktop(name: string, actor: Actor) {
    return this.fleet.deleteDesktop(name, actor);
  }

  restoreDesktop(name: string, point: number, actor: Actor) {
    return this.fleet.restoreDesktop(name, point, actor);
  }

  /** A desktop's restore points, newest first; a user sees only their own desktops'. */
  async restorePoints(user: User | null, name: string): Promise<RestorePoint[]> {
    const d = user ? await this.meta.desktopFor(user, name) : await this.meta.desktopByName(name);
    return this.fleet.restorePoints(d.id);
  }

  stats() {
    return this.meta.stats();
  }
}
