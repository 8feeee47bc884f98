// What linked clones save (issue 15): stored bytes against logical bytes, per image and per desktop.
// Owns: the sharing report — for each image, its versions' logical size and the blocks they hold; for
// each desktop, its current disk split into blocks shared with its image version, blocks unique to the
// desktop, and blocks only its earlier versions and restore points still hold. Must not know: HTTP, the CLI.
// Cost: every live manifest is decoded once per report (a cache keeps decoded id lists by manifest id,
// manifests being immutable) and the block index is read once; `status` and /metrics (at most once a
// minute) ask for it.
import { decodeManifest, type Sql } from '../src/index.js';

export interface BlockTally {
  blocks: number;
  /** Plaintext bytes (what a full copy would hold). */
  bytes: number;
  /** Bytes as stored (compressed). */
  storedBytes: number;
}

export interface ImageSharing {
  image: string;
  versions: number;
  newestVersion: number;
  /** Data bytes (non-hole) of the newest version. */
  logicalBytes: number;
  /** Blocks any version of the image names. */
  held: BlockTally;
  /** Desktops now on a version of this image. */
  desktops: number;
}

export interface DesktopSharing {
  desktop: string;
  image: string;
  imageVersion: number;
  version: number;
  /** Data bytes (non-hole) of the desktop's current disk. */
  logicalBytes: number;
  /** Current disk blocks its image version also names: stored once for every desktop of that version. */
  sharedWithImage: BlockTally;
  /** Current disk blocks its image version does not name: this desktop's own (perhaps shared with other desktops). */
  unique: BlockTally;
  /** Blocks only earlier versions and restore points of this desktop hold (no current disk, no image). */
  restorePointsOnly: BlockTally;
}

export interface SharingReport {
  images: ImageSharing[];
  desktops: DesktopSharing[];
  totals: {
    /** Every image's newest version plus every desktop's current disk, as separate full copies (data bytes). */
    logicalBytes: number;
    /** Every block in the store, as stored. */
    storedBytes: number;
    /** 1 - stored / logical: what sharing and compression save. */
    saving: number;
    sharedWithImagesBytes: number;
    uniqueToDesktopsBytes: number;
    restorePointsOnlyBytes: number;
  };
}

interface Decoded {
  ids: string[];
  /** Plain length of each id's block (first occurrence). */
  lengths: Map<string, number>;
  dataBytes: number;
}

const empty = (): BlockTally => ({ blocks: 0, bytes: 0, storedBytes: 0 });

export class SharingService {
  private readonly decoded = new Map<string, Decoded>();
  private cached: { at: number; report: SharingReport } | null = null;

  constructor(private readonly db: Sql) {}

  private async manifest(id: string): Promise<Decoded> {
    let d = this.decoded.get(id);
    if (!d) {
      const m = decodeManifest((await this.db.get<{ encoded: Buffer }>('SELECT encoded FROM manifests WHERE id = ?', [id]))!.encoded);
      const lengths = new Map<string, number>();
      for (let i = 0; i < m.count; i++) {
        const b = m.idAt(i);
        if (b !== null && !lengths.has(b)) lengths.set(b, m.lengthOf(i));
      }
      d = { ids: [...lengths.keys()], lengths, dataBytes: m.dataBytes() };
      this.decoded.set(id, d);
    }
    return d;
  }

  /** The report, computed at most every `maxAgeMs` (0: now). */
  async report(maxAgeMs = 0): Promise<SharingReport> {
    if (this.cached && Date.now() - this.cached.at <= maxAgeMs) return this.cached.report;
    const stored = new Map<string, number>();
    for (const r of await this.db.all<{ id: string; stored_size: number | string }>('SELECT id, stored_size FROM blocks')) stored.set(r.id, Number(r.stored_size));
    const tally = (ids: Iterable<string>, lengths: (id: string) => number): BlockTally => {
      const t = empty();
      for (const id of ids) {
        t.blocks++;
        t.bytes += lengths(id);
        t.storedBytes += stored.get(id) ?? 0;
      }
      return t;
    };
    const imageRows = await this.db.all<{ id: number; name: string; version: number; manifest_id: string }>(
      'SELECT i.id, i.name, v.version, v.manifest_id FROM images i JOIN image_versions v ON v.image_id = i.id ORDER BY i.name, v.version');
    const desktopRows = await this.db.all<{ id: number; name: string; image_id: number; image_version: number; version: number; image: string; manifest_id: string }>(
      `SELECT d.id, d.name, d.image_id, d.image_version, d.version, i.name AS image, dv.manifest_id FROM desktops d JOIN images i ON i.id = d.image_id
       JOIN desktop_versions dv ON dv.desktop_id = d.id AND dv.version = d.version ORDER BY d.name`);
    const history = await this.db.all<{ desktop_id: number; manifest_id: string }>(
      `SELECT dv.desktop_id, dv.manifest_id FROM desktop_versions dv JOIN desktops d ON d.id = dv.desktop_id WHERE dv.version <> d.version
       UNION SELECT desktop_id, manifest_id FROM restore_points`);
    const allImageIds = new Set<string>();
    const lengthOf = new Map<string, number>();
    const remember = (m: Decoded): void => {
      for (const [id, n] of m.lengths) if (!lengthOf.has(id)) lengthOf.set(id, n);
    };
    const images = new Map<number, { name: string; versions: Array<{ version: number; manifest: string }>; ids: Set<string> }>();
    for (const r of imageRows) {
      const m = await this.manifest(r.manifest_id);
      remember(m);
      const e = images.get(r.id) ?? { name: r.name, versions: [], ids: new Set<string>() };
      e.versions.push({ version: Number(r.version), manifest: r.manifest_id });
      for (const id of m.ids) {
        e.ids.add(id);
        allImageIds.add(id);
      }
      images.set(r.id, e);
    }
    const current = new Set<string>();
    const desktops: DesktopSharing[] = [];
    const perDesktop: Array<{ row: (typeof desktopRows)[number]; m: Decoded }> = [];
    for (const row of desktopRows) {
      const m = await this.manifest(row.manifest_id);
      remember(m);
      for (const id of m.ids) current.add(id);
      perDesktop.push({ row, m });
    }
    const historyOf = new Map<number, Set<string>>();
    for (const h of history) {
      const m = await this.manifest(h.manifest_id);
      remember(m);
      const s = historyOf.get(h.desktop_id) ?? new Set<string>();
      for (const id of m.ids) s.add(id);
      historyOf.set(h.desktop_id, s);
    }
    const len = (id: string): number => lengthOf.get(id) ?? 0;
    for (const { row, m } of perDesktop) {
      const img = images.get(row.image_id)!;
      const imageManifest = img.versions.find((v) => v.version === Number(row.image_version))!.manifest;
      const inImage = new Set((await this.manifest(imageManifest)).ids);
      const shared: string[] = [];
      const own: string[] = [];
      for (const id of m.ids) (inImage.has(id) ? shared : own).push(id);
      const old = [...(historyOf.get(row.id) ?? [])].filter((id) => !current.has(id) && !allImageIds.has(id));
      desktops.push({
        desktop: row.name, image: row.image, imageVersion: Number(row.image_version), version: Number(row.version), logicalBytes: m.dataBytes,
        sharedWithImage: tally(shared, len), unique: tally(own, len), restorePointsOnly: tally(old, len),
      });
    }
    const imageList: ImageSharing[] = [];
    for (const [id, e] of images) {
      const newest = e.versions[e.versions.length - 1]!;
      imageList.push({
        image: e.name, versions: e.versions.length, newestVersion: newest.version, logicalBytes: (await this.manifest(newest.manifest)).dataBytes,
        held: tally(e.ids, len), desktops: desktopRows.filter((d) => d.image_id === id).length,
      });
    }
    const logicalBytes = imageList.reduce((n, i) => n + i.logicalBytes, 0) + desktops.reduce((n, d) => n + d.logicalBytes, 0);
    const storedBytes = [...stored.values()].reduce((n, x) => n + x, 0);
    const report: SharingReport = {
      images: imageList,
      desktops,
      totals: {
        logicalBytes, storedBytes, saving: logicalBytes > 0 ? Number((1 - storedBytes / logicalBytes).toFixed(4)) : 0,
        sharedWithImagesBytes: desktops.reduce((n, d) => n + d.sharedWithImage.bytes, 0),
        uniqueToDesktopsBytes: desktops.reduce((n, d) => n + d.unique.bytes, 0),
        restorePointsOnlyBytes: desktops.reduce((n, d) => n + d.restorePointsOnly.bytes, 0),
      },
    };
    // Decoded manifests of versions no longer live would pile up: keep only those this report used.
    const used = new Set([...imageRows.map((r) => r.manifest_id), ...desktopRows.map((r) => r.manifest_id), ...history.map((h) => h.manifest_id)]);
    for (const k of this.decoded.keys()) if (!used.has(k)) this.decoded.delete(k);
    this.cached = { at: Date.now(), report };
    return report;
  }
}
