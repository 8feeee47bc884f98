// BootTraceService: the read order of streamed boots, per image version (issue 13). A laptop's
// `carryon serve` reports the blocks its VM first read, in order; the next streamed check-out of a
// desktop on the same image version gets them and reads ahead by them (client/read-ahead.ts).
// Owns: who may read and replace a trace, and the checks of a submitted one against its image version
// (the version the desktop is on; every index below the version's block count). One row per image
// version: the latest submitted replaces the one before (a boot's order changes with the image, rarely
// with the user). A trace holds indices only: a laptop fetches those indices of its own manifest, so a
// trace never names, reveals or lets anyone fetch a block its reader may not read; a hostile trace at
// worst makes other laptops fetch useless blocks of their own disks, and LocalDisk's read-ahead budget
// bounds that by the blocks their VMs read.
// Must not know: HTTP, the CLI, which engine holds the metadata.
import { CarryonError, type BootTrace, type Sql } from '../src/index.js';
import type { Meta, User } from './meta.js';

export class BootTraceService {
  constructor(private readonly sql: Sql, private readonly meta: Meta) {}

  /** The image version a desktop the user may see is on, and its block count. DESKTOP_NOT_FOUND for others'. */
  private async versionOf(user: User, desktop: string): Promise<{ imageId: number; image: string; imageVersion: number; blockCount: number }> {
    const d = await this.meta.desktopFor(user, desktop);
    const row = await this.sql.get<{ image_id: number; name: string; image_version: number; block_count: number }>(
      `SELECT d.image_id, i.name, d.image_version, m.block_count FROM desktops d JOIN images i ON i.id = d.image_id
       JOIN image_versions iv ON iv.image_id = d.image_id AND iv.version = d.image_version JOIN manifests m ON m.id = iv.manifest_id WHERE d.id = ?`, [d.id]);
    if (!row) throw new CarryonError('IMAGE_NOT_FOUND', `the image version of desktop ${desktop} is not stored`, { desktop });
    return { imageId: Number(row.image_id), image: row.name, imageVersion: Number(row.image_version), blockCount: Number(row.block_count) };
  }

  /** The trace of the desktop's image version (blocks empty when no boot has reported one yet). */
  async get(user: User, desktop: string): Promise<BootTrace> {
    const v = await this.versionOf(user, desktop);
    const row = await this.sql.get<{ blocks: string }>('SELECT blocks FROM boot_traces WHERE image_id = ? AND image_version = ?', [v.imageId, v.imageVersion]);
    return { image: v.image, imageVersion: v.imageVersion, blocks: row ? (JSON.parse(row.blocks) as number[]) : [] };
  }

  /**
   * Replace the trace of the desktop's image version. `trace` is parsed already (parseBootTrace: distinct
   * indices, at most MAX_BOOT_TRACE_BLOCKS); here it must name the desktop's image version
   * (BOOT_TRACE_WRONG_IMAGE) and fit it (BOOT_TRACE_INVALID). Nothing is changed on a refusal.
   */
  async put(user: User, desktop: string, trace: BootTrace): Promise<{ image: string; imageVersion: number; blocks: number }> {
    const v = await this.versionOf(user, desktop);
    if (trace.image !== v.image || trace.imageVersion !== v.imageVersion) {
      throw new CarryonError('BOOT_TRACE_WRONG_IMAGE', `desktop ${desktop} is on image ${v.image} version ${v.imageVersion}; the trace was recorded on ${trace.image} version ${trace.imageVersion}`,
        { desktop, image: v.image, imageVersion: v.imageVersion, traceImage: trace.image, traceImageVersion: trace.imageVersion });
    }
    if (trace.blocks.length > v.blockCount) throw new CarryonError('BOOT_TRACE_INVALID', `boot trace: ${trace.blocks.length} blocks, the image has ${v.blockCount}`, { blocks: trace.blocks.length, blockCount: v.blockCount });
    const past = trace.blocks.find((i) => i >= v.blockCount);
    if (past !== undefined) throw new CarryonError('BOOT_TRACE_INVALID', `boot trace: block ${past} is past the end of the image (${v.blockCount} blocks)`, { block: past, blockCount: v.blockCount });
    await this.sql.transaction(async () => {
      await this.sql.run('DELETE FROM boot_traces WHERE image_id = ? AND image_version = ?', [v.imageId, v.imageVersion]);
      await this.sql.run('INSERT INTO boot_traces (image_id, image_version, blocks, block_count, submitted_by, submitted_at) VALUES (?, ?, ?, ?, ?, ?)',
        [v.imageId, v.imageVersion, JSON.stringify(trace.blocks), trace.blocks.length, user.id, new Date().toISOString()]);
    });
    return { image: v.image, imageVersion: v.imageVersion, blocks: trace.blocks.length };
  }
}
